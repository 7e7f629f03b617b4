//! [`Error`]: the control plane's one error enum.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

/// Errors of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A peer runs with different cluster parameters; we refuse to join it.
    #[error("refusing to join: peer {peer} has a different configuration ({reason})")]
    ClusterMismatch {
        /// The peer's name.
        peer: String,
        /// What differs.
        reason: String,
    },
    /// The cluster CIDR cannot be split into subnets of the requested length.
    #[error("cannot split cluster CIDR {cidr} into /{subnet_len} subnets")]
    BadSubnetLen {
        /// The cluster CIDR.
        cidr: IpNet,
        /// The requested subnet length.
        subnet_len: u8,
    },
    /// `reclaim_after` is too short for the fence bound.
    #[error(
        "reclaim-after {reclaim_after:?} must be at least twice the fence bound {fence_after:?}"
    )]
    BadTimers {
        /// The reclaim bound.
        reclaim_after: Duration,
        /// The fence bound.
        fence_after: Duration,
    },
    /// Reading or writing the lease state file failed.
    #[error("lease state file {path}: {source}")]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The lease state file does not parse.
    #[error("lease state file {path} is corrupt: {source}")]
    StateCorrupt {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// The lease state file was written by a newer overlayd in a format this one
    /// cannot read.
    #[error("lease state file {path} has format {found}, and this overlayd reads formats up to {supported}: it was written by a newer overlayd. Run that version (or newer) again; a downgrade across a state format is not supported")]
    StateFormat {
        /// The file.
        path: std::path::PathBuf,
        /// The format found.
        found: u32,
        /// The newest format this build reads.
        supported: u32,
    },
    /// The gossip socket failed.
    #[error("gossip socket on {addr}: {source}")]
    Socket {
        /// The socket's address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The control driver has stopped.
    #[error("control driver stopped")]
    Stopped,
}
