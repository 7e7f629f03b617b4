//! The forwarding table: which peer owns a destination address, and which peer an
//! underlay address belongs to.
//!
//! A `Fib` is immutable once built. The control plane builds a new one when
//! membership changes and hands it to the packet tasks as an `Arc`, so lookups take
//! no lock. Longest-prefix match keeps one hash map per distinct prefix length,
//! longest first: node subnets share one length, so a lookup is one hash probe.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::stats::PeerStats;
use super::wire::MacAddr;

/// Whether traffic may flow to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Reachable, as far as the control plane knows.
    Alive,
    /// Heard from too rarely; traffic still flows.
    Suspect,
    /// Declared dead: traffic to it is dropped and counted.
    Dead,
}

impl PeerState {
    /// Every state, in the order status and metrics list them.
    pub(crate) const ALL: [PeerState; 3] = [PeerState::Alive, PeerState::Suspect, PeerState::Dead];

    /// Its name in status, metrics labels and JSON (`alive`, `suspect`, `dead`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Dead => "dead",
        }
    }
}

/// Where a peer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerOrigin {
    /// `--static-peer` on the command line or in the config file.
    Static,
    /// Learned through gossip.
    Gossip,
}

/// A node that owns a subnet and terminates VXLAN.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Node name (for static peers, `static:<subnet>`).
    pub name: String,
    /// The pod subnet the peer owns.
    pub subnet: IpNet,
    /// Dual-stack: its IPv6 subnet too.
    pub subnet_v6: Option<IpNet>,
    /// Underlay address and VXLAN port the peer receives on.
    pub underlay: SocketAddr,
    /// The peer's VTEP MAC: the inner destination MAC of frames we send it.
    pub vtep_mac: MacAddr,
    /// Alive, suspect or dead.
    pub state: PeerState,
    /// Static or learned.
    pub origin: PeerOrigin,
    /// Accept inner source addresses outside `subnet` from this peer.
    pub allow_any_source: bool,
    /// The peer's WireGuard public key (encrypted clusters and plain WireGuard
    /// static peers); `underlay` is then its WireGuard endpoint.
    pub wg_key: Option<[u8; 32]>,
    /// Traffic counters; kept across FIB rebuilds by the caller.
    pub stats: Arc<PeerStats>,
}

impl Peer {
    /// Its subnets: `subnet`, and dual-stack `subnet_v6`.
    pub(crate) fn subnets(&self) -> impl Iterator<Item = IpNet> {
        std::iter::once(self.subnet).chain(self.subnet_v6)
    }

    /// Whether `ip` lies in one of its subnets (the anti-spoofing check).
    #[inline]
    pub(crate) fn owns(&self, ip: &IpAddr) -> bool {
        self.subnet.contains(ip) || self.subnet_v6.is_some_and(|s| s.contains(ip))
    }
}

/// The first host address of `subnet`: a node's gateway, held by its bridge.
pub fn gateway_of(subnet: &IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + 1).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + 1).into()),
    }
}

/// Why a set of peers does not make a FIB.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FibError {
    /// Two peers claim overlapping subnets.
    #[error("peers {a} and {b} claim overlapping subnets {a_subnet} and {b_subnet}")]
    Overlap {
        /// First peer.
        a: String,
        /// Its subnet.
        a_subnet: IpNet,
        /// Second peer.
        b: String,
        /// Its subnet.
        b_subnet: IpNet,
    },
    /// Two peers share an underlay address, so inbound traffic could not be told apart.
    #[error("peers {a} and {b} share the underlay address {addr}")]
    SharedUnderlay {
        /// First peer.
        a: String,
        /// Second peer.
        b: String,
        /// The shared address.
        addr: IpAddr,
    },
}

/// One prefix length's exact-match table.
#[derive(Debug, Clone)]
struct Level<K> {
    prefix_len: u8,
    mask: K,
    map: FxHashMap<K, u32>,
}

/// The forwarding table.
#[derive(Debug, Clone, Default)]
pub struct Fib {
    peers: Vec<Peer>,
    v4: Vec<Level<u32>>,
    v6: Vec<Level<u128>>,
    by_underlay: FxHashMap<IpAddr, u32>,
}

fn mask_v4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

fn insert<K: Copy + Eq + std::hash::Hash + std::ops::BitAnd<Output = K>>(
    levels: &mut Vec<Level<K>>,
    prefix_len: u8,
    mask: K,
    key: K,
    idx: u32,
) -> Option<u32> {
    let pos = match levels.iter().position(|l| l.prefix_len <= prefix_len) {
        Some(p) if levels[p].prefix_len == prefix_len => p,
        Some(p) => {
            levels.insert(
                p,
                Level {
                    prefix_len,
                    mask,
                    map: FxHashMap::default(),
                },
            );
            p
        }
        None => {
            levels.push(Level {
                prefix_len,
                mask,
                map: FxHashMap::default(),
            });
            levels.len() - 1
        }
    };
    levels[pos].map.insert(key & mask, idx)
}

impl Fib {
    /// Builds a FIB, rejecting overlapping subnets and shared underlay addresses.
    pub fn new(peers: Vec<Peer>) -> Result<Fib, FibError> {
        let mut fib = Fib::default();
        for (i, a) in peers.iter().enumerate() {
            for b in &peers[..i] {
                for (sa, sb) in a
                    .subnets()
                    .flat_map(|sa| b.subnets().map(move |sb| (sa, sb)))
                {
                    if sa.contains(&sb.network()) || sb.contains(&sa.network()) {
                        return Err(FibError::Overlap {
                            a: b.name.clone(),
                            a_subnet: sb,
                            b: a.name.clone(),
                            b_subnet: sa,
                        });
                    }
                }
            }
        }
        for (i, peer) in peers.iter().enumerate() {
            let idx = i as u32;
            for subnet in peer.subnets() {
                match subnet {
                    IpNet::V4(net) => {
                        let len = net.prefix_len();
                        insert(
                            &mut fib.v4,
                            len,
                            mask_v4(len),
                            u32::from(net.network()),
                            idx,
                        );
                    }
                    IpNet::V6(net) => {
                        let len = net.prefix_len();
                        insert(
                            &mut fib.v6,
                            len,
                            mask_v6(len),
                            u128::from(net.network()),
                            idx,
                        );
                    }
                }
            }
            let addr = peer.underlay.ip().to_canonical();
            if let Some(prev) = fib.by_underlay.insert(addr, idx) {
                return Err(FibError::SharedUnderlay {
                    a: peers[prev as usize].name.clone(),
                    b: peer.name.clone(),
                    addr,
                });
            }
        }
        fib.peers = peers;
        Ok(fib)
    }

    /// The peer whose subnet holds `dst` (longest prefix wins).
    #[inline]
    pub fn lookup(&self, dst: IpAddr) -> Option<&Peer> {
        self.peers.get(self.lookup_index(dst)? as usize)
    }

    /// The index in [`Fib::peers`] of the peer whose subnet holds `dst`.
    #[inline(always)]
    pub(crate) fn lookup_index(&self, dst: IpAddr) -> Option<u32> {
        match dst {
            IpAddr::V4(a) => {
                let key = u32::from(a);
                self.v4.iter().find_map(|l| l.map.get(&(key & l.mask)))
            }
            IpAddr::V6(a) => {
                let key = u128::from(a);
                self.v6.iter().find_map(|l| l.map.get(&(key & l.mask)))
            }
        }
        .copied()
    }

    /// The peer that sends from underlay address `addr`.
    #[inline]
    pub fn peer_by_underlay(&self, addr: IpAddr) -> Option<&Peer> {
        self.peers.get(self.underlay_index(addr)? as usize)
    }

    /// The index in [`Fib::peers`] of the peer that sends from underlay address `addr`.
    #[inline(always)]
    pub fn underlay_index(&self, addr: IpAddr) -> Option<u32> {
        self.by_underlay.get(&addr.to_canonical()).copied()
    }

    /// Every peer, in the order given to [`Fib::new`].
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn peer(name: &str, subnet: &str, underlay: &str) -> Peer {
        Peer {
            name: name.into(),
            subnet: subnet.parse().unwrap(),
            underlay: underlay.parse().unwrap(),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            state: PeerState::Alive,
            origin: PeerOrigin::Static,
            subnet_v6: None,
            allow_any_source: false,
            wg_key: None,
            stats: Arc::default(),
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let fib = Fib::new(vec![
            peer("wide", "10.245.0.0/16", "198.18.0.1:4789"),
            peer("n2", "10.244.2.0/24", "198.18.0.2:4789"),
            peer("host", "10.244.3.7/32", "198.18.0.3:4789"),
            peer("v6", "fd00:1::/64", "[2001:db8::1]:4789"),
        ])
        .unwrap();
        let name = |a: &str| fib.lookup(a.parse().unwrap()).map(|p| p.name.as_str());
        assert_eq!(name("10.244.2.9"), Some("n2"));
        assert_eq!(name("10.244.3.7"), Some("host"));
        assert_eq!(name("10.244.3.8"), None);
        assert_eq!(name("10.245.200.1"), Some("wide"));
        assert_eq!(name("fd00:1::5"), Some("v6"));
        assert_eq!(name("fd00:2::5"), None);
        assert_eq!(
            fib.peer_by_underlay("198.18.0.2".parse().unwrap())
                .map(|p| p.name.as_str()),
            Some("n2")
        );
        // An IPv4-mapped IPv6 sender (from a dual-stack socket) is the same peer.
        assert_eq!(
            fib.peer_by_underlay("::ffff:198.18.0.2".parse().unwrap())
                .map(|p| p.name.as_str()),
            Some("n2")
        );
    }

    #[test]
    fn rejects_overlap_and_shared_underlay() {
        let err = Fib::new(vec![
            peer("a", "10.244.0.0/16", "198.18.0.1:4789"),
            peer("b", "10.244.2.0/24", "198.18.0.2:4789"),
        ])
        .unwrap_err();
        assert!(matches!(err, FibError::Overlap { .. }), "{err}");
        let err = Fib::new(vec![
            peer("a", "10.244.1.0/24", "198.18.0.1:4789"),
            peer("b", "10.244.2.0/24", "198.18.0.1:4790"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("198.18.0.1"), "{err}");
    }

    #[test]
    fn zero_length_prefix_matches_everything() {
        let fib = Fib::new(vec![peer("default", "0.0.0.0/0", "198.18.0.1:4789")]).unwrap();
        assert!(fib.lookup("1.2.3.4".parse().unwrap()).is_some());
    }
}
