//! `overlayd uninstall`: removes everything the daemon put on the host, for a node
//! leaving overlayd for good. A plain stop, restart or upgrade removes nothing (pods
//! keep their addresses and, in kernel mode, their traffic); this is the explicit
//! step that does.
//!
//! In order: the CNI conflist (the kubelet stops sending pods here) and the plugin;
//! the kernel dataplane (vxlan device with its entries, the unreachable routes of the
//! cluster CIDRs, the nftables table); the TUN and the bridge (with their routes and
//! addresses); the CNI plugin's masquerade tables (nftables; an iptables-only host
//! keeps its rule); then the files in `--run-dir` and `--state-dir` (node.json, the lease,
//! the VTEP MAC, the WireGuard key). The directories themselves stay when they are
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
    if crate::admin::status(&args.run_dir).await.is_ok() {
        return Err(DaemonError::StillRunning {
            socket: args.run_dir.join(crate::admin::SOCKET_FILE),
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
            .map_err(|e| crate::dataplane::Error::Host(format!("nft task: {e}")))??;
        if gone {
            removed.push(format!("nftables table {family} {MASQ_TABLE}"));
        }
    }
    for dir in [&args.run_dir, &args.state_dir] {
        removed.extend(empty_dir(dir)?);
    }
    Ok(removed)
}

/// Removes everything in `dir`, then `dir` itself unless it is busy (a mount point).
fn empty_dir(dir: &Path) -> Result<Vec<String>, DaemonError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_err("uninstall: read dir", dir)(e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let path = entry.map_err(file_err("uninstall: read dir", dir))?.path();
        let r = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        match r {
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
