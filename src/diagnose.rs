//! `overlayd diagnose POD_IP`: why can't this node reach that pod? The daemon checks,
//! in order, what a packet to POD_IP needs on its way out of this node, and the first
//! check that fails is the verdict. Every check is reported as evidence.
//!
//! Checks: the address is in the cluster CIDR; this node has a subnet (if not, the
//! verdict says what it waits for); which node owns its subnet (this node,
//! a peer, or nobody); that peer's state; the kernel's route to the address; the
//! bridge and the dataplane's device (the TUN, or the kernel dataplane's vxlan
//! device together with the peer's neighbour, FDB entry and route on it); and
//! whether VXLAN traffic from that peer has arrived recently (a peer we send to that
//! never answers points at the underlay).
//!
//! Left out: how the question and the answer travel ([`crate::admin`]).

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dataplane::kernel::plan::{Entries, RouteEntry};
use crate::dataplane::netlink::Netlink;
use crate::dataplane::{gateway_of, DataplaneMode, PeerState};
use crate::status::StatusReport;

/// One piece of evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked.
    pub what: String,
    /// Whether it is as it should be.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// The answer to `overlayd diagnose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// The address asked about.
    pub target: IpAddr,
    /// The node that owns the address's subnet, if any.
    pub owner: Option<String>,
    /// True when nothing on this node's side stands in the way.
    pub reachable: bool,
    /// One sentence: the first failed check, or that all is well.
    pub verdict: String,
    /// Every check, in order.
    pub evidence: Vec<Check>,
}

/// How long without VXLAN traffic from a peer we send to counts as "not answering".
pub const QUIET: Duration = Duration::from_secs(30);

fn check(evidence: &mut Vec<Check>, what: &str, ok: bool, detail: String) -> bool {
    evidence.push(Check {
        what: what.into(),
        ok,
        detail,
    });
    ok
}

/// Runs the checks for `target` on this node, whose status is `report`; `netlink`
/// answers for the devices and the kernel's route.
pub async fn diagnose(target: IpAddr, report: &StatusReport, netlink: &Netlink) -> Diagnosis {
    let node = &report.node;
    let mut ev = Vec::new();
    let mut owner = None;
    let verdict = 'verdict: {
        let cidrs = match node.cluster_cidr_v6 {
            Some(v6) => format!("{}, {v6}", node.cluster_cidr),
            None => node.cluster_cidr.to_string(),
        };
        let in_cluster = node.cluster_cidr.contains(&target)
            || node.cluster_cidr_v6.is_some_and(|c| c.contains(&target));
        if !check(
            &mut ev,
            "cluster CIDR",
            in_cluster,
            format!("{target} in {cidrs}"),
        ) {
            break 'verdict format!("{target} is not a pod address of this cluster ({cidrs})");
        }
        // The node's subnet of the target's family (dual-stack: the IPv6 one for an
        // IPv6 address).
        let own = if node.subnet_v6.is_some() && target.is_ipv6() {
            node.subnet_v6
        } else {
            node.subnet
        };
        if let Some(c) = &report.control {
            if node.subnet.is_none() {
                let why = c
                    .waiting
                    .clone()
                    .unwrap_or_else(|| "no subnet yet".to_string());
                check(&mut ev, "this node's lease", false, why.clone());
                break 'verdict format!(
                    "this node has no subnet yet, so it has no pods and no routes into the overlay: {why}"
                );
            }
        }
        let bridge = netlink.link_by_name(&node.bridge).await.ok().flatten();
        let bridge_up = bridge
            .as_ref()
            .is_some_and(crate::dataplane::netlink::is_up);
        check(
            &mut ev,
            "bridge",
            bridge_up,
            format!(
                "{} {}",
                node.bridge,
                if bridge_up {
                    "is up"
                } else {
                    "is missing or down"
                }
            ),
        );
        let kernel = report.path.mode == DataplaneMode::Kernel;
        let (device_kind, device_name) = match report.path.mode {
            DataplaneMode::Userspace | DataplaneMode::Encrypted => ("TUN", &node.tun),
            DataplaneMode::Kernel => ("vxlan device", &report.path.device),
        };
        let tun = netlink.link_by_name(device_name).await.ok().flatten();
        let tun_up = tun.as_ref().is_some_and(crate::dataplane::netlink::is_up);
        check(
            &mut ev,
            device_kind,
            tun_up,
            format!(
                "{} {}",
                device_name,
                if tun_up {
                    "is up"
                } else {
                    "is missing or down"
                }
            ),
        );
        let route = netlink.route_get(target).await.ok().flatten();
        let route_dev = route.and_then(|idx| {
            [(bridge.as_ref(), &node.bridge), (tun.as_ref(), device_name)]
                .into_iter()
                .find(|(l, _)| l.is_some_and(|l| l.header.index == idx))
                .map(|(_, name)| name.clone())
        });

        if own.is_some_and(|s| s.contains(&target)) {
            owner = Some(node.name.clone());
            check(
                &mut ev,
                "owner",
                true,
                format!(
                    "this node ({}) owns {}",
                    node.name,
                    own.map(|s| s.to_string()).unwrap_or_default()
                ),
            );
            let ok = route_dev.as_deref() == Some(node.bridge.as_str());
            check(
                &mut ev,
                "kernel route",
                ok,
                format!(
                    "{target} via {}",
                    route_dev.as_deref().unwrap_or("no device of ours")
                ),
            );
            if !bridge_up {
                break 'verdict format!(
                    "the pod would be local, but bridge {} is missing or down",
                    node.bridge
                );
            }
            if !ok {
                break 'verdict format!(
                    "the kernel does not route {target} to bridge {}",
                    node.bridge
                );
            }
            break 'verdict format!(
                "{target} is a local pod on this node's bridge {}: check the pod's own interface",
                node.bridge
            );
        }

        let Some(peer) = report.peers.iter().find(|p| {
            p.subnet.contains(&target) || p.subnet_v6.is_some_and(|s| s.contains(&target))
        }) else {
            check(
                &mut ev,
                "owner",
                false,
                "no node's lease or static peer covers this address".into(),
            );
            let fate = if kernel {
                "it meets the cluster's unreachable route (ICMP unreachable)"
            } else {
                "it is dropped as unknown_subnet"
            };
            break 'verdict format!("no node owns the subnet of {target}: traffic to {fate}");
        };
        owner = Some(peer.name.clone());
        check(
            &mut ev,
            "owner",
            true,
            format!(
                "{} owns {} at {}",
                peer.name,
                peer.subnet_v6
                    .filter(|s| s.contains(&target))
                    .unwrap_or(peer.subnet),
                peer.underlay
            ),
        );
        let alive = peer.state != PeerState::Dead;
        check(
            &mut ev,
            "peer state",
            alive,
            format!("{} is {:?}", peer.name, peer.state).to_lowercase(),
        );
        let routed = route_dev.as_deref() == Some(device_name.as_str());
        let mut entries_ok = true;
        if let (true, Some(link)) = (kernel && alive, tun.as_ref()) {
            // The peer's subnet of the target's family.
            let subnet = peer
                .subnet_v6
                .filter(|s| s.contains(&target))
                .unwrap_or(peer.subnet);
            let gateway = gateway_of(&subnet);
            let mut want = Entries::default();
            want.neighbours.insert((gateway, peer.vtep_mac));
            want.fdb.insert((peer.vtep_mac, peer.underlay));
            want.routes.insert(RouteEntry {
                dst: subnet,
                via: gateway,
                src: None,
            });
            let cidrs: Vec<_> = std::iter::once(node.cluster_cidr)
                .chain(node.cluster_cidr_v6)
                .collect();
            let problems = netlink
                .check_peer_entries(link.header.index, node.port, &cidrs, &want)
                .await
                .unwrap_or_else(|e| vec![format!("cannot read them: {e}")]);
            entries_ok = problems.is_empty();
            let detail = if entries_ok {
                format!(
                    "neighbour {gateway} lladdr {}, FDB {} dst {}, route {subnet} via {gateway} onlink",
                    peer.vtep_mac, peer.vtep_mac, peer.underlay
                )
            } else {
                problems.join("; ")
            };
            check(&mut ev, "kernel entries", entries_ok, detail);
        }
        check(
            &mut ev,
            "kernel route",
            routed,
            format!(
                "{target} via {}",
                route_dev.as_deref().unwrap_or("no device of ours")
            ),
        );
        // Encrypted: the WireGuard session with the peer.
        let handshake_failed = peer.wg.as_ref().and_then(|w| {
            let s = &w.session;
            let failed = s.session != "established" && s.initiations >= 2;
            let why = if !failed {
                None
            } else if let Some(n) = s.failures.get("unknown_key") {
                Some(format!("{n} of its handshakes carry a key that is not the one it published (it rotated its key or restarted with another state dir?)"))
            } else if let Some(n) = s.failures.get("bad_handshake") {
                Some(format!("{n} of its handshake messages were refused (MAC, timestamp or rate limit): are both nodes on the same keys?"))
            } else {
                Some(format!(
                    "no answer to {} handshake initiations: check UDP {} between this node and {}, and that {} has this node's public key",
                    s.initiations,
                    peer.underlay.port(),
                    peer.underlay.ip(),
                    peer.name
                ))
            };
            let detail = match &why {
                Some(why) => why.clone(),
                None => format!(
                    "session {}{}",
                    s.session,
                    s.handshake_age_ms
                        .map(|ms| format!(", handshake {}s ago", ms / 1000))
                        .unwrap_or_default()
                ),
            };
            check(&mut ev, "handshake", why.is_none(), detail);
            why
        });
        let heard = peer.last_heard_secs;
        let answered = heard.is_some_and(|s| s <= QUIET.as_secs());
        let detail = match (heard, peer.tx_packets) {
            (Some(s), _) => format!(
                "last packet from {} {s}s ago; sent {} / received {} packets",
                peer.name, peer.tx_packets, peer.rx_packets
            ),
            (None, 0) => format!("nothing sent to or received from {} yet", peer.name),
            (None, n) => format!("sent {n} packets to {}, never received one back", peer.name),
        };
        let quiet_but_sending = !answered && peer.tx_packets > 0;
        check(&mut ev, "answers", !quiet_but_sending, detail);
        if !alive {
            let fate = if kernel {
                "it meets the cluster's unreachable route (ICMP unreachable)"
            } else {
                "it is dropped as peer_dead"
            };
            break 'verdict format!(
                "{} (owner of {}) is declared dead: traffic to {fate}",
                peer.name, peer.subnet
            );
        }
        if !tun_up {
            break 'verdict format!(
                "{device_kind} {device_name} is missing or down: nothing leaves this node for the overlay"
            );
        }
        if !entries_ok {
            break 'verdict format!(
                "the vxlan device {device_name} lacks {}'s entries: the daemon re-adds them within 10 s; if not, see its log",
                peer.name
            );
        }
        if !routed {
            break 'verdict format!("the kernel does not route {target} through {device_name}: the route is missing or shadowed");
        }
        if let Some(why) = handshake_failed {
            break 'verdict format!("handshake with {} failed: {why}", peer.name);
        }
        if quiet_but_sending {
            break 'verdict format!(
                "{} receives our packets but nothing comes back: check UDP {} between this node and {} (firewall, MTU, or the peer's own pods)",
                peer.name,
                peer.underlay.port(),
                peer.underlay.ip()
            );
        }
        format!(
            "nothing on this node stands in the way: {target} is reached through {} at {}",
            peer.name, peer.underlay
        )
    };
    let reachable = ev.iter().all(|c| c.ok);
    Diagnosis {
        target,
        owner,
        reachable,
        verdict,
        evidence: ev,
    }
}

/// Renders a diagnosis for people.
pub fn render(d: &Diagnosis) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {}",
        if d.reachable { "OK" } else { "PROBLEM" },
        d.verdict
    );
    for c in &d.evidence {
        let _ = writeln!(
            out,
            "  [{}] {:<14} {}",
            if c.ok { "ok" } else { "!!" },
            c.what,
            c.detail
        );
    }
    out
}
