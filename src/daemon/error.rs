//! [`DaemonError`]: why the daemon could not start or had to stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::ConfigError;

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The flags do not make a valid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Device setup or forwarding failed.
    #[error(transparent)]
    Dataplane(#[from] crate::dataplane::Error),
    /// The control plane could not start, or stopped with an error.
    #[error(transparent)]
    Control(#[from] crate::control::Error),
    /// The control plane's task ended without an answer (it panicked or was cancelled).
    #[error("control plane task ended: {0}")]
    ControlTaskEnded(#[source] tokio::task::JoinError),
    /// The WireGuard key file is unreadable or invalid.
    #[error(transparent)]
    Key(#[from] crate::dataplane::wg::key::KeyError),
    /// `--install-cni` failed.
    #[error(transparent)]
    InstallCni(#[from] crate::daemon::cni_install::InstallError),
    /// A listener could not be bound.
    #[error("{what} {addr}: cannot listen: {source}")]
    Listen {
        /// The flag that named the address.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `overlayd uninstall` found the daemon still running.
    #[error("overlayd is still running on this node (its socket {socket} answers): stop it first (kubectl -n overlayd delete daemonset overlayd, or systemctl stop overlayd), then uninstall; `overlayd leave` first hands its subnet back to the cluster")]
    StillRunning {
        /// The admin socket that answered.
        socket: PathBuf,
    },
    /// A state or runtime file could not be read or written.
    #[error("{what} {path}: {source}")]
    File {
        /// What the file is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Turns an I/O error on `path` into [`DaemonError::File`].
pub(crate) fn file_err(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_path_buf();
    move |source| DaemonError::File { what, path, source }
}
