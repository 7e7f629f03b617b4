//! The peers behind the forwarding table: static ones from `--static-peer` plus those
//! the control plane learned, checked against each other and turned into a [`Fib`].
//! Traffic counters are kept per peer name across rebuilds, and each peer state
//! change is logged once.
//!
//! Left out: how the FIB is used ([`crate::dataplane`]) and how peers are learned
//! ([`crate::control`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::DaemonArgs;
use crate::control::{MemberState, PeerInfo};
use crate::dataplane::stats::PeerStats;
use crate::dataplane::wire::MacAddr;
use crate::dataplane::{Fib, Peer, PeerOrigin, PeerState};

/// Builds the peers of the forwarding table from `--static-peer`.
pub(crate) fn static_peers(args: &DaemonArgs) -> Vec<Peer> {
    args.static_peers
        .iter()
        .map(|p| Peer {
            name: format!("static:{}", p.subnet),
            subnet: p.subnet,
            underlay: p.addr,
            vtep_mac: p.mac,
            state: PeerState::Alive,
            origin: PeerOrigin::Static,
            subnet_v6: None,
            allow_any_source: p.allow_any_source,
            wg_key: p.wg_key,
            stats: Arc::default(),
        })
        .collect()
}

/// Builds the forwarding table from static and learned peers. A peer whose subnet
/// overlaps our own or an earlier peer's (static peers come first), or that shares an
/// earlier peer's underlay address, is left out and named in the returned warnings,
/// so one bad announcement never takes down forwarding to everyone else.
pub(crate) fn build_fib(own: Option<IpNet>, peers: Vec<Peer>) -> (Fib, Vec<String>) {
    let mut kept: Vec<Peer> = Vec::with_capacity(peers.len());
    let mut warnings = Vec::new();
    for peer in peers {
        if let Some(own) = own.filter(|own| crate::config::overlaps(own, &peer.subnet)) {
            warnings.push(format!(
                "ignoring peer {}: its subnet {} overlaps ours ({own})",
                peer.name, peer.subnet
            ));
            continue;
        }
        if let Some(other) = kept
            .iter()
            .find(|k| crate::config::overlaps(&k.subnet, &peer.subnet))
        {
            warnings.push(format!(
                "ignoring peer {}: its subnet {} overlaps {}'s {}",
                peer.name, peer.subnet, other.name, other.subnet
            ));
            continue;
        }
        if let Some(other) = kept.iter().find(|k| k.underlay.ip() == peer.underlay.ip()) {
            warnings.push(format!(
                "ignoring peer {}: underlay address {} is {}'s",
                peer.name,
                peer.underlay.ip(),
                other.name
            ));
            continue;
        }
        kept.push(peer);
    }
    // Overlaps and shared addresses were filtered above, so this cannot fail.
    let fib = Fib::new(kept).unwrap_or_default();
    (fib, warnings)
}

/// The forwarding state of the dataplane: a peer's membership state as the FIB
/// uses it.
fn fib_state(state: MemberState) -> PeerState {
    match state {
        MemberState::Alive => PeerState::Alive,
        MemberState::Suspect => PeerState::Suspect,
        MemberState::Dead => PeerState::Dead,
    }
}

/// What the last FIB was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BuiltFrom {
    own: Option<IpNet>,
    learned: Vec<PeerInfo>,
}

/// The peers behind the FIB: static ones plus those learned by gossip, with traffic
/// counters kept per name across rebuilds and each state change logged once.
pub(crate) struct PeerTable {
    statics: Vec<Peer>,
    vni: u32,
    encrypted: bool,
    counters: HashMap<String, Arc<PeerStats>>,
    last: Option<BuiltFrom>,
    states: HashMap<String, PeerState>,
}

impl PeerTable {
    /// A table with the static peers `statics`; learned peers count only with `vni`.
    /// In an `encrypted` cluster a learned peer is reached at its WireGuard port with
    /// its published key, and one that published none is left out.
    pub(crate) fn new(statics: Vec<Peer>, vni: u32, encrypted: bool) -> PeerTable {
        PeerTable {
            statics,
            vni,
            encrypted,
            counters: Default::default(),
            last: None,
            states: Default::default(),
        }
    }

    /// A new FIB if our subnet or the learned peers changed since the last call.
    pub(crate) fn update(&mut self, own: Option<IpNet>, learned: &[PeerInfo]) -> Option<Fib> {
        if self
            .last
            .as_ref()
            .is_some_and(|b| b.own == own && b.learned.as_slice() == learned)
        {
            return None;
        }
        self.last = Some(BuiltFrom {
            own,
            learned: learned.to_vec(),
        });
        let mut peers = self.statics.clone();
        let mut seen = HashSet::new();
        for p in learned.iter().filter(|p| p.vni == self.vni) {
            let state = fib_state(p.state);
            if self.states.insert(p.name.clone(), state) != Some(state) {
                tracing::info!(peer = %p.name, subnet = %p.subnet, underlay = %p.underlay, ?state, "peer state");
            }
            seen.insert(p.name.clone());
            let (underlay, wg_key) = match (self.encrypted, p.wg) {
                (false, _) => (p.underlay, None),
                (true, Some(wg)) => (
                    std::net::SocketAddr::new(p.underlay.ip(), wg.port),
                    Some(wg.key),
                ),
                (true, None) => {
                    tracing::warn!(peer = %p.name, "ignoring peer {}: it published no WireGuard key, and this cluster encrypts", p.name);
                    continue;
                }
            };
            let stats = self.counters.entry(p.name.clone()).or_default().clone();
            peers.push(Peer {
                name: p.name.clone(),
                subnet: p.subnet,
                subnet_v6: p.subnet_v6,
                underlay,
                wg_key,
                vtep_mac: MacAddr(p.vtep_mac),
                state,
                origin: PeerOrigin::Gossip,
                allow_any_source: false,
                stats,
            });
        }
        self.states.retain(|name, _| {
            let keep = seen.contains(name);
            if !keep {
                tracing::info!(peer = %name, "peer gone");
            }
            keep
        });
        let (fib, warnings) = build_fib(own, peers);
        for w in warnings {
            tracing::warn!("{w}");
        }
        Some(fib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_fib_skips_conflicting_peers() {
        use crate::dataplane::fib::tests::peer;
        let (fib, warnings) = build_fib(
            Some("10.244.1.0/24".parse().unwrap()),
            vec![
                peer("a", "10.244.2.0/24", "198.18.0.2:4789"),
                peer("ours", "10.244.1.0/24", "198.18.0.3:4789"),
                peer("dup", "10.244.2.0/24", "198.18.0.4:4789"),
                peer("same-addr", "10.244.5.0/24", "198.18.0.2:4789"),
                peer("b", "10.244.3.0/24", "198.18.0.5:4789"),
            ],
        );
        let names: Vec<&str> = fib.peers().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("ours"));
    }

    fn learned(name: &str, subnet: &str, underlay: &str, vni: u32, state: MemberState) -> PeerInfo {
        PeerInfo {
            name: name.into(),
            subnet: subnet.parse().unwrap(),
            subnet_v6: None,
            underlay: underlay.parse().unwrap(),
            vtep_mac: [2, 0, 0, 0, 0, 7],
            vni,
            state,
            wg: None,
            direct: None,
        }
    }

    #[test]
    fn the_table_rebuilds_on_change_only_and_keeps_counters_by_name() {
        let own = Some("10.244.1.0/24".parse().unwrap());
        let mut table = PeerTable::new(vec![], 1, false);
        let n2 = learned(
            "n2",
            "10.244.2.0/24",
            "198.18.0.2:4789",
            1,
            MemberState::Alive,
        );
        let other_vni = learned(
            "x",
            "10.244.9.0/24",
            "198.18.0.9:4789",
            2,
            MemberState::Alive,
        );
        let fib = table.update(own, &[n2.clone(), other_vni.clone()]).unwrap();
        let names: Vec<&str> = fib.peers().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["n2"], "a peer of another VNI is left out");
        fib.peers()[0].stats.tx.add_shared(3, 300);
        assert!(table.update(own, &[n2.clone(), other_vni]).is_none());
        // n2 is declared dead: a new FIB, the same counters, the dataplane's state.
        let dead = PeerInfo {
            state: MemberState::Dead,
            ..n2
        };
        let fib = table.update(own, &[dead]).unwrap();
        assert_eq!(fib.peers()[0].state, PeerState::Dead);
        assert_eq!(fib.peers()[0].stats.tx.get(), (3, 300));
    }
}
