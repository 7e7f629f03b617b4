//! Atomic file writes: every state and runtime file is written to a temporary file in
//! the same directory, synced, and renamed over the old one, so a crash or a full disk
//! leaves either the old content or the new, never a torn file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `data` to `path` atomically with permissions `mode`, creating the parent
/// directory (mode 0755 for run dirs, or as `dir_mode` says) if needed. Skips the
/// write when the file already holds exactly `data`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32, dir_mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(dir)?;
    }
    if fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_sets_mode() {
        let dir = std::env::temp_dir().join(format!("overlayd-fsutil-{}", std::process::id()));
        let path = dir.join("sub/state.json");
        write_atomic(&path, b"one", 0o600, 0o700).unwrap();
        write_atomic(&path, b"two", 0o600, 0o700).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failure_leaves_old_content() {
        let dir = std::env::temp_dir().join(format!("overlayd-fsutil-ro-{}", std::process::id()));
        let path = dir.join("state");
        write_atomic(&path, b"old", 0o600, 0o700).unwrap();
        // A path whose parent is a file cannot be written; the error is returned.
        let bad = path.join("child");
        assert!(write_atomic(&bad, b"new", 0o600, 0o700).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        fs::remove_dir_all(&dir).unwrap();
    }
}
