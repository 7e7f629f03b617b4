//! What the daemon keeps on disk: the state and run directories (root's alone), the
//! VTEP MAC kept across restarts, and the temporary files a killed daemon left.
//!
//! Left out: the lease state file ([`crate::control::driver`]) and `node.json`
//! ([`super::host`]).

use std::path::Path;

use super::error::{file_err, DaemonError};
use crate::dataplane::wire::MacAddr;
use crate::fsutil::write_atomic;

/// File inside `--state-dir` that keeps the VTEP MAC across restarts.
pub(crate) const VTEP_MAC_FILE: &str = "vtep_mac";

/// Creates `dir` (mode 0700) or, if it exists, takes group and other access away: the
/// state and runtime files are root's alone.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7700))?;
    }
    Ok(())
}

/// Removes the temporary files a killed daemon left in `dirs`; failures are only
/// logged.
pub(crate) fn remove_stale_temps(dirs: &[&Path]) {
    for dir in dirs {
        match crate::fsutil::remove_stale_temps(dir) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(dir = %dir.display(), n, "removed temporary files left by a killed daemon")
            }
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot clean temporary files")
            }
        }
    }
}

/// Loads the VTEP MAC kept in the state dir, or creates and keeps one. An explicit
/// `--vtep-mac` wins and is kept too.
pub(crate) fn vtep_mac(state_dir: &Path, given: Option<MacAddr>) -> Result<MacAddr, DaemonError> {
    let path = state_dir.join(VTEP_MAC_FILE);
    let mac = match given {
        Some(mac) => mac,
        None => match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|e| DaemonError::File {
                what: "VTEP MAC file",
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{e}; delete it to pick a new MAC"),
                ),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                MacAddr::random_local(&mut rand::rng())
            }
            Err(e) => return Err(file_err("VTEP MAC file", &path)(e)),
        },
    };
    write_atomic(&path, format!("{mac}\n").as_bytes(), 0o600, 0o700)
        .map_err(file_err("VTEP MAC file", &path))?;
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_is_kept_across_restarts() {
        let dir = std::env::temp_dir().join(format!("overlayd-mac-{}", std::process::id()));
        let first = vtep_mac(&dir, None).unwrap();
        assert_eq!(vtep_mac(&dir, None).unwrap(), first);
        let given: MacAddr = "02:00:00:00:00:09".parse().unwrap();
        assert_eq!(vtep_mac(&dir, Some(given)).unwrap(), given);
        assert_eq!(vtep_mac(&dir, None).unwrap(), given);
        std::fs::write(dir.join(VTEP_MAC_FILE), "garbage").unwrap();
        let err = vtep_mac(&dir, None).unwrap_err().to_string();
        assert!(err.contains("vtep_mac"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
