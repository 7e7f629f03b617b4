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
//! Left out: how the question and the answer travel ([`crate::ops::admin`]).

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use ipnet::IpNet;

use crate::dataplane::kernel::plan::{self, Change, Entries, RouteEntry};
use crate::dataplane::netlink::Netlink;
use crate::dataplane::{gateway_of, DataplaneMode, PeerState};
use crate::ops::status::{PeerReport, StatusReport};

/// One piece of evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked.
    pub(crate) what: String,
    /// Whether it is as it should be.
    pub(crate) ok: bool,
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
pub(crate) const QUIET: Duration = Duration::from_secs(30);

fn check(evidence: &mut Vec<Check>, what: &str, ok: bool, detail: String) -> bool {
    evidence.push(Check {
        what: what.into(),
        ok,
        detail,
    });
    ok
}

/// What netlink says about this node's side of the path to a target: everything
/// [`judge`] needs beyond the status report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The bridge exists and is up.
    pub(crate) bridge_up: bool,
    /// The dataplane's device (the TUN, or the kernel dataplane's vxlan device)
    /// exists and is up.
    pub(crate) device_up: bool,
    /// The device of ours the kernel routes the target through (the bridge's or the
    /// dataplane device's name), if it is one of them.
    pub(crate) route_dev: Option<String>,
    /// Kernel mode, target on a live peer: the neighbour, FDB and route entries on
    /// the vxlan device, or why they could not be read. `None`: not read.
    pub(crate) kernel_entries: Option<Result<Entries, String>>,
}

/// The dataplane device's kind and name on this node.
fn device(report: &StatusReport) -> (&'static str, &String) {
    match report.path.mode {
        DataplaneMode::Userspace | DataplaneMode::Encrypted => ("TUN", &report.node.tun),
        DataplaneMode::Kernel => ("vxlan device", &report.path.device),
    }
}

/// The peer whose subnet (of either family) holds `target`.
fn owner_peer(report: &StatusReport, target: IpAddr) -> Option<&PeerReport> {
    report
        .peers
        .iter()
        .find(|p| p.subnet.contains(&target) || p.subnet_v6.is_some_and(|s| s.contains(&target)))
}

/// The peer's subnet of `target`'s family.
fn peer_subnet(peer: &PeerReport, target: IpAddr) -> ipnet::IpNet {
    peer.subnet_v6
        .filter(|s| s.contains(&target))
        .unwrap_or(peer.subnet)
}

/// Asks netlink for the [`Facts`] about `target` on this node, whose status is
/// `report`.
pub(crate) async fn gather(target: IpAddr, report: &StatusReport, netlink: &Netlink) -> Facts {
    let node = &report.node;
    let bridge = netlink.link_by_name(&node.bridge).await.ok().flatten();
    let (_, device_name) = device(report);
    let dev = netlink.link_by_name(device_name).await.ok().flatten();
    let route = netlink.route_get(target).await.ok().flatten();
    let route_dev = route.and_then(|idx| {
        [(bridge.as_ref(), &node.bridge), (dev.as_ref(), device_name)]
            .into_iter()
            .find(|(l, _)| l.is_some_and(|l| l.header.index == idx))
            .map(|(_, name)| name.clone())
    });
    let mut kernel_entries = None;
    let peer = owner_peer(report, target).filter(|p| p.state != PeerState::Dead);
    if let (DataplaneMode::Kernel, Some(_), Some(link)) = (report.path.mode, peer, dev.as_ref()) {
        let cidrs: Vec<_> = std::iter::once(node.cluster_cidr)
            .chain(node.cluster_cidr_v6)
            .collect();
        kernel_entries = Some(
            netlink
                .vxlan_entries(link.header.index, node.port, &cidrs)
                .await
                .map_err(|e| e.to_string()),
        );
    }
    Facts {
        bridge_up: bridge
            .as_ref()
            .is_some_and(crate::dataplane::netlink::is_up),
        device_up: dev.as_ref().is_some_and(crate::dataplane::netlink::is_up),
        route_dev,
        kernel_entries,
    }
}

/// Runs the checks for `target` on this node, whose status is `report`; `netlink`
/// answers for the devices and the kernel's route.
pub(crate) async fn diagnose(
    target: IpAddr,
    report: &StatusReport,
    netlink: &Netlink,
) -> Diagnosis {
    let facts = gather(target, report, netlink).await;
    judge(target, report, &facts)
}

/// The neighbour, FDB entry and route the kernel dataplane programs for `peer`'s
/// `subnet`.
fn peer_entries(peer: &PeerReport, subnet: IpNet) -> Entries {
    let gateway = gateway_of(&subnet);
    let mut want = Entries::default();
    want.neighbours.insert((gateway, peer.vtep_mac));
    want.fdb.insert((peer.vtep_mac, peer.underlay));
    want.routes.insert(RouteEntry {
        dst: subnet,
        via: gateway,
        src: None,
    });
    want
}

/// What a missing entry (an addition [`plan::missing`] names) looks like in the
/// evidence.
fn lacks(add: &Change) -> String {
    match add {
        Change::AddNeighbour(ip, mac) | Change::DelNeighbour(ip, mac) => {
            format!("no neighbour entry {ip} lladdr {mac}")
        }
        Change::AddFdb(mac, at) | Change::DelFdb(mac, at) => format!("no FDB entry {mac} dst {at}"),
        Change::AddRoute(r) | Change::DelRoute(r) => {
            format!("no route {} via {} onlink", r.dst, r.via)
        }
    }
}

/// The verdict on `target` from this node's status and the [`Facts`]: the checks in
/// order, the first that fails deciding.
pub(crate) fn judge(target: IpAddr, report: &StatusReport, facts: &Facts) -> Diagnosis {
    let mut ev = Vec::new();
    let (owner, verdict) = judge_node(target, report, facts, &mut ev);
    Diagnosis {
        target,
        owner,
        reachable: ev.iter().all(|c| c.ok),
        verdict,
        evidence: ev,
    }
}

fn up_or_down(up: bool) -> &'static str {
    if up {
        "is up"
    } else {
        "is missing or down"
    }
}

/// This node's side: the cluster CIDR, its lease, its bridge and device; then the
/// owner of the target's subnet, this node ([`judge_local`]) or a peer
/// ([`judge_peer`]). Returns the owner and the verdict.
fn judge_node(
    target: IpAddr,
    report: &StatusReport,
    facts: &Facts,
    ev: &mut Vec<Check>,
) -> (Option<String>, String) {
    let node = &report.node;
    let cidrs = match node.cluster_cidr_v6 {
        Some(v6) => format!("{}, {v6}", node.cluster_cidr),
        None => node.cluster_cidr.to_string(),
    };
    let in_cluster = node.cluster_cidr.contains(&target)
        || node.cluster_cidr_v6.is_some_and(|c| c.contains(&target));
    if !check(
        ev,
        "cluster CIDR",
        in_cluster,
        format!("{target} in {cidrs}"),
    ) {
        return (
            None,
            format!("{target} is not a pod address of this cluster ({cidrs})"),
        );
    }
    if let (Some(c), None) = (&report.control, node.subnet) {
        let why = c
            .waiting
            .clone()
            .unwrap_or_else(|| "no subnet yet".to_string());
        check(ev, "this node's lease", false, why.clone());
        return (
            None,
            format!(
                "this node has no subnet yet, so it has no pods and no routes into the overlay: {why}"
            ),
        );
    }
    check(
        ev,
        "bridge",
        facts.bridge_up,
        format!("{} {}", node.bridge, up_or_down(facts.bridge_up)),
    );
    let (device_kind, device_name) = device(report);
    check(
        ev,
        device_kind,
        facts.device_up,
        format!("{} {}", device_name, up_or_down(facts.device_up)),
    );
    // The node's subnet of the target's family (dual-stack: the IPv6 one for an IPv6
    // address).
    let own = if node.subnet_v6.is_some() && target.is_ipv6() {
        node.subnet_v6
    } else {
        node.subnet
    };
    if let Some(own) = own.filter(|s| s.contains(&target)) {
        return (
            Some(node.name.clone()),
            judge_local(target, report, facts, own, ev),
        );
    }
    match owner_peer(report, target) {
        Some(peer) => (
            Some(peer.name.clone()),
            judge_peer(target, report, facts, peer, ev),
        ),
        None => {
            check(
                ev,
                "owner",
                false,
                "no node's lease or static peer covers this address".into(),
            );
            let fate = if report.path.mode == DataplaneMode::Kernel {
                "it meets the cluster's unreachable route (ICMP unreachable)"
            } else {
                "it is dropped as unknown_subnet"
            };
            (
                None,
                format!("no node owns the subnet of {target}: traffic to {fate}"),
            )
        }
    }
}

/// A target in this node's own subnet: a local pod on the bridge.
fn judge_local(
    target: IpAddr,
    report: &StatusReport,
    facts: &Facts,
    own: ipnet::IpNet,
    ev: &mut Vec<Check>,
) -> String {
    let node = &report.node;
    check(
        ev,
        "owner",
        true,
        format!("this node ({}) owns {own}", node.name),
    );
    let route_dev = facts.route_dev.as_deref();
    let ok = route_dev == Some(node.bridge.as_str());
    check(
        ev,
        "kernel route",
        ok,
        format!("{target} via {}", route_dev.unwrap_or("no device of ours")),
    );
    if !facts.bridge_up {
        format!(
            "the pod would be local, but bridge {} is missing or down",
            node.bridge
        )
    } else if !ok {
        format!(
            "the kernel does not route {target} to bridge {}",
            node.bridge
        )
    } else {
        format!(
            "{target} is a local pod on this node's bridge {}: check the pod's own interface",
            node.bridge
        )
    }
}

/// A target in a peer's subnet: the peer's state, the kernel's entries and route, the
/// WireGuard session, and whether the peer answers.
fn judge_peer(
    target: IpAddr,
    report: &StatusReport,
    facts: &Facts,
    peer: &PeerReport,
    ev: &mut Vec<Check>,
) -> String {
    let kernel = report.path.mode == DataplaneMode::Kernel;
    let (device_kind, device_name) = device(report);
    let subnet = peer_subnet(peer, target);
    check(
        ev,
        "owner",
        true,
        format!("{} owns {subnet} at {}", peer.name, peer.underlay),
    );
    let alive = peer.state != PeerState::Dead;
    check(
        ev,
        "peer state",
        alive,
        format!("{} is {:?}", peer.name, peer.state).to_lowercase(),
    );
    let mut entries_ok = true;
    if let (true, Some(have)) = (kernel && alive, facts.kernel_entries.as_ref()) {
        let gateway = gateway_of(&subnet);
        let problems = match have {
            Ok(have) => plan::missing(have, &peer_entries(peer, subnet))
                .iter()
                .map(lacks)
                .collect(),
            Err(e) => vec![format!("cannot read them: {e}")],
        };
        entries_ok = problems.is_empty();
        let detail = if entries_ok {
            format!(
                "neighbour {gateway} lladdr {}, FDB {} dst {}, route {subnet} via {gateway} onlink",
                peer.vtep_mac, peer.vtep_mac, peer.underlay
            )
        } else {
            problems.join("; ")
        };
        check(ev, "kernel entries", entries_ok, detail);
    }
    let route_dev = facts.route_dev.as_deref();
    let routed = route_dev == Some(device_name.as_str());
    check(
        ev,
        "kernel route",
        routed,
        format!("{target} via {}", route_dev.unwrap_or("no device of ours")),
    );
    let handshake_failed = handshake(peer, ev);
    let quiet_but_sending = answers(peer, ev);
    if !alive {
        let fate = if kernel {
            "it meets the cluster's unreachable route (ICMP unreachable)"
        } else {
            "it is dropped as peer_dead"
        };
        format!(
            "{} (owner of {}) is declared dead: traffic to {fate}",
            peer.name, peer.subnet
        )
    } else if !facts.device_up {
        format!(
            "{device_kind} {device_name} is missing or down: nothing leaves this node for the overlay"
        )
    } else if !entries_ok {
        format!(
            "the vxlan device {device_name} lacks {}'s entries: the daemon re-adds them within 10 s; if not, see its log",
            peer.name
        )
    } else if !routed {
        format!("the kernel does not route {target} through {device_name}: the route is missing or shadowed")
    } else if let Some(why) = handshake_failed {
        format!("handshake with {} failed: {why}", peer.name)
    } else if quiet_but_sending {
        format!(
            "{} receives our packets but nothing comes back: check UDP {} between this node and {} (firewall, MTU, or the peer's own pods)",
            peer.name,
            peer.underlay.port(),
            peer.underlay.ip()
        )
    } else {
        format!(
            "nothing on this node stands in the way: {target} is reached through {} at {}",
            peer.name, peer.underlay
        )
    }
}

/// Encrypted: the WireGuard session with `peer`. Returns why its handshake failed.
fn handshake(peer: &PeerReport, ev: &mut Vec<Check>) -> Option<String> {
    let s = &peer.wg.as_ref()?.session;
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
    check(ev, "handshake", why.is_none(), detail);
    why
}

/// Whether `peer` answers: true when we send to it and nothing has come back for
/// [`QUIET`].
fn answers(peer: &PeerReport, ev: &mut Vec<Check>) -> bool {
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
    check(ev, "answers", !quiet_but_sending, detail);
    quiet_but_sending
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::PathReport;

    /// Node n1 (subnet 10.244.1.0/24, fixed) in `mode`, with peer n2 owning
    /// 10.244.2.0/24 in `state`.
    fn report(mode: DataplaneMode, state: PeerState) -> StatusReport {
        StatusReport {
            node: crate::ops::status::test_node(),
            control: None,
            peers: vec![crate::ops::status::test_peer(state)],
            dataplane: Default::default(),
            path: PathReport {
                mode,
                device: "ovlvx0".into(),
                reason: "test".into(),
                device_errors: Default::default(),
                wg: None,
            },
        }
    }

    /// Facts with the bridge and device up and the route through `route_dev`;
    /// `entries`: `Some(true)`, the kernel has n2's entries; `Some(false)`, it has
    /// none; `None`, not read.
    fn facts(route_dev: &str, entries: Option<bool>) -> Facts {
        let n2 = crate::ops::status::test_peer(PeerState::Alive);
        Facts {
            bridge_up: true,
            device_up: true,
            route_dev: Some(route_dev.into()),
            kernel_entries: entries.map(|all| {
                Ok(if all {
                    peer_entries(&n2, n2.subnet)
                } else {
                    Entries::default()
                })
            }),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_healthy_path_to_a_peer_is_reachable() {
        let r = report(DataplaneMode::Kernel, PeerState::Alive);
        let d = judge(ip("10.244.2.7"), &r, &facts("ovlvx0", Some(true)));
        assert!(d.reachable, "{d:?}");
        assert_eq!(d.owner.as_deref(), Some("n2"));
        assert!(
            d.verdict
                .starts_with("nothing on this node stands in the way"),
            "{}",
            d.verdict
        );
        let whats: Vec<&str> = d.evidence.iter().map(|c| c.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "cluster CIDR",
                "bridge",
                "vxlan device",
                "owner",
                "peer state",
                "kernel entries",
                "kernel route",
                "answers"
            ]
        );
    }

    #[test]
    fn the_first_failed_check_decides() {
        let kernel = report(DataplaneMode::Kernel, PeerState::Alive);
        let cases: Vec<(StatusReport, &str, Facts, &str)> = vec![
            (kernel.clone(), "192.0.2.1", facts("ovlvx0", Some(true)), "is not a pod address of this cluster"),
            (kernel.clone(), "10.244.9.9", facts("ovlvx0", None), "no node owns the subnet of 10.244.9.9: traffic to it meets the cluster's unreachable route"),
            (report(DataplaneMode::Userspace, PeerState::Alive), "10.244.9.9", facts("ovltun0", None), "it is dropped as unknown_subnet"),
            (report(DataplaneMode::Kernel, PeerState::Dead), "10.244.2.7", facts("ovlvx0", None), "n2 (owner of 10.244.2.0/24) is declared dead"),
            (kernel.clone(), "10.244.2.7", Facts { device_up: false, ..facts("ovlvx0", Some(true)) }, "vxlan device ovlvx0 is missing or down"),
            (kernel.clone(), "10.244.2.7", facts("ovlvx0", Some(false)), "the vxlan device ovlvx0 lacks n2's entries"),
            (kernel.clone(), "10.244.2.7", facts("eth0", Some(true)), "the kernel does not route 10.244.2.7 through ovlvx0"),
            (kernel.clone(), "10.244.1.5", facts("ovl0", None), "10.244.1.5 is a local pod on this node's bridge ovl0"),
            (kernel.clone(), "10.244.1.5", facts("ovlvx0", None), "the kernel does not route 10.244.1.5 to bridge ovl0"),
            (kernel, "10.244.1.5", Facts { bridge_up: false, ..facts("ovl0", None) }, "the pod would be local, but bridge ovl0 is missing or down"),
        ];
        for (r, target, f, want) in cases {
            let d = judge(ip(target), &r, &f);
            assert!(d.verdict.contains(want), "{target}: {}", d.verdict);
            let local_ok = want.contains("is a local pod");
            assert_eq!(d.reachable, local_ok, "{target}: {d:?}");
        }
    }

    #[test]
    fn a_peer_that_never_answers_points_at_the_underlay() {
        let mut r = report(DataplaneMode::Userspace, PeerState::Alive);
        r.peers[0].last_heard_secs = None;
        let d = judge(ip("10.244.2.7"), &r, &facts("ovltun0", None));
        assert!(!d.reachable);
        assert!(
            d.verdict
                .starts_with("n2 receives our packets but nothing comes back: check UDP 4789"),
            "{}",
            d.verdict
        );
    }
}
