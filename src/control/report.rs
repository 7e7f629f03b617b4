//! What the control plane tells the rest of the daemon: the peers for the FIB
//! ([`PeerInfo`]) and a snapshot for `overlayd status` ([`Status`]).

use std::net::SocketAddr;

use ipnet::IpNet;

use super::auth::RejectCounters;
use super::membership::MemberState;

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
