//! Control plane: gossip membership and per-node subnet leases (sans-IO cores plus
//! one tokio driver).
//!
//! # Layout
//! - [`message`]: datagram framing (magic, version, auth field) and the lease
//!   protocol codec.
//! - [`auth`]: the cluster key: every datagram signed, checked for freshness and
//!   replay before anything parses its body.
//! - [`meta`]: what each node publishes through gossip ([`NodeMeta`]: underlay
//!   address, VNI, VTEP MAC, lease) and foca's codec for it.
//! - [`membership`]: SWIM membership on [foca].
//! - [`lease`]: the subnet lease state machine; its safety argument is in
//!   `docs/leases.md`.
//! - [`controller`]: [`Controller`], both cores behind one `handle_*`/`poll_*`
//!   interface, fed with datagrams and `now`.
//! - [`transport`] and [`driver`]: the only files here that touch sockets and clocks.
//! - [`sim`]: a deterministic many-node simulator over [`Controller`].
//!
//! Left out: the FIB itself, which the dataplane builds from [`PeerInfo`].

pub mod auth;
pub mod controller;
pub mod driver;
pub mod lease;
pub mod membership;
pub mod message;
pub mod meta;
pub mod sim;
pub mod transport;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use auth::{Authenticator, KeySet, Reject, RejectCounters};
pub use controller::{
    cluster_fingerprint, Controller, ControllerConfig, Event, REJECT_LOG_BUDGET,
    REJECT_LOG_INTERVAL, SEEDS_SILENT_AFTER,
};
pub use lease::{Lease, LeaseConfig, LeaseEvent, LeaseState};
pub use membership::{KnownMember, MemberState, Membership, MembershipConfig, MembershipEvent};
pub use message::{Datagram, LeaseDatagram, LeaseMsg, WireError};
pub use meta::NodeMeta;

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

/// Number of `/subnet_len` subnets in `cidr`, capped at 2^20.
pub fn subnet_count(cidr: IpNet, subnet_len: u8) -> Result<u32, Error> {
    let bits = cidr.max_prefix_len();
    if subnet_len < cidr.prefix_len() || subnet_len > bits {
        return Err(Error::BadSubnetLen { cidr, subnet_len });
    }
    let shift = u32::from(subnet_len - cidr.prefix_len());
    Ok(1u32 << shift.min(20))
}

/// The `idx`-th `/subnet_len` subnet of `cidr`.
pub fn subnet_of(cidr: IpNet, subnet_len: u8, idx: u32) -> Option<IpNet> {
    let host_bits = u32::from(cidr.max_prefix_len().checked_sub(subnet_len)?);
    match cidr.trunc() {
        IpNet::V4(n) => {
            let off = u32::checked_shl(idx, host_bits).filter(|_| host_bits < 32)?;
            let base = u32::from(n.network()).checked_add(off)?;
            Ipv4Net::new(Ipv4Addr::from(base), subnet_len)
                .ok()
                .map(IpNet::V4)
        }
        IpNet::V6(n) => {
            let off = u128::checked_shl(u128::from(idx), host_bits).filter(|_| host_bits < 128)?;
            let base = u128::from(n.network()).checked_add(off)?;
            Ipv6Net::new(Ipv6Addr::from(base), subnet_len)
                .ok()
                .map(IpNet::V6)
        }
    }
}

/// A peer as the FIB sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerInfo {
    /// Node name.
    pub name: String,
    /// The pod subnet it uses.
    pub subnet: IpNet,
    /// Its VXLAN endpoint: advertise address and VXLAN port.
    pub underlay: SocketAddr,
    /// Its VTEP MAC address.
    pub vtep_mac: [u8; 6],
    /// Its VNI.
    pub vni: u32,
    /// Liveness: route when `Alive`/`Suspect`, drop and count when `Dead`.
    pub state: MemberState,
}

/// What `overlayd status` shows about the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Our node name.
    pub name: String,
    /// The subnet we use now.
    pub lease: Option<IpNet>,
    /// Whether we hold a lease we may not use (cut off from our witnesses).
    pub fenced: bool,
    /// Whether the last request for a subnet found no free space.
    pub exhausted: bool,
    /// Our current witnesses.
    pub witnesses: Vec<String>,
    /// Peers with a subnet.
    pub peers: Vec<PeerInfo>,
    /// Gossip datagrams dropped as malformed, oversized or mismatched.
    pub dropped: u64,
    /// Peers this node has seen declared dead (probe failures and leaves).
    pub deaths: u64,
    /// Lease messages not sent because the lease state could not be saved.
    pub held: u64,
    /// Why the lease state cannot be saved, while it cannot (the driver fills this in).
    pub state_error: Option<String>,
    /// Ids of the cluster keys in use, signing key first; empty without a key.
    pub auth_keys: Vec<String>,
    /// Gossip datagrams the authentication layer rejected, by reason.
    pub rejected: RejectCounters,
    /// Gossip datagrams and bytes sent and received (the driver fills this in).
    pub traffic: GossipTraffic,
}

/// Gossip traffic counters of one node (UDP payload bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipTraffic {
    /// Datagrams sent.
    pub tx_datagrams: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Datagrams received.
    pub rx_datagrams: u64,
    /// Bytes received.
    pub rx_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_numbered_from_the_cidr() {
        let cidr: IpNet = "10.244.0.0/16".parse().unwrap();
        assert_eq!(subnet_count(cidr, 24).unwrap(), 256);
        assert_eq!(
            subnet_of(cidr, 24, 3),
            Some("10.244.3.0/24".parse().unwrap())
        );
        assert_eq!(
            subnet_of(cidr, 24, 256),
            Some("10.245.0.0/24".parse().unwrap())
        );
        assert!(subnet_count(cidr, 8).is_err());
        let v6: IpNet = "fd00::/48".parse().unwrap();
        assert_eq!(
            subnet_of(v6, 64, 1),
            Some("fd00:0:0:1::/64".parse().unwrap())
        );
    }
}
