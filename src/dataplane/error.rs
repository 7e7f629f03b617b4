//! `dataplane::Error`: what can fail while setting up or driving the node's devices.

use std::path::PathBuf;

/// Errors of the dataplane layer: device setup over netlink, the TUN, the UDP socket.
/// Packet-level problems are never errors here: they are counted drops.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request failed.
    #[error("netlink: {op}: {source}")]
    Netlink {
        /// What was being done, e.g. "add address 10.244.1.1/24 to ovl0".
        op: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// The netlink socket could not be opened.
    #[error("netlink: cannot open a socket: {0}")]
    NetlinkSocket(#[source] std::io::Error),
    /// The TUN device could not be created or configured.
    #[error("TUN device {name}: {source} (is /dev/net/tun there, and do we have CAP_NET_ADMIN?)")]
    Tun {
        /// Device name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The VXLAN UDP socket could not be opened.
    #[error("UDP socket on {addr}: {source}")]
    Socket {
        /// The address we tried to bind.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A sysctl could not be written (in a container, /proc/sys is read-only unless
    /// the container is privileged).
    #[error("sysctl {path}: cannot write it: {source} (in an unprivileged container /proc/sys is read-only: set it on the host, e.g. net.ipv4.ip_forward=1 as Kubernetes requires of a node, or run the container privileged)")]
    Sysctl {
        /// The /proc/sys path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The host is not as the daemon needs it.
    #[error("{0}")]
    Host(String),
    /// The TUN or socket failed while forwarding.
    #[error("{what}: {source}")]
    Io {
        /// Which device.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
