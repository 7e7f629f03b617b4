//! `ipMasq`: one masquerade rule per node subnet for traffic leaving the cluster CIDR.
//!
//! With nftables, the rule lives in its own base chain `masq-<subnet>` of table
//! `ip overlayd-cni` (`ip6 overlayd-cni` for an IPv6 subnet); the chain is created if missing, flushed and refilled in one atomic
//! `nft -f` transaction, so repeating it leaves exactly one rule. Exec'ing `nft` costs
//! several milliseconds, so each ADD first asks the kernel over nfnetlink whether the rule
//! (recognised by its comment, which names subnet and cluster CIDR) is already there, and
//! runs `nft` only when it is not. Where only iptables exists, `-C` is tried before `-A`
//! (`ip6tables` for IPv6).
//! Traffic to the cluster CIDR is never masqueraded. Rules are left in place on DEL:
//! other pods of the subnet use them.

use std::io::{self, Write};
use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::error::{Error, Result};

/// The nftables table holding the rules.
pub const NFT_TABLE: &str = "overlayd-cni";

/// The nftables family of `subnet`'s table and matches: `ip` or `ip6`.
pub fn nft_family(subnet: IpNet) -> &'static str {
    if subnet.addr().is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

/// The chain name for `subnet` (`masq-10.244.1.0-24`, `masq-fd00_10_244_1__-64`: nft
/// names take no `:`).
pub fn chain_name(subnet: IpNet) -> String {
    let net = subnet.network().to_string().replace(':', "_");
    format!("masq-{net}-{}", subnet.prefix_len())
}

/// The rule's comment; it identifies the exact rule when the kernel is asked.
pub fn rule_comment(subnet: IpNet, cluster: IpNet) -> String {
    format!("overlayd-cni ipMasq {subnet} not {cluster}")
}

/// The nft script that installs the rule idempotently.
pub fn nft_script(subnet: IpNet, cluster: IpNet) -> String {
    let chain = chain_name(subnet);
    let comment = rule_comment(subnet, cluster);
    let f = nft_family(subnet);
    format!(
        "add table {f} {NFT_TABLE}\n\
         add chain {f} {NFT_TABLE} {chain} {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain {f} {NFT_TABLE} {chain}\n\
         add rule {f} {NFT_TABLE} {chain} {f} saddr {subnet} {f} daddr != {cluster} masquerade comment \"{comment}\"\n"
    )
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// Builds an `NFT_MSG_GETRULE` dump request for one chain of an `ip` (`v4`) or `ip6`
/// table.
pub fn getrule_request(v4: bool, table: &str, chain: &str, seq: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    for (kind, value) in [(NFTA_RULE_TABLE, table), (NFTA_RULE_CHAIN, chain)] {
        let len = 4 + value.len() + 1;
        attrs.extend_from_slice(&(len as u16).to_ne_bytes());
        attrs.extend_from_slice(&kind.to_ne_bytes());
        attrs.extend_from_slice(value.as_bytes());
        attrs.push(0);
        attrs.resize(attrs.len().next_multiple_of(4), 0);
    }
    let total = 16 + 4 + attrs.len();
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE).to_ne_bytes());
    let flags: u16 = netlink_packet_core::NLM_F_REQUEST | netlink_packet_core::NLM_F_DUMP;
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family NFPROTO_IPV4/6, version NFNETLINK_V0, resource id 0.
    let family = if v4 {
        libc::NFPROTO_IPV4
    } else {
        libc::NFPROTO_IPV6
    };
    msg.extend_from_slice(&[family as u8, 0, 0, 0]);
    msg.extend_from_slice(&attrs);
    msg
}

/// True if the chain `chain` of table `ip overlayd-cni` (`ip6` unless `v4`) holds a rule
/// whose bytes contain `marker` (the comment). Errors mean "cannot tell"; the caller
/// then runs `nft`.
fn rule_present(v4: bool, chain: &str, marker: &str) -> io::Result<bool> {
    use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    sock.send(&getrule_request(v4, NFT_TABLE, chain, 1), 0)?;
    let mut found = false;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        let n = sock.recv(&mut buf, 0)?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or_default());
            if len < 16 || off + len > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated nfnetlink reply",
                ));
            }
            let payload = &buf[off + 16..off + len];
            match kind {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => {
                    let code = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
                        .unwrap_or(0);
                    return match code {
                        0 => Ok(found),
                        // No such table or chain: the rule is certainly absent.
                        c if -c == libc::ENOENT => Ok(false),
                        c => Err(io::Error::from_raw_os_error(-c)),
                    };
                }
                k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                    found |= payload
                        .windows(marker.len())
                        .any(|w| w == marker.as_bytes());
                }
                _ => {}
            }
            off += len.next_multiple_of(4);
        }
    }
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The rule was already in place; nothing was run.
    Present,
    /// The rule was (re)installed with `nft` or `iptables`.
    Installed,
}

fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
}

/// Installs the masquerade rule for `subnet` in the current network namespace, unless
/// it is already there.
pub fn ensure(subnet: IpNet, cluster: IpNet) -> Result<Outcome> {
    let subnet = subnet.trunc();
    let cluster = cluster.trunc();
    let v4 = subnet.addr().is_ipv4();
    if let Some(nft) = find_tool("nft") {
        if rule_present(v4, &chain_name(subnet), &rule_comment(subnet, cluster)).unwrap_or(false) {
            return Ok(Outcome::Present);
        }
        let mut child = Command::new(&nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Masq(format!("cannot run {}: {e}", nft.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(nft_script(subnet, cluster).as_bytes())
                .map_err(|e| Error::Masq(format!("writing to nft: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::Masq(format!("waiting for nft: {e}")))?;
        if !out.status.success() {
            return Err(Error::Masq(format!(
                "nft failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        return Ok(Outcome::Installed);
    }
    let tool = if v4 { "iptables" } else { "ip6tables" };
    let ipt = find_tool(tool)
        .ok_or_else(|| Error::Masq(format!("neither nft nor {tool} is installed")))?;
    let subnet_s = subnet.to_string();
    let cluster_s = cluster.to_string();
    let rule = [
        "-s",
        &subnet_s,
        "!",
        "-d",
        &cluster_s,
        "-m",
        "comment",
        "--comment",
        "overlayd-cni ipMasq",
        "-j",
        "MASQUERADE",
    ];
    let run = |op: &str| {
        Command::new(&ipt)
            .args(["-w", "-t", "nat", op, "POSTROUTING"])
            .args(rule)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| Error::Masq(format!("cannot run {}: {e}", ipt.display())))
    };
    if run("-C")?.status.success() {
        return Ok(Outcome::Present);
    }
    let out = run("-A")?;
    if !out.status.success() {
        return Err(Error::Masq(format!(
            "{tool} -A failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(Outcome::Installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_has_one_rule_and_excludes_cluster() {
        let s = nft_script(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        );
        assert_eq!(s.matches("add rule").count(), 1);
        assert!(s.contains("flush chain ip overlayd-cni masq-10.244.1.0-24"));
        assert!(s.contains("ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade"));
        assert!(s.contains("comment \"overlayd-cni ipMasq 10.244.1.0/24 not 10.244.0.0/16\""));
        let s6 = nft_script(
            "fd00:10:244:1::/64".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        );
        assert!(s6.contains("add table ip6 overlayd-cni"), "{s6}");
        assert!(
            s6.contains("flush chain ip6 overlayd-cni masq-fd00_10_244_1__-64"),
            "{s6}"
        );
        assert!(
            s6.contains("ip6 saddr fd00:10:244:1::/64 ip6 daddr != fd00:10:244::/56 masquerade"),
            "{s6}"
        );
    }

    #[test]
    fn getrule_request_layout() {
        let m = getrule_request(true, "overlayd-cni", "masq-10.244.1.0-24", 7);
        assert_eq!(m.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0a07);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(m[16], libc::NFPROTO_IPV4 as u8);
        // First attribute: NFTA_RULE_TABLE, NUL-terminated name.
        assert_eq!(u16::from_ne_bytes(m[22..24].try_into().unwrap()), 1);
        assert_eq!(&m[24..37], b"overlayd-cni\0");
    }
}
