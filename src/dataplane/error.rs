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
    /// A link of the name we use exists and is of another kind.
    #[error("{flag} {name}: a link of that name exists and is not a {kind}{hint}")]
    WrongLinkKind {
        /// The flag that names the device (`--bridge`, `--vxlan-device`).
        flag: &'static str,
        /// The device name.
        name: String,
        /// The kind we need (`bridge`, `vxlan device`).
        kind: &'static str,
        /// What to do, if there is more to say (starts with `; `).
        hint: &'static str,
    },
    /// A device was gone when looked up right after it was created (or found).
    #[error("{what} {name} vanished after creation")]
    Vanished {
        /// What the device is (`bridge`, `TUN`, `vxlan device`).
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The `nft` binary could not be run or talked to.
    #[error("nftables: {what}: {source}{hint}")]
    NftRun {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
        /// What to do, if there is more to say (starts with ` (`).
        hint: &'static str,
    },
    /// `nft` ran and refused, or printed what we cannot read.
    #[error("nftables: {what}: {detail}")]
    NftFailed {
        /// What was being done.
        what: &'static str,
        /// nft's message (its standard error), or what is wrong with its output.
        detail: String,
    },
    /// A task of the dataplane (the kernel dataplane's, or one that ran `nft`) ended
    /// without finishing: it panicked or was cancelled.
    #[error("{what} task ended: {source}")]
    TaskEnded {
        /// Which task.
        what: &'static str,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A userspace dataplane thread panicked.
    #[error("dataplane thread {thread} panicked: {message}")]
    ThreadPanicked {
        /// The thread's name.
        thread: String,
        /// The panic's message.
        message: String,
    },
    /// The encrypted dataplane opened no socket (it opens one per worker).
    #[error("no WireGuard socket")]
    NoWgSocket,
    /// `--dataplane kernel` was asked for and the kernel dataplane cannot start.
    #[error("--dataplane kernel: {0} (run with --dataplane userspace or auto to use the userspace dataplane)")]
    KernelForced(#[source] Box<Error>),
    /// A fault a test asked for (`OVERLAYD_TEST_FAIL`, `netns-tests` builds only).
    #[error("{what}: {source} ({var}={value})")]
    TestFault {
        /// What fails.
        what: &'static str,
        /// The error it fails with.
        #[source]
        source: std::io::Error,
        /// The variable.
        var: &'static str,
        /// Its value.
        value: &'static str,
    },
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
