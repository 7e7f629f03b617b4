//! What the kernel dataplane programs for a forwarding table, and the changes that
//! take the kernel from the entries it has to those (sans-IO).
//!
//! For every peer that is alive or suspect, as flannel's vxlan backend does:
//! - a permanent neighbour entry: the peer's gateway address has the peer's VTEP MAC;
//! - a permanent FDB entry: that MAC is behind the peer's underlay address (and port);
//! - a route to the peer's subnet via its gateway, `onlink`, from our gateway.
//!
//! A dual-stack peer has a neighbour entry and a route for each of its subnets.
//!
//! A dead peer has none, so its subnet falls to the cluster's `unreachable` route
//! and senders get an ICMP unreachable at once. Nothing here talks to the kernel:
//! [`Entries::for_fib`] says what should be, [`changes`] what to do about what is.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::dataplane::fib::{gateway_of, Fib, PeerState};
use crate::dataplane::icmp::Routers;
use crate::dataplane::wire::MacAddr;

/// A route to a peer's subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RouteEntry {
    /// The peer's subnet.
    pub(crate) dst: IpNet,
    /// The peer's gateway, reached `onlink` on the vxlan device.
    pub(crate) via: IpAddr,
    /// Our gateway, the source of traffic the node itself sends (None without a
    /// subnet).
    pub(crate) src: Option<IpAddr>,
}

/// The kernel entries on the vxlan device, as sets so that a duplicate in the
/// kernel shows up as an entry to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Entries {
    /// Neighbour entries: gateway address to VTEP MAC.
    pub(crate) neighbours: BTreeSet<(IpAddr, MacAddr)>,
    /// FDB entries: VTEP MAC to underlay address and port.
    pub(crate) fdb: BTreeSet<(MacAddr, SocketAddr)>,
    /// Routes to peer subnets.
    pub(crate) routes: BTreeSet<RouteEntry>,
}

/// One change to the kernel's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Delete this route.
    DelRoute(RouteEntry),
    /// Delete this neighbour entry.
    DelNeighbour(IpAddr, MacAddr),
    /// Delete this FDB entry.
    DelFdb(MacAddr, SocketAddr),
    /// Add this FDB entry.
    AddFdb(MacAddr, SocketAddr),
    /// Add (or replace) this neighbour entry.
    AddNeighbour(IpAddr, MacAddr),
    /// Add (or replace) this route.
    AddRoute(RouteEntry),
}

impl Entries {
    /// The entries for the forwarding peers of `fib` whose underlay has the family
    /// of `local` (the vxlan device's `local`), with routes from our gateway of each
    /// family (`routers`). Peers left out (another underlay family, a VTEP MAC an
    /// earlier peer has) are named in the returned warnings.
    pub(crate) fn for_fib(fib: &Fib, local: IpAddr, routers: Routers) -> (Entries, Vec<String>) {
        let mut out = Entries::default();
        let mut warnings = Vec::new();
        let mut macs: BTreeMap<MacAddr, &str> = BTreeMap::new();
        for peer in fib.peers() {
            if peer.state == PeerState::Dead {
                continue;
            }
            if peer.underlay.is_ipv4() != local.is_ipv4() {
                warnings.push(format!(
                    "kernel dataplane: peer {} is at {}, another address family than this node's {local}: not programmed",
                    peer.name, peer.underlay
                ));
                continue;
            }
            if let Some(other) = macs.insert(peer.vtep_mac, &peer.name) {
                warnings.push(format!(
                    "kernel dataplane: peer {} has VTEP MAC {}, as {other} does: not programmed",
                    peer.name, peer.vtep_mac
                ));
                macs.insert(peer.vtep_mac, other);
                continue;
            }
            out.fdb.insert((peer.vtep_mac, peer.underlay));
            for subnet in peer.subnets() {
                let gateway = gateway_of(&subnet);
                out.neighbours.insert((gateway, peer.vtep_mac));
                // IPv6 routes take no `src`: the kernel refuses one still tentative,
                // and its source selection picks our gateway anyway (as for the
                // userspace dataplane's route through the TUN).
                out.routes.insert(RouteEntry {
                    dst: subnet,
                    via: gateway,
                    src: routers.of_family(true).filter(|_| gateway.is_ipv4()),
                });
            }
        }
        (out, warnings)
    }
}

/// The changes that turn `have` into `want`: deletions first (routes before the
/// neighbours they use), then additions (FDB entries before the neighbours and
/// routes that rely on them). Entries in both are left alone.
pub(crate) fn changes(have: &Entries, want: &Entries) -> Vec<Change> {
    let mut out = Vec::new();
    out.extend(
        have.routes
            .difference(&want.routes)
            .map(|r| Change::DelRoute(*r)),
    );
    out.extend(
        have.neighbours
            .difference(&want.neighbours)
            .map(|(ip, mac)| Change::DelNeighbour(*ip, *mac)),
    );
    out.extend(
        have.fdb
            .difference(&want.fdb)
            .map(|(mac, at)| Change::DelFdb(*mac, *at)),
    );
    out.extend(
        want.fdb
            .difference(&have.fdb)
            .map(|(mac, at)| Change::AddFdb(*mac, *at)),
    );
    out.extend(
        want.neighbours
            .difference(&have.neighbours)
            .map(|(ip, mac)| Change::AddNeighbour(*ip, *mac)),
    );
    out.extend(
        want.routes
            .difference(&have.routes)
            .map(|r| Change::AddRoute(*r)),
    );
    out
}

/// The entries of `want` that `have` lacks, as the additions that would put them
/// in: what `diagnose` reports missing for one peer. A route counts as there when
/// the kernel has one to the same destination through the same gateway, whatever
/// its preferred source (which `diagnose` does not know).
pub(crate) fn missing(have: &Entries, want: &Entries) -> Vec<Change> {
    let mut have = have.clone();
    have.routes = have
        .routes
        .iter()
        .filter_map(|r| {
            want.routes
                .iter()
                .find(|w| w.dst == r.dst && w.via == r.via)
                .copied()
        })
        .collect();
    changes(&have, want)
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                Change::AddFdb(..) | Change::AddNeighbour(..) | Change::AddRoute(_)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fib::tests::peer;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn fib(peers: Vec<crate::dataplane::Peer>) -> Fib {
        Fib::new(peers).unwrap()
    }

    #[test]
    fn a_live_peer_gets_a_neighbour_an_fdb_entry_and_a_route() {
        let f = fib(vec![peer("n2", "10.244.2.0/24", "198.18.0.2:4789")]);
        let (e, warnings) = Entries::for_fib(&f, ip("198.18.0.1"), Routers::one(ip("10.244.1.1")));
        assert!(warnings.is_empty());
        let mac = f.peers()[0].vtep_mac;
        assert_eq!(
            e.neighbours.iter().copied().collect::<Vec<_>>(),
            [(ip("10.244.2.1"), mac)]
        );
        assert_eq!(
            e.fdb.iter().copied().collect::<Vec<_>>(),
            [(mac, "198.18.0.2:4789".parse().unwrap())]
        );
        assert_eq!(
            e.routes.iter().copied().collect::<Vec<_>>(),
            [RouteEntry {
                dst: "10.244.2.0/24".parse().unwrap(),
                via: ip("10.244.2.1"),
                src: Some(ip("10.244.1.1")),
            }]
        );
    }

    #[test]
    fn dead_peers_other_families_and_shared_macs_are_left_out() {
        let mut dead = peer("dead", "10.244.3.0/24", "198.18.0.3:4789");
        dead.state = PeerState::Dead;
        let v6 = peer("v6", "10.244.4.0/24", "[fd00::4]:4789");
        let a = peer("a", "10.244.5.0/24", "198.18.0.5:4789");
        let mut same_mac = peer("same-mac", "10.244.6.0/24", "198.18.0.6:4789");
        same_mac.vtep_mac = a.vtep_mac;
        let f = fib(vec![dead, v6, a, same_mac]);
        let (e, warnings) = Entries::for_fib(&f, ip("198.18.0.1"), Routers::default());
        assert_eq!(e.routes.len(), 1, "{e:?}");
        assert_eq!(e.routes.first().unwrap().dst.to_string(), "10.244.5.0/24");
        assert_eq!(e.routes.first().unwrap().src, None);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("v6") && warnings[1].contains("same-mac"));
    }

    #[test]
    fn a_dual_stack_peer_gets_a_neighbour_and_a_route_per_family() {
        let mut p = peer("n2", "10.244.2.0/24", "198.18.0.2:4789");
        p.subnet_v6 = Some("fd00:10:244:2::/64".parse().unwrap());
        let f = fib(vec![p]);
        let routers = Routers {
            primary: Some(ip("10.244.1.1")),
            second: Some(ip("fd00:10:244:1::1")),
        };
        let (e, _) = Entries::for_fib(&f, ip("198.18.0.1"), routers);
        assert_eq!(e.fdb.len(), 1);
        assert_eq!(e.neighbours.len(), 2);
        let routes: Vec<_> = e
            .routes
            .iter()
            .map(|r| (r.dst.to_string(), r.via, r.src))
            .collect();
        assert_eq!(
            routes,
            [
                (
                    "10.244.2.0/24".into(),
                    ip("10.244.2.1"),
                    Some(ip("10.244.1.1"))
                ),
                ("fd00:10:244:2::/64".into(), ip("fd00:10:244:2::1"), None),
            ]
        );
    }

    #[test]
    fn changes_delete_what_is_extra_and_add_what_is_missing_in_order() {
        let mac = MacAddr([2, 0, 0, 0, 0, 2]);
        let old_mac = MacAddr([2, 0, 0, 0, 0, 9]);
        let at: SocketAddr = "198.18.0.2:4789".parse().unwrap();
        let route = RouteEntry {
            dst: "10.244.2.0/24".parse().unwrap(),
            via: ip("10.244.2.1"),
            src: Some(ip("10.244.1.1")),
        };
        let stale_route = RouteEntry { src: None, ..route };
        let mut have = Entries::default();
        have.neighbours.insert((ip("10.244.2.1"), old_mac));
        have.fdb.insert((old_mac, at));
        have.fdb.insert((mac, at));
        have.routes.insert(stale_route);
        let mut want = Entries::default();
        want.neighbours.insert((ip("10.244.2.1"), mac));
        want.fdb.insert((mac, at));
        want.routes.insert(route);
        assert_eq!(
            changes(&have, &want),
            [
                Change::DelRoute(stale_route),
                Change::DelNeighbour(ip("10.244.2.1"), old_mac),
                Change::DelFdb(old_mac, at),
                Change::AddNeighbour(ip("10.244.2.1"), mac),
                Change::AddRoute(route),
            ]
        );
        assert!(changes(&want, &want).is_empty());
    }

    #[test]
    fn missing_names_only_what_the_kernel_lacks_whatever_a_routes_source() {
        let mac = MacAddr([2, 0, 0, 0, 0, 2]);
        let at: SocketAddr = "198.18.0.2:4789".parse().unwrap();
        let route = RouteEntry {
            dst: "10.244.2.0/24".parse().unwrap(),
            via: ip("10.244.2.1"),
            src: None,
        };
        let mut want = Entries::default();
        want.neighbours.insert((ip("10.244.2.1"), mac));
        want.fdb.insert((mac, at));
        want.routes.insert(route);
        let mut have = Entries::default();
        have.fdb.insert((mac, at));
        have.fdb.insert((MacAddr([2, 0, 0, 0, 0, 9]), at));
        have.routes.insert(RouteEntry {
            src: Some(ip("10.244.1.1")),
            ..route
        });
        assert_eq!(
            missing(&have, &want),
            [Change::AddNeighbour(ip("10.244.2.1"), mac)]
        );
        have.routes.clear();
        have.routes.insert(RouteEntry {
            via: ip("10.244.2.9"),
            ..route
        });
        assert_eq!(
            missing(&have, &want),
            [
                Change::AddNeighbour(ip("10.244.2.1"), mac),
                Change::AddRoute(route)
            ]
        );
    }
}
