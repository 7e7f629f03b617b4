//! The cluster key: `--secret-file` read and checked at start, and read again on each
//! SIGHUP.
//!
//! Left out: what the key signs and checks ([`crate::control::auth`]).

use std::path::{Path, PathBuf};

use crate::config::ConfigError;
use crate::control::driver::ControlHandle;
use crate::control::KeySet;

/// Reads and checks `--secret-file`. Errors name the flag and the path.
pub(crate) fn load_keys(path: &Path) -> Result<KeySet, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: String| ConfigError::Invalid {
        flag: "--secret-file",
        value: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let keys = KeySet::parse(&text).map_err(|e| bad(e.to_string()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "--secret-file is readable by others (mode {mode:o}): chmod 600 it"
            );
        }
    }
    Ok(keys)
}

/// Re-reads `--secret-file` on each SIGHUP and hands the keys to the control plane.
/// A file that does not load leaves the keys in use unchanged.
pub(crate) async fn reload_keys_on_hangup(
    ctl: ControlHandle,
    path: Option<PathBuf>,
    mut hangup: tokio::signal::unix::Signal,
) {
    while hangup.recv().await.is_some() {
        let Some(path) = &path else {
            tracing::warn!("SIGHUP: no --secret-file is configured, nothing to reload");
            continue;
        };
        match load_keys(path) {
            Ok(keys) => {
                let ids = keys.ids();
                if ctl.set_keys(Some(keys)).await.is_err() {
                    return;
                }
                tracing::info!(keys = ?ids, "SIGHUP: reloaded the cluster key(s); the first signs");
            }
            Err(e) => tracing::error!("SIGHUP: {e}; keeping the keys in use"),
        }
    }
}
