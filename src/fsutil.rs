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
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32, dir_mode: u32) -> io::Result<()> {
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

/// Removes the temporary files [`write_atomic`] left in `dir` when a process was
/// killed between creating and renaming one (`.<name>.tmp.<pid>` of a process that no
/// longer runs). Returns how many it removed; a missing dir is not an error.
pub(crate) fn remove_stale_temps(dir: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.starts_with('.'))
            .and_then(|n| n.rsplit_once(".tmp."))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        fs::remove_file(entry.path())?;
        removed += 1;
    }
    Ok(removed)
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
    fn stale_temps_of_dead_processes_are_removed() {
        let dir = std::env::temp_dir().join(format!("overlayd-fsutil-tmp-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // pid_max is at most 2^22, so this pid never runs.
        fs::write(dir.join(".lease.json.tmp.4999999"), b"torn").unwrap();
        let ours = format!(".node.json.tmp.{}", std::process::id());
        fs::write(dir.join(&ours), b"in flight").unwrap();
        fs::write(dir.join("lease.json"), b"{}").unwrap();
        assert_eq!(remove_stale_temps(&dir).unwrap(), 1);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [ours, "lease.json".to_string()]);
        assert_eq!(remove_stale_temps(&dir.join("missing")).unwrap(), 0);
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
