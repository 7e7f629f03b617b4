//! What the control plane tells the rest of the daemon: the peers for the FIB
//! ([`PeerInfo`]) and a snapshot for `overlayd status` ([`Status`]), with what a node
//! without a lease waits for ([`LeaseWait`]).

use std::fmt;
use std::net::SocketAddr;

use ipnet::IpNet;

use super::auth::RejectCounters;
use super::founding::{Founder, FoundingWait};
use super::membership::MemberState;

/// A member as gossip knows it, with or without a lease (for status and metrics).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberReport {
    /// Node name.
    pub(crate) name: String,
    /// Its gossip address.
    pub(crate) gossip: SocketAddr,
    /// Alive, suspect or dead.
    pub(crate) state: MemberState,
    /// The subnet it publishes, if any.
    pub(crate) subnet: Option<IpNet>,
    /// Dual-stack: its IPv6 subnet (the same lease).
    pub(crate) subnet_v6: Option<IpNet>,
}

/// What a node that uses no subnet waits for. Its [`fmt::Display`] is the status
/// line, the log line and the `/healthz` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseWait {
    /// No founder is known yet: the cluster is being founded.
    Founding(FoundingWait),
    /// A request went to this owner of free space.
    Asking {
        /// The owner asked.
        owner: String,
    },
    /// Every subnet is in use.
    Exhausted {
        /// Subnets in use (published leases, ours included).
        used: u64,
        /// Subnets in the cluster CIDR.
        total: u64,
    },
    /// No member in reach offers a free subnet, yet not every subnet is in use: the
    /// rest belongs to owners not in reach (or waiting to be reclaimed).
    NoFreeSpace {
        /// Subnets in use.
        used: u64,
        /// Subnets in the cluster CIDR.
        total: u64,
    },
    /// This node holds a lease but is cut off from its witnesses.
    Fenced,
    /// This node owns free subnets (it just founded the cluster, or took space
    /// over) and takes one on its next tick.
    OwnSpace,
}

impl LeaseWait {
    /// Whether `other` is the same reason for the log: the log says it once per
    /// change, not once per request (the owner asked, the proposer and the counts of
    /// a space held out of reach may change from one try to the next).
    pub(crate) fn same_reason(&self, other: &LeaseWait) -> bool {
        match (self, other) {
            (LeaseWait::Founding(FoundingWait::Peers { .. }), LeaseWait::Founding(_)) => {
                self == other
            }
            (
                LeaseWait::Founding(FoundingWait::Agreeing { .. }),
                LeaseWait::Founding(FoundingWait::Agreeing { .. }),
            )
            | (LeaseWait::Asking { .. }, LeaseWait::Asking { .. })
            | (LeaseWait::NoFreeSpace { .. }, LeaseWait::NoFreeSpace { .. })
            | (LeaseWait::Fenced, LeaseWait::Fenced)
            | (LeaseWait::OwnSpace, LeaseWait::OwnSpace) => true,
            _ => self == other,
        }
    }
}

impl fmt::Display for LeaseWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseWait::Founding(FoundingWait::Peers {
                present,
                of,
                needed,
                missing,
            }) => {
                write!(
                    f,
                    "waiting to found: {present} of {of} initial peers present, {needed} needed"
                )?;
                if !missing.is_empty() {
                    let m: Vec<String> = missing.iter().map(|a| a.to_string()).collect();
                    write!(f, " ({} not heard from)", m.join(", "))?;
                }
                Ok(())
            }
            LeaseWait::Founding(FoundingWait::Agreeing { proposer }) => match proposer {
                Some(p) => write!(f, "waiting to found: agreeing on a founder ({p} proposes)"),
                None => write!(f, "waiting to found: agreeing on a founder"),
            },
            LeaseWait::Asking { owner } => write!(f, "asking {owner} for a subnet"),
            LeaseWait::Exhausted { used, total } => {
                write!(f, "exhausted: {used} of {total} in use")
            }
            LeaseWait::NoFreeSpace { used, total } => write!(
                f,
                "no member in reach offers a free subnet ({used} of {total} in use; the rest is held by owners not in reach)"
            ),
            LeaseWait::Fenced => write!(f, "fenced: cut off from its witnesses, not using its subnet"),
            LeaseWait::OwnSpace => write!(f, "taking a subnet from its own free space"),
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
    /// Dual-stack: its IPv6 subnet (the same lease).
    pub subnet_v6: Option<IpNet>,
    /// Its VXLAN endpoint: advertise address and VXLAN port.
    pub underlay: SocketAddr,
    /// Its VTEP MAC address.
    pub vtep_mac: [u8; 6],
    /// Its VNI.
    pub vni: u32,
    /// Liveness: route when `Alive`/`Suspect`, drop and count when `Dead`.
    pub state: MemberState,
    /// Its WireGuard port and public key, in an encrypted cluster.
    pub wg: Option<super::meta::WgIdentity>,
    /// Its direct-routing offer, if it holds one out: the MAC address its direct
    /// frames come from (`docs/direct-routing.md`).
    pub direct: Option<[u8; 6]>,
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
    /// Whether every subnet is in use and we have none.
    pub exhausted: bool,
    /// What we wait for while we use no subnet (`None`: we use one).
    pub waiting: Option<LeaseWait>,
    /// The founder of our cluster, once known.
    pub founder: Option<Founder>,
    /// Every member gossip knows, with or without a lease.
    pub members: Vec<MemberReport>,
    /// Our current witnesses.
    pub witnesses: Vec<String>,
    /// Peers with a subnet.
    pub peers: Vec<PeerInfo>,
    /// Gossip datagrams dropped as malformed, oversized, from another cluster, or lease
    /// messages from a name gossip does not know.
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
    /// Cluster members speaking a gossip protocol version we cannot accept.
    pub refused_versions: Vec<VersionRefusal>,
}

/// A sender holding the cluster key whose gossip protocol version this build cannot
/// talk to ([`super::message::accepts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRefusal {
    /// Its gossip address.
    pub(crate) from: SocketAddr,
    /// The version it speaks.
    pub(crate) version: u8,
    /// Datagrams refused.
    pub(crate) datagrams: u64,
    /// Seconds since the last one came.
    pub ago_secs: u64,
}

/// Gossip traffic counters of one node (UDP payload bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipTraffic {
    /// Datagrams sent.
    pub(crate) tx_datagrams: u64,
    /// Bytes sent.
    pub(crate) tx_bytes: u64,
    /// Datagrams received.
    pub(crate) rx_datagrams: u64,
    /// Bytes received.
    pub(crate) rx_bytes: u64,
}
