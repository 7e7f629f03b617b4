//! `overlayd uninstall`: removes everything the daemon put on the host, for a node
//! leaving overlayd for good. A plain stop, restart or upgrade removes nothing (pods
//! keep their addresses and, in kernel mode, their traffic); this is the explicit
//! step that does.
//!
//! In order: the CNI conflist (the kubelet stops sending pods here) and the plugin;
//! the kernel dataplane (vxlan device with its entries, the unreachable routes of the
//! cluster CIDRs, the nftables table); the TUN and the bridge (with their routes and
//! addresses); the CNI plugin's masquerade tables (nftables; an iptables-only host
//! keeps its rule); then the files overlayd writes in `--run-dir` and `--state-dir`
//! (node.json, the socket, the lease, the VTEP MAC, the WireGuard key, temporary
//! files), and nothing else there. The directories themselves stay when they are
//! mount points (a DaemonSet's hostPath volumes). It leaves the plugin's IPAM store
//! (`dataDir` in the conflist) and its log file, which the daemon never mounts.
//! It refuses to run while the daemon answers on its socket.

use std::path::Path;

use crate::config::DaemonArgs;
use crate::dataplane::kernel::{nft, KernelDriver};
use crate::dataplane::netlink::Netlink;

use super::error::{file_err, DaemonError};

/// The CNI plugin's masquerade table (`overlayd-cni`'s `masq` module).
const MASQ_TABLE: &str = "overlayd-cni";

/// Removes overlayd from this host; returns a line per thing removed.
pub async fn uninstall(args: &DaemonArgs) -> Result<Vec<String>, DaemonError> {
    if crate::ops::admin::status(&args.run_dir).await.is_ok() {
        return Err(DaemonError::StillRunning {
            socket: args.run_dir.join(crate::ops::admin::SOCKET_FILE),
        });
    }
    let mut removed = Vec::new();
    for path in super::cni_install_of(args).uninstall()? {
        removed.push(format!("file {}", path.display()));
    }
    let netlink = Netlink::connect()?;
    if KernelDriver::remove(&netlink, &args.vxlan_device, args.cluster_cidr.all()).await? {
        removed.push(format!(
            "kernel dataplane: device {}, its routes and the nftables table",
            args.vxlan_device
        ));
    }
    for (name, kind) in [(&args.tun, "tun"), (&args.bridge, "bridge")] {
        if netlink.delete_link_of_kind(name, kind).await? {
            removed.push(format!("{kind} device {name}"));
        }
    }
    // The plugin's masquerade rules (`ipMasq` in the conflist), one table per family.
    for family in ["ip", "ip6"] {
        let gone = tokio::task::spawn_blocking(move || nft::delete_table(family, MASQ_TABLE))
            .await
            .map_err(|source| crate::dataplane::Error::TaskEnded {
                what: "nft",
                source,
            })??;
        if gone {
            removed.push(format!("nftables table {family} {MASQ_TABLE}"));
        }
    }
    let run_files = [
        overlayd_node_info::NODE_FILE,
        crate::ops::admin::SOCKET_FILE,
    ];
    let state_files = [
        crate::control::driver::STATE_FILE,
        super::state::VTEP_MAC_FILE,
        crate::dataplane::wg::key::PRIVATE_KEY_FILE,
    ];
    removed.extend(remove_ours(&args.run_dir, &run_files)?);
    removed.extend(remove_ours(&args.state_dir, &state_files)?);
    Ok(removed)
}

/// Removes the files overlayd writes in `dir` (`names`, and temporary files a killed
/// daemon left), then `dir` itself if that leaves it empty and it is no mount point.
/// Nothing else is touched: a `--state-dir` pointed at a shared directory by mistake
/// loses only overlayd's files.
fn remove_ours(dir: &Path, names: &[&str]) -> Result<Vec<String>, DaemonError> {
    let mut removed = Vec::new();
    let temps = crate::fsutil::remove_stale_temps(dir)
        .map_err(file_err("uninstall: temporary files in", dir))?;
    if temps > 0 {
        removed.push(format!("{temps} temporary files in {}", dir.display()));
    }
    for name in names {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(format!("file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_err("uninstall: remove", &path)(e)),
        }
    }
    if std::fs::remove_dir(dir).is_ok() {
        removed.push(format!("dir {}", dir.display()));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_what_overlayd_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        for f in ["lease.json", "vtep_mac", "someone-elses.conf"] {
            std::fs::write(state.join(f), b"x").unwrap();
        }
        let removed = remove_ours(&state, &["lease.json", "vtep_mac", "wg_private_key"]).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(
            state.join("someone-elses.conf").exists(),
            "a foreign file was removed"
        );
        assert!(state.is_dir(), "a dir that is not empty stays");
        std::fs::remove_file(state.join("someone-elses.conf")).unwrap();
        let removed = remove_ours(&state, &["lease.json"]).unwrap();
        assert_eq!(removed, vec![format!("dir {}", state.display())]);
        assert!(!state.exists());
        // A missing dir is nothing to do.
        assert!(remove_ours(&state, &["lease.json"]).unwrap().is_empty());
    }
}
