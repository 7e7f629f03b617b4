//! What `overlayd status` reports ([`StatusReport`] and its parts, also its JSON
//! form) and how it renders them as text.
//!
//! Left out: where the numbers come from ([`crate::ops::live`]) and how the report
//! travels from the daemon to the CLI ([`crate::ops::admin`]).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::dataplane::stats::StatsSnapshot;
use crate::dataplane::wire::MacAddr;
use crate::dataplane::{DataplaneMode, PeerOrigin, PeerState};

/// This node, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Node name.
    pub name: String,
    /// Underlay address peers send to.
    pub advertise_addr: IpAddr,
    /// VXLAN UDP port.
    pub port: u16,
    /// VNI.
    pub vni: u32,
    /// VTEP MAC.
    pub vtep_mac: MacAddr,
    /// Pod subnet, once the node has one.
    pub subnet: Option<IpNet>,
    /// Gateway address on the bridge, once the node has a subnet.
    pub gateway: Option<IpAddr>,
    /// Cluster CIDR.
    pub cluster_cidr: IpNet,
    /// Dual-stack: the IPv6 subnet, once the node has a lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_v6: Option<IpNet>,
    /// Dual-stack: the IPv6 cluster CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr_v6: Option<IpNet>,
    /// Overlay MTU.
    pub mtu: u32,
    /// Bridge name.
    pub bridge: String,
    /// TUN name.
    pub tun: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
}

/// One peer, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// Peer name.
    pub name: String,
    /// Its subnet.
    pub subnet: IpNet,
    /// Dual-stack: its IPv6 subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_v6: Option<IpNet>,
    /// Its underlay address and port.
    pub underlay: SocketAddr,
    /// Its VTEP MAC.
    pub vtep_mac: MacAddr,
    /// Alive, suspect or dead.
    pub state: PeerState,
    /// Static or learned.
    pub origin: PeerOrigin,
    /// Packets sent to it.
    pub tx_packets: u64,
    /// Inner bytes sent to it.
    pub tx_bytes: u64,
    /// Packets received from it.
    pub rx_packets: u64,
    /// Inner bytes received from it.
    pub rx_bytes: u64,
    /// Packets to it dropped (it was dead).
    pub tx_dropped: u64,
    /// Datagrams from it dropped after it was identified.
    pub rx_dropped: u64,
    /// Seconds since the last VXLAN packet from it (to 1 s), if any arrived.
    pub last_heard_secs: Option<u64>,
    /// Encrypted mode: its key and session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg: Option<WgPeerReport>,
}

/// A member gossip knows, with or without a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLine {
    /// Node name.
    pub name: String,
    /// Its gossip address.
    pub gossip: SocketAddr,
    /// Alive, suspect or dead.
    pub state: PeerState,
    /// The subnet it publishes (`None`: no lease yet).
    pub subnet: Option<IpNet>,
}

/// The control plane, as status shows it (absent with a fixed `--subnet`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReport {
    /// The leased subnet this node uses now.
    pub lease: Option<IpNet>,
    /// Whether the node holds a lease it may not use (cut off from its witnesses).
    pub fenced: bool,
    /// Whether every subnet of the cluster CIDR is in use and this node has none.
    pub exhausted: bool,
    /// What this node waits for while it uses no subnet, in words (the lease line,
    /// the log and `/healthz` say the same).
    #[serde(default)]
    pub waiting: Option<String>,
    /// The founder of the cluster and its id, once known.
    #[serde(default)]
    pub founder: Option<String>,
    /// Every member gossip knows, with or without a lease.
    #[serde(default)]
    pub members: Vec<MemberLine>,
    /// The nodes that witness our lease.
    pub witnesses: Vec<String>,
    /// Gossip datagrams dropped as malformed, oversized, from another cluster, or lease
    /// messages from a name gossip does not know.
    pub gossip_dropped: u64,
    /// Ids of the cluster keys in use, signing key first. Empty: gossip is not
    /// authenticated (no `--secret-file`).
    #[serde(default)]
    pub auth_keys: Vec<String>,
    /// Gossip datagrams rejected by the authentication layer, by reason.
    #[serde(default)]
    pub gossip_rejected: std::collections::BTreeMap<String, u64>,
    /// Gossip datagrams sent.
    pub gossip_tx_messages: u64,
    /// Gossip bytes sent (UDP payload).
    pub gossip_tx_bytes: u64,
    /// Gossip datagrams received.
    pub gossip_rx_messages: u64,
    /// Gossip bytes received (UDP payload).
    pub gossip_rx_bytes: u64,
    /// Members gossip knows, by state (with or without a subnet).
    pub alive: usize,
    /// Suspect members.
    pub suspect: usize,
    /// Dead members.
    pub dead: usize,
    /// Subnets of the cluster CIDR in use (ours included).
    pub leases_used: u64,
    /// Subnets of the cluster CIDR in all.
    pub leases_total: u64,
    /// When this report was taken (seconds of daemon uptime).
    pub as_of_secs: u64,
    /// Peers this node has seen declared dead since it started.
    #[serde(default)]
    pub peer_deaths: u64,
    /// Why the lease state cannot be saved, while it cannot: the node keeps its saved
    /// subnet, holds back lease messages and retries every second.
    #[serde(default)]
    pub state_error: Option<String>,
    /// Lease messages held back because the lease state could not be saved.
    #[serde(default)]
    pub lease_messages_held: u64,
    /// The gossip protocol version this node speaks.
    #[serde(default)]
    pub protocol: u8,
    /// The peer versions it accepts, oldest and newest.
    #[serde(default)]
    pub protocol_accepts: (u8, u8),
    /// The format version of the lease state file (`lease.json`) it writes.
    #[serde(default)]
    pub state_format: u32,
    /// Members holding the cluster key whose protocol version this node refuses.
    #[serde(default)]
    pub refused_versions: Vec<RefusedVersionLine>,
}

/// A peer refused for its gossip protocol version, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedVersionLine {
    /// Its gossip address.
    pub from: std::net::SocketAddr,
    /// The version it speaks.
    pub version: u8,
    /// Datagrams refused.
    pub datagrams: u64,
    /// Seconds since the last one, as of the report.
    pub ago_secs: u64,
}

impl ControlReport {
    /// The report for a control-plane snapshot `st`, with `total` subnets in the
    /// cluster CIDR, taken `as_of_secs` into the daemon's life.
    pub(crate) fn from_status(
        st: &crate::control::Status,
        total: u64,
        as_of_secs: u64,
    ) -> ControlReport {
        use crate::control::MemberState as Ctl;
        let count = |state: Ctl| st.members.iter().filter(|m| m.state == state).count();
        let fib_state = |state: Ctl| match state {
            Ctl::Alive => PeerState::Alive,
            Ctl::Suspect => PeerState::Suspect,
            Ctl::Dead => PeerState::Dead,
        };
        ControlReport {
            lease: st.lease,
            fenced: st.fenced,
            exhausted: st.exhausted,
            waiting: st.waiting.as_ref().map(|w| w.to_string()),
            founder: st.founder.as_ref().map(|f| {
                if f.cluster_id == 0 {
                    "founded before founding by agreement (cluster id unknown)".to_string()
                } else {
                    format!("{} (cluster id {:016x})", f.name, f.cluster_id)
                }
            }),
            members: st
                .members
                .iter()
                .map(|m| MemberLine {
                    name: m.name.clone(),
                    gossip: m.gossip,
                    state: fib_state(m.state),
                    subnet: m.subnet,
                })
                .collect(),
            witnesses: st.witnesses.clone(),
            gossip_dropped: st.dropped,
            auth_keys: st.auth_keys.clone(),
            gossip_rejected: st
                .rejected
                .by_reason()
                .iter()
                .map(|(r, n)| (r.to_string(), *n))
                .collect(),
            gossip_tx_messages: st.traffic.tx_datagrams,
            gossip_tx_bytes: st.traffic.tx_bytes,
            gossip_rx_messages: st.traffic.rx_datagrams,
            gossip_rx_bytes: st.traffic.rx_bytes,
            alive: count(Ctl::Alive),
            suspect: count(Ctl::Suspect),
            dead: count(Ctl::Dead),
            leases_used: st.peers.len() as u64 + u64::from(st.lease.is_some()),
            leases_total: total,
            as_of_secs,
            peer_deaths: st.deaths,
            state_error: st.state_error.clone(),
            lease_messages_held: st.held,
            protocol: crate::control::message::version(),
            protocol_accepts: (
                crate::control::message::min_accepted(),
                crate::control::message::max_accepted(),
            ),
            state_format: crate::control::STATE_FORMAT,
            refused_versions: st
                .refused_versions
                .iter()
                .map(|r| RefusedVersionLine {
                    from: r.from,
                    version: r.version,
                    datagrams: r.datagrams,
                    ago_secs: r.ago_secs,
                })
                .collect(),
        }
    }
}

/// Which dataplane carries the node's traffic, and the kernel device's own
/// error counters in kernel mode.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PathReport {
    /// Userspace or kernel.
    pub mode: DataplaneMode,
    /// The TUN or the vxlan device.
    pub device: String,
    /// Why this mode: the flag, or what `--dataplane auto` found.
    pub reason: String,
    /// Kernel mode: the vxlan device's drop and error counters, by name.
    #[serde(default)]
    pub device_errors: std::collections::BTreeMap<String, u64>,
    /// Encrypted mode: our WireGuard port and public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg: Option<WgNodeReport>,
}

/// This node's WireGuard endpoint, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgNodeReport {
    /// UDP port (`--wg-port`).
    pub port: u16,
    /// Public key, base64.
    pub public_key: String,
}

/// A peer's WireGuard key and session, as status shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgPeerReport {
    /// Its public key, base64.
    pub public_key: String,
    /// Session state, handshake age, initiations, failures by reason.
    #[serde(flatten)]
    pub session: crate::dataplane::stats::WgPeerSnapshot,
}

/// The whole status reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// This node.
    pub node: NodeReport,
    /// Gossip and leases, when the subnet comes from a lease.
    pub control: Option<ControlReport>,
    /// Every peer in the forwarding table.
    pub peers: Vec<PeerReport>,
    /// Dataplane counters, drops by reason included.
    pub dataplane: StatsSnapshot,
    /// Which dataplane runs and why.
    #[serde(default)]
    pub path: PathReport,
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Renders a report as text for people.
pub fn render(report: &StatusReport) -> String {
    use std::fmt::Write;
    let n = &report.node;
    let mut out = String::new();
    let _ = writeln!(out, "Node {} (up {}s)", n.name, n.uptime_secs);
    let _ = writeln!(
        out,
        "  underlay   {}:{}  VNI {}  VTEP MAC {}",
        n.advertise_addr, n.port, n.vni, n.vtep_mac
    );
    match (n.subnet, n.gateway) {
        (Some(subnet), Some(gateway)) => {
            let _ = writeln!(
                out,
                "  subnet     {subnet} (gateway {gateway} on {}, cluster {})",
                n.bridge, n.cluster_cidr
            );
            if let (Some(v6), Some(cidr)) = (n.subnet_v6, n.cluster_cidr_v6) {
                let _ = writeln!(
                    out,
                    "  subnet v6  {v6} (gateway {} on {}, cluster {cidr})",
                    crate::dataplane::fib::gateway_of(&v6),
                    n.bridge
                );
            }
        }
        _ => {
            let _ = writeln!(
                out,
                "  subnet     none yet (cluster {}): waiting for a lease",
                n.cluster_cidr
            );
        }
    }
    let _ = writeln!(out, "  mtu        {}", n.mtu);
    let p = &report.path;
    let device = match p.mode {
        DataplaneMode::Userspace | DataplaneMode::Encrypted => "TUN",
        DataplaneMode::Kernel => "vxlan device",
    };
    let _ = writeln!(
        out,
        "  dataplane  {} ({device} {}): {}",
        p.mode, p.device, p.reason
    );
    if let Some(wg) = &p.wg {
        let _ = writeln!(
            out,
            "  wireguard  UDP {}, public key {}",
            wg.port, wg.public_key
        );
    }
    out.push_str(&render_leases(report));
    out.push_str(&render_peers(report));
    let d = &report.dataplane;
    let _ = writeln!(out, "\nDataplane");
    let _ = writeln!(
        out,
        "  sent       {} packets, {}",
        d.tx_packets,
        human_bytes(d.tx_bytes)
    );
    let _ = writeln!(
        out,
        "  received   {} packets, {}",
        d.rx_packets,
        human_bytes(d.rx_bytes)
    );
    let device_errors: Vec<String> = report
        .path
        .device_errors
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if !device_errors.is_empty() {
        let _ = writeln!(
            out,
            "  device     {} ({})",
            device_errors.join(", "),
            report.path.device
        );
    }
    if d.drops.is_empty() {
        let _ = writeln!(out, "  drops      none");
    } else {
        let _ = writeln!(out, "  drops");
        for (reason, count) in &d.drops {
            let _ = writeln!(out, "    {reason:<20} {count}");
        }
    }
    out
}

/// Renders this node's lease and the cluster's lease usage.
pub fn render_leases(report: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(c) = &report.control {
        let lease = match (c.lease, c.fenced, &c.waiting) {
            (Some(l), false, _) => format!("{l}"),
            (_, true, _) => "fenced: cut off from its witnesses, not using its subnet".to_string(),
            (None, _, Some(w)) => format!("none: {w}"),
            (None, _, None) => "none yet".to_string(),
        };
        let _ = writeln!(out, "  lease      {lease}");
        if let Some(f) = &c.founder {
            let _ = writeln!(out, "  founder    {f}");
        }
        if let Some(e) = &c.state_error {
            let _ = writeln!(
                out,
                "  state      NOT SAVED: {e}; keeping the saved subnet, lease messages held ({}), retrying",
                c.lease_messages_held
            );
        }
        let _ = writeln!(
            out,
            "  gossip     {} alive, {} suspect, {} dead ({} deaths seen); {} datagrams dropped",
            c.alive, c.suspect, c.dead, c.peer_deaths, c.gossip_dropped
        );
        let _ = writeln!(
            out,
            "  protocol   gossip protocol {} (accepts {} to {}), lease.json format {}",
            c.protocol, c.protocol_accepts.0, c.protocol_accepts.1, c.state_format
        );
        for r in &c.refused_versions {
            let _ = writeln!(
                out,
                "  REFUSED    {} speaks gossip protocol {}, this node speaks gossip protocol {} (accepts {} to {}): {} datagrams, last {}s ago; upgrade one version at a time",
                r.from, r.version, c.protocol, c.protocol_accepts.0, c.protocol_accepts.1, r.datagrams, r.ago_secs
            );
        }
        let rejected: u64 = c.gossip_rejected.values().sum();
        let why: Vec<String> = c
            .gossip_rejected
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        let rejected = if rejected == 0 {
            "none rejected".to_string()
        } else {
            format!("{rejected} datagrams rejected ({})", why.join(", "))
        };
        match c.auth_keys.split_first() {
            None => {
                let _ = writeln!(
                    out,
                    "  auth       WARNING: gossip is not authenticated; any host on the underlay can join and claim subnets (set --secret-file; `overlayd genkey` makes a key); {rejected}"
                );
            }
            Some((signing, [])) => {
                let _ = writeln!(out, "  auth       cluster key {signing}; {rejected}");
            }
            Some((signing, also)) => {
                let _ = writeln!(
                    out,
                    "  auth       cluster key {signing}, also accepting {} (rotation); {rejected}",
                    also.join(", ")
                );
            }
        }
        let _ = writeln!(
            out,
            "  traffic    sent {} datagrams ({}), received {} ({})",
            c.gossip_tx_messages,
            human_bytes(c.gossip_tx_bytes),
            c.gossip_rx_messages,
            human_bytes(c.gossip_rx_bytes)
        );
        let _ = writeln!(
            out,
            "  leases     {} of {} subnets in use; witnesses: {}",
            c.leases_used,
            c.leases_total,
            if c.witnesses.is_empty() {
                "none".to_string()
            } else {
                c.witnesses.join(", ")
            }
        );
    } else {
        let _ = writeln!(out, "  lease      none: fixed --subnet");
    }
    out
}

/// Renders the peer table.
pub fn render_peers(report: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // Members gossip knows that are not in the forwarding table (no lease yet).
    let waiting: Vec<&MemberLine> = report
        .control
        .as_ref()
        .map(|c| {
            c.members
                .iter()
                .filter(|m| !report.peers.iter().any(|p| p.name == m.name))
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(out, "\nPeers ({})", report.peers.len() + waiting.len());
    let _ = writeln!(
        out,
        "  {:<20} {:<8} {:<7} {:<18} {:<22} {:>10} {:>12} {:>10} {:>12} {:>9} {:>11}",
        "NAME",
        "STATE",
        "ORIGIN",
        "SUBNET",
        "UNDERLAY",
        "TX PKTS",
        "TX BYTES",
        "RX PKTS",
        "RX BYTES",
        "DROPS",
        "LAST HEARD"
    );
    for p in &report.peers {
        let state = serde_json::to_value(p.state)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let origin = serde_json::to_value(p.origin)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<20} {:<8} {:<7} {:<18} {:<22} {:>10} {:>12} {:>10} {:>12} {:>9} {:>11}",
            p.name,
            state,
            origin,
            p.subnet.to_string(),
            p.underlay.to_string(),
            p.tx_packets,
            human_bytes(p.tx_bytes),
            p.rx_packets,
            human_bytes(p.rx_bytes),
            p.tx_dropped + p.rx_dropped,
            p.last_heard_secs
                .map_or("never".to_string(), |s| format!("{s}s ago"))
        );
        if let Some(v6) = p.subnet_v6 {
            let _ = writeln!(out, "  {:<20} {:<8} {:<7} {v6}", "", "", "");
        }
    }
    let wg: Vec<_> = report
        .peers
        .iter()
        .filter_map(|p| p.wg.as_ref().map(|w| (p, w)))
        .collect();
    if !wg.is_empty() {
        let _ = writeln!(out, "\nWireGuard sessions");
        let _ = writeln!(
            out,
            "  {:<20} {:<12} {:<16} {:<45} FAILURES",
            "NAME", "SESSION", "HANDSHAKE", "PUBLIC KEY"
        );
        for (p, w) in wg {
            let handshake = match (w.session.handshake_age_ms, w.session.initiations) {
                (Some(ms), _) => format!("{}s ago", ms / 1000),
                (None, 0) => "never".to_string(),
                (None, n) => format!("{n} tries, none answered"),
            };
            let failures = if w.session.failures.is_empty() {
                "none".to_string()
            } else {
                w.session
                    .failures
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                out,
                "  {:<20} {:<12} {:<16} {:<45} {failures}",
                p.name, w.session.session, handshake, w.public_key
            );
        }
    }
    for m in waiting {
        let state = serde_json::to_value(m.state)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let lease = match m.subnet {
            Some(s) => format!("lease: {s} (not routed yet)"),
            None => "lease: none yet".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<20} {:<8} {:<7} {lease}, gossip {}",
            m.name, state, "gossip", m.gossip
        );
    }
    out
}

/// Node n1 of the unit tests: 198.18.0.1, cluster 10.244.0.0/16, subnet
/// 10.244.1.0/24, bridge `ovl0`, TUN `ovltun0`.
#[cfg(test)]
pub(crate) fn test_node() -> NodeReport {
    NodeReport {
        name: "n1".into(),
        advertise_addr: "198.18.0.1".parse().unwrap(),
        port: 4789,
        vni: 1,
        vtep_mac: "02:00:00:00:00:01".parse().unwrap(),
        subnet: Some("10.244.1.0/24".parse().unwrap()),
        gateway: Some("10.244.1.1".parse().unwrap()),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        subnet_v6: None,
        cluster_cidr_v6: None,
        mtu: 1450,
        bridge: "ovl0".into(),
        tun: "ovltun0".into(),
        uptime_secs: 7,
    }
}

/// Peer n2 of the unit tests, in `state`: subnet 10.244.2.0/24 at 198.18.0.2:4789,
/// heard a second ago, every counter a different value.
#[cfg(test)]
pub(crate) fn test_peer(state: crate::dataplane::PeerState) -> PeerReport {
    PeerReport {
        name: "n2".into(),
        subnet: "10.244.2.0/24".parse().unwrap(),
        subnet_v6: None,
        underlay: "198.18.0.2:4789".parse().unwrap(),
        vtep_mac: "02:00:00:00:00:02".parse().unwrap(),
        state,
        origin: crate::dataplane::PeerOrigin::Gossip,
        tx_packets: 10,
        tx_bytes: 1000,
        rx_packets: 11,
        rx_bytes: 1100,
        tx_dropped: 5,
        rx_dropped: 6,
        last_heard_secs: Some(1),
        wg: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::founding::FoundingWait;
    use crate::control::report::MemberReport;
    use crate::control::{LeaseWait, MemberState, Status};

    /// A node that waits to found, as issue 13 saw it: the peer is alive in gossip
    /// and has no lease either. Status says both, and what the node waits for.
    #[test]
    fn a_node_without_a_lease_shows_its_peers_and_what_it_waits_for() {
        let waiting = LeaseWait::Founding(FoundingWait::Peers {
            present: 1,
            of: 2,
            needed: 2,
            missing: vec!["198.18.0.2:7946".parse().unwrap()],
        });
        let st = Status {
            name: "n1".into(),
            lease: None,
            fenced: false,
            exhausted: false,
            waiting: Some(waiting),
            founder: None,
            members: vec![MemberReport {
                name: "n3".into(),
                gossip: "198.18.0.3:7946".parse().unwrap(),
                state: MemberState::Alive,
                subnet: None,
                subnet_v6: None,
            }],
            witnesses: vec![],
            peers: vec![],
            dropped: 0,
            deaths: 0,
            held: 0,
            state_error: None,
            auth_keys: vec![],
            rejected: Default::default(),
            refused_versions: vec![],
            traffic: Default::default(),
        };
        let control = ControlReport::from_status(&st, 256, 3);
        assert_eq!(control.alive, 1);
        let report = StatusReport {
            node: NodeReport {
                subnet: None,
                gateway: None,
                uptime_secs: 3,
                ..test_node()
            },
            control: Some(control),
            peers: vec![],
            dataplane: Default::default(),
            path: PathReport {
                mode: DataplaneMode::Kernel,
                device: "ovlvx0".into(),
                reason: "--dataplane kernel".into(),
                device_errors: [("tx_dropped".to_string(), 2), ("rx_errors".to_string(), 0)]
                    .into_iter()
                    .collect(),
                wg: None,
            },
        };
        let text = render(&report);
        assert!(
            text.contains("  dataplane  kernel (vxlan device ovlvx0): --dataplane kernel\n"),
            "{text}"
        );
        assert!(
            text.contains("  device     tx_dropped 2 (ovlvx0)\n"),
            "{text}"
        );
        assert!(
            text.contains("  lease      none: waiting to found: 1 of 2 initial peers present, 2 needed (198.18.0.2:7946 not heard from)\n"),
            "{text}"
        );
        assert!(
            text.contains("  gossip     1 alive, 0 suspect, 0 dead"),
            "{text}"
        );
        assert!(text.contains("\nPeers (1)\n"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.contains("n3") && l.contains("alive") && l.contains("lease: none yet")),
            "{text}"
        );
        // The JSON form carries the same reason.
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["control"]["waiting"],
            "waiting to found: 1 of 2 initial peers present, 2 needed (198.18.0.2:7946 not heard from)"
        );
    }

    #[test]
    fn waiting_lines_say_what_is_missing() {
        let cases = [
            (
                LeaseWait::Asking { owner: "n1".into() },
                "asking n1 for a subnet",
            ),
            (
                LeaseWait::Exhausted {
                    used: 256,
                    total: 256,
                },
                "exhausted: 256 of 256 in use",
            ),
            (
                LeaseWait::Founding(FoundingWait::Agreeing {
                    proposer: Some("n2".into()),
                }),
                "waiting to found: agreeing on a founder (n2 proposes)",
            ),
        ];
        for (w, want) in cases {
            assert_eq!(w.to_string(), want);
        }
        let a = LeaseWait::Asking { owner: "n1".into() };
        let b = LeaseWait::Asking { owner: "n2".into() };
        assert!(a.same_reason(&b), "a new owner asked is not a new reason");
    }
}
