//! The nftables ruleset of the kernel dataplane, as `nft -f` text, and the parse of
//! its counters (sans-IO).
//!
//! The kernel's vxlan socket takes any datagram to its port, so anti-spoofing sits
//! in front of it, in table `inet overlayd`, at the input hook:
//! - a datagram to the VXLAN port from a live member goes, by one verdict-map
//!   lookup, to that member's chain; from a dead member it is dropped and counted as
//!   `dead_sender`, from anyone else as `unknown_sender`;
//! - the member's chain accepts it, and counts it as received from that member, only
//!   if the inner frame is IPv4 or IPv6 with a source inside the member's subnet (a
//!   raw payload match at fixed offsets past the UDP header: 8 bytes of VXLAN, 14 of
//!   Ethernet, then the source address at 12 in IPv4 or 8 in IPv6); other IP
//!   sources are `spoofed_source`, other frames `not_ip`.
//!
//! The output hook counts each member's outgoing datagrams with one lookup of a
//! map from address and port to counter. Each hook costs every datagram that
//! crosses it, so the packet path has one rule each way plus the member's chain
//! (measured in docs/kernel-dataplane.md). Counters are named
//! objects, so a membership change rewrites the chains (`flush table`) and keeps
//! the counts; only the first ruleset of a run replaces the whole table, dropping
//! whatever a previous run left. Every script is one nft transaction: the kernel
//! never runs half a ruleset.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// The nftables table (family `inet`) of the kernel dataplane.
pub(crate) const TABLE: &str = "overlayd";

/// The drop counters of the ruleset, by the name status gives their reason.
pub(crate) const DROP_COUNTERS: [&str; 4] =
    ["unknown_sender", "dead_sender", "spoofed_source", "not_ip"];

/// Bit offset, from the start of the UDP header, of the inner EtherType.
const INNER_ETHERTYPE_BITS: u32 = (8 + 8 + 12) * 8;
/// Bit offset of the inner IPv4 source address.
const INNER_V4_SRC_BITS: u32 = (8 + 8 + 14 + 12) * 8;
/// Bit offset of the inner IPv6 source address.
const INNER_V6_SRC_BITS: u32 = (8 + 8 + 14 + 8) * 8;

/// A peer as the ruleset sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// Stable id of the peer within this run (names its chains and counters).
    pub(crate) id: u32,
    /// Its underlay address.
    pub(crate) underlay: IpAddr,
    /// Its VXLAN port.
    pub(crate) port: u16,
    /// Its subnet: inner sources must lie inside it (or inside `subnet_v6`).
    pub(crate) subnet: IpNet,
    /// Dual-stack: its IPv6 subnet.
    pub(crate) subnet_v6: Option<IpNet>,
    /// Accept any inner source (a static peer with `allow-any-source`).
    pub(crate) allow_any_source: bool,
    /// Declared dead: its datagrams are dropped.
    pub(crate) dead: bool,
}

impl Member {
    /// The name of this member's receive counter.
    pub(crate) fn rx_counter(id: u32) -> String {
        format!("rx_p{id}")
    }

    /// The name of this member's transmit counter.
    pub(crate) fn tx_counter(id: u32) -> String {
        format!("tx_p{id}")
    }
}

/// A ruleset to install.
#[derive(Debug, Clone)]
pub(crate) struct Ruleset<'a> {
    /// The VXLAN port this node receives on.
    pub(crate) port: u16,
    /// The members (every peer in the forwarding table).
    pub(crate) members: &'a [Member],
    /// Ids of members in the installed ruleset that are gone now.
    pub(crate) removed: &'a [u32],
    /// Replace the whole table (the first ruleset of a run) rather than its rules.
    pub(crate) fresh: bool,
}

/// Writes the nft match of an inner source inside `subnet`, or None when
/// `subnet` has no bits to match (then any source of the family is inside).
fn inner_source_match(subnet: &IpNet) -> (&'static str, Option<String>) {
    match subnet {
        IpNet::V4(n) => {
            let len = u32::from(n.prefix_len());
            let value = u32::from(n.network()).checked_shr(32 - len).unwrap_or(0);
            let m = (len > 0).then(|| format!("@th,{INNER_V4_SRC_BITS},{len} {value:#x}"));
            ("0x0800", m)
        }
        IpNet::V6(n) => {
            let len = u32::from(n.prefix_len());
            let value = u128::from(n.network()).checked_shr(128 - len).unwrap_or(0);
            let m = (len > 0).then(|| format!("@th,{INNER_V6_SRC_BITS},{len} {value:#x}"));
            ("0x86dd", m)
        }
    }
}

fn addr_match(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

impl Ruleset<'_> {
    /// The `nft -f` script that installs this ruleset in one transaction.
    pub(crate) fn script(&self) -> String {
        let t = format!("inet {TABLE}");
        let mut s = String::new();
        if self.fresh {
            // `add` first so that `delete` cannot fail on a missing table.
            let _ = writeln!(s, "add table {t}\ndelete table {t}");
        }
        // Declare every object (a no-op for those that exist), then empty the
        // chains, drop what is gone and write the rules.
        let _ = writeln!(s, "table {t} {{");
        for name in DROP_COUNTERS {
            let _ = writeln!(s, "\tcounter {name} {{\n\t}}");
        }
        for m in self.members {
            let _ = writeln!(
                s,
                "\tcounter {} {{\n\t}}\n\tcounter {} {{\n\t}}",
                Member::rx_counter(m.id),
                Member::tx_counter(m.id)
            );
            let _ = writeln!(s, "\tchain peer_p{} {{\n\t}}", m.id);
        }
        let _ = writeln!(
            s,
            "\tchain input {{\n\t\ttype filter hook input priority filter - 10; policy accept;\n\t}}"
        );
        let _ = writeln!(
            s,
            "\tchain output {{\n\t\ttype filter hook output priority filter - 10; policy accept;\n\t}}\n}}"
        );
        let _ = writeln!(s, "flush table {t}");
        for id in self.removed {
            let _ = writeln!(s, "delete chain {t} peer_p{id}");
            let _ = writeln!(s, "delete counter {t} {}", Member::rx_counter(*id));
            let _ = writeln!(s, "delete counter {t} {}", Member::tx_counter(*id));
        }
        // Few rules on the packet path: one lookup per datagram each way.
        let vxlan = format!("add rule {t} input udp dport {}", self.port);
        for family in ["ip", "ip6"] {
            let of_family = |dead: bool| {
                self.members
                    .iter()
                    .filter(move |m| m.dead == dead && addr_match(&m.underlay) == family)
            };
            let live: Vec<String> = of_family(false)
                .map(|m| format!("{} : jump peer_p{}", m.underlay, m.id))
                .collect();
            if !live.is_empty() {
                let _ = writeln!(s, "{vxlan} {family} saddr vmap {{ {} }}", live.join(", "));
            }
            let dead: Vec<String> = of_family(true).map(|m| m.underlay.to_string()).collect();
            if !dead.is_empty() {
                let _ = writeln!(
                    s,
                    "{vxlan} {family} saddr {{ {} }} counter name dead_sender drop",
                    dead.join(", ")
                );
            }
            let tx: Vec<String> = self
                .members
                .iter()
                .filter(|m| addr_match(&m.underlay) == family)
                .map(|m| {
                    format!(
                        "{} . {} : \"{}\"",
                        m.underlay,
                        m.port,
                        Member::tx_counter(m.id)
                    )
                })
                .collect();
            if !tx.is_empty() {
                let _ = writeln!(
                    s,
                    "add rule {t} output counter name {family} daddr . udp dport map {{ {} }}",
                    tx.join(", ")
                );
            }
        }
        let _ = writeln!(s, "{vxlan} counter name unknown_sender drop");
        for m in self.members {
            let chain = format!("peer_p{}", m.id);
            let rx = Member::rx_counter(m.id);
            let inner: Vec<String> = if m.allow_any_source {
                vec![format!(
                    "@th,{INNER_ETHERTYPE_BITS},16 {{ 0x0800, 0x86dd }}"
                )]
            } else {
                std::iter::once(m.subnet)
                    .chain(m.subnet_v6)
                    .map(|subnet| {
                        let (ethertype, src) = inner_source_match(&subnet);
                        let src = src.map(|m| format!(" {m}")).unwrap_or_default();
                        format!("@th,{INNER_ETHERTYPE_BITS},16 {ethertype}{src}")
                    })
                    .collect()
            };
            for inner in inner {
                let _ = writeln!(s, "add rule {t} {chain} {inner} counter name {rx} accept");
            }
            let _ = writeln!(
                s,
                "add rule {t} {chain} @th,{INNER_ETHERTYPE_BITS},16 {{ 0x0800, 0x86dd }} counter name spoofed_source drop"
            );
            let _ = writeln!(s, "add rule {t} {chain} counter name not_ip drop");
        }
        s
    }
}

/// The script that removes the table (mode switch, `overlayd leave`): `add` first
/// so that a missing table is no error.
pub(crate) fn remove_script() -> String {
    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// One nftables counter's values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CounterValue {
    /// Packets counted.
    pub(crate) packets: u64,
    /// Bytes counted.
    pub(crate) bytes: u64,
}

/// Counter values by name.
pub(crate) type Counters = HashMap<String, CounterValue>;

#[derive(Deserialize)]
struct Listing {
    nftables: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct CounterObject {
    name: String,
    table: String,
    packets: u64,
    bytes: u64,
}

/// Parses the output of `nft -j list counters table inet overlayd` into values by
/// counter name. Entries that are not counters of our table are skipped.
pub(crate) fn parse_counters(json: &[u8]) -> Result<Counters, String> {
    let listing: Listing =
        serde_json::from_slice(json).map_err(|e| format!("nft -j output is not JSON: {e}"))?;
    let mut out = Counters::new();
    for item in listing.nftables {
        let Some(counter) = item.get("counter") else {
            continue;
        };
        let Ok(c) = serde_json::from_value::<CounterObject>(counter.clone()) else {
            continue;
        };
        if c.table == TABLE {
            out.insert(
                c.name,
                CounterValue {
                    packets: c.packets,
                    bytes: c.bytes,
                },
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u32, underlay: &str, subnet: &str) -> Member {
        Member {
            id,
            underlay: underlay.parse().unwrap(),
            port: 4789,
            subnet: subnet.parse().unwrap(),
            subnet_v6: None,
            allow_any_source: false,
            dead: false,
        }
    }

    #[test]
    fn a_member_is_matched_by_outer_and_inner_source() {
        let members = [member(3, "198.18.0.2", "10.244.2.0/24")];
        let s = Ruleset {
            port: 4789,
            members: &members,
            removed: &[],
            fresh: true,
        }
        .script();
        assert!(s.starts_with("add table inet overlayd\ndelete table inet overlayd\n"));
        assert!(s.contains(
            "add rule inet overlayd input udp dport 4789 ip saddr vmap { 198.18.0.2 : jump peer_p3 }\n"
        ));
        // 10.244.2.0/24: the top 24 bits of the inner source are 0x0af402.
        assert!(
            s.contains("peer_p3 @th,224,16 0x0800 @th,336,24 0xaf402 counter name rx_p3 accept\n"),
            "{s}"
        );
        assert!(s.contains(
            "output counter name ip daddr . udp dport map { 198.18.0.2 . 4789 : \"tx_p3\" }\n"
        ));
        assert!(s.contains("input udp dport 4789 counter name unknown_sender drop\n"));
        assert!(s.ends_with("add rule inet overlayd peer_p3 counter name not_ip drop\n"));
        assert!(!s.contains("dead_sender drop"));
        // The unknown-sender rule comes after the members' lookup.
        let lookup = s.find("saddr vmap").unwrap();
        assert!(s.find("unknown_sender drop").unwrap() > lookup);
    }

    #[test]
    fn dead_any_source_v6_and_removed_members() {
        let mut dead = member(1, "198.18.0.3", "10.244.3.0/24");
        dead.dead = true;
        let mut any = member(2, "198.18.0.4", "10.244.4.0/24");
        any.allow_any_source = true;
        let v6 = member(4, "fd00::5", "fd00:10:244:5::/64");
        let members = [dead, any, v6];
        let s = Ruleset {
            port: 8472,
            members: &members,
            removed: &[7],
            fresh: false,
        }
        .script();
        assert!(!s.contains("delete table"));
        assert!(s.contains("delete chain inet overlayd peer_p7\n"));
        assert!(s.contains("delete counter inet overlayd rx_p7\n"));
        assert!(s.contains(
            "input udp dport 8472 ip saddr { 198.18.0.3 } counter name dead_sender drop"
        ));
        assert!(s.contains("input udp dport 8472 ip saddr vmap { 198.18.0.4 : jump peer_p2 }"));
        assert!(s.contains("input udp dport 8472 ip6 saddr vmap { fd00::5 : jump peer_p4 }"));
        assert!(s.contains("peer_p2 @th,224,16 { 0x0800, 0x86dd } counter name rx_p2 accept"));
        assert!(s.contains(
            "peer_p4 @th,224,16 0x86dd @th,304,64 0xfd00001002440005 counter name rx_p4 accept"
        ));
        assert!(s.contains("ip6 daddr . udp dport map { fd00::5 . 4789 : \"tx_p4\" }"));
    }

    #[test]
    fn counters_parse_from_nft_json() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"counter": {"family": "inet", "name": "unknown_sender", "table": "overlayd", "handle": 4, "packets": 3, "bytes": 150}},
            {"counter": {"family": "inet", "name": "rx_p0", "table": "overlayd", "handle": 5, "packets": 10, "bytes": 1000}},
            {"counter": {"family": "inet", "name": "x", "table": "other", "handle": 6, "packets": 1, "bytes": 1}}]}"#;
        let c = parse_counters(json).unwrap();
        let v = |packets, bytes| CounterValue { packets, bytes };
        assert_eq!(c["unknown_sender"], v(3, 150));
        assert_eq!(c["rx_p0"], v(10, 1000));
        assert!(!c.contains_key("x"));
        assert!(parse_counters(b"not json").is_err());
    }
}
