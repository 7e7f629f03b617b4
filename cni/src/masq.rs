//! `ipMasq`: one masquerade rule per node subnet for traffic leaving the cluster CIDR.
//!
//! With nftables, the rule lives in its own base chain `masq-<subnet>` of table
//! `ip overlayd-cni`; the chain is created if missing, flushed and refilled in one atomic
//! `nft -f` transaction, so repeating it (every ADD) leaves exactly one rule. Where only
//! iptables exists, `-C` is tried before `-A`. Traffic to the cluster CIDR is never
//! masqueraded. Rules are left in place on DEL: other pods of the subnet use them.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use crate::error::{Error, Result};

/// The nftables table holding the rules.
pub const NFT_TABLE: &str = "overlayd-cni";

/// The chain name for `subnet` (`masq-10.244.1.0-24`).
pub fn chain_name(subnet: Ipv4Net) -> String {
    format!("masq-{}-{}", subnet.network(), subnet.prefix_len())
}

/// The nft script that installs the rule idempotently.
pub fn nft_script(subnet: Ipv4Net, cluster: Ipv4Net) -> String {
    let chain = chain_name(subnet);
    format!(
        "add table ip {NFT_TABLE}\n\
         add chain ip {NFT_TABLE} {chain} {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain ip {NFT_TABLE} {chain}\n\
         add rule ip {NFT_TABLE} {chain} ip saddr {subnet} ip daddr != {cluster} masquerade comment \"overlayd-cni ipMasq\"\n"
    )
}

fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
}

/// Installs the masquerade rule for `subnet` in the current network namespace.
pub fn ensure(subnet: Ipv4Net, cluster: Ipv4Net) -> Result<()> {
    let subnet = subnet.trunc();
    let cluster = cluster.trunc();
    if let Some(nft) = find_tool("nft") {
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
        return Ok(());
    }
    let ipt = find_tool("iptables")
        .ok_or_else(|| Error::Masq("neither nft nor iptables is installed".into()))?;
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
        return Ok(());
    }
    let out = run("-A")?;
    if !out.status.success() {
        return Err(Error::Masq(format!(
            "iptables -A failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
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
    }
}
