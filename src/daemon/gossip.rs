//! The control plane as the daemon runs it: the control driver started from the
//! flags, the node's subnet fed from its lease, and the control part of status
//! refreshed once a second.
//!
//! Left out: the protocol itself ([`crate::control`]).

use std::path::PathBuf;
use std::time::Instant;

use ipnet::IpNet;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::error::DaemonError;
use super::host::Underlay;
use super::keys::reload_keys_on_hangup;
use crate::config::{ConfigError, DaemonArgs};
use crate::control::driver::{ControlConfig, ControlDriver, ControlHandle, LeaseStatus};
use crate::control::{KeySet, LeaseWait};
use crate::dataplane::wire::MacAddr;
use crate::ops::live::ControlSource;
use crate::ops::status::ControlReport;

/// The running control plane.
pub(crate) struct Gossip {
    /// Its handle, and the control report refreshed once a second.
    pub(crate) source: ControlSource,
    /// The control task; it ends when told to stop or on an error.
    pub(crate) join: JoinHandle<Result<(), crate::control::Error>>,
}

/// What the control plane starts from besides the flags.
pub(crate) struct GossipStart {
    /// This node's name.
    pub(crate) node_name: String,
    /// Underlay address and MTU.
    pub(crate) underlay: Underlay,
    /// The VTEP MAC.
    pub(crate) vtep_mac: MacAddr,
    /// The cluster keys, if gossip is authenticated.
    pub(crate) keys: Option<KeySet>,
    /// With `--encrypt`: our WireGuard port and public key, to publish.
    pub(crate) wg: Option<crate::control::WgIdentity>,
    /// The SIGHUP stream, for key reloads.
    pub(crate) hangup: tokio::signal::unix::Signal,
    /// When the daemon started (status reports count from it).
    pub(crate) started: Instant,
}

/// Starts the control driver; it stops once `stop` turns true. Lease changes go to
/// `subnet`, and SIGHUP reloads the cluster keys.
pub(crate) async fn start(
    args: &DaemonArgs,
    start: GossipStart,
    stop: watch::Receiver<bool>,
    subnet: watch::Sender<Option<IpNet>>,
) -> Result<Gossip, DaemonError> {
    let seeds = crate::control::driver::parse_peers(&args.peers.join(","), args.gossip_port)
        .map_err(|e| ConfigError::Invalid {
            flag: "--peers",
            value: args.peers.join(","),
            why: format!("cannot resolve: {e}"),
        })?;
    let ours = start.underlay.advertise_addr;
    if let Some(other) = seeds.iter().find(|s| s.ip().is_ipv4() != ours.is_ipv4()) {
        let family = |ip: std::net::IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(ConfigError::Invalid {
            flag: "--peers",
            value: args.peers.join(","),
            why: format!(
                "names {}, an {} address, and this node's underlay (--advertise-addr {ours}) is {}: a node reaches only peers of its underlay's family; give an {} seed, or an --advertise-addr of the seeds' family",
                other.ip(),
                family(other.ip()),
                family(ours),
                family(ours)
            ),
        }
        .into());
    }
    let cfg = ControlConfig {
        name: start.node_name,
        advertise_addr: start.underlay.advertise_addr,
        vxlan_port: args.port,
        vni: args.vni,
        vtep_mac: start.vtep_mac.0,
        cluster_cidr: args.cluster_cidr.primary,
        subnet_len: args.subnet_len,
        second: args.second(),
        seeds,
        bootstrap_expect: args.bootstrap_expect,
        gossip_port: args.gossip_port,
        state_dir: args.state_dir.clone(),
        reclaim_after: args.reclaim_after,
        leave_on_exit: args.leave_on_exit,
        membership: Default::default(),
        keys: start.keys,
        wg: start.wg,
    };
    let mut stopping = stop;
    let (ctl, join) = ControlDriver::spawn(cfg, async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    })
    .await?;
    tokio::spawn(follow_lease(ctl.lease(), subnet));
    let secret_file: Option<PathBuf> = args.secret_file.clone();
    tokio::spawn(reload_keys_on_hangup(
        ctl.clone(),
        secret_file,
        start.hangup,
    ));
    let total = crate::control::subnet_count(args.cluster_cidr.primary, args.subnet_len)
        .unwrap_or(0)
        .min(args.second().map_or(u32::MAX, |s| {
            crate::control::subnet_count(s.cidr, s.subnet_len).unwrap_or(0)
        }));
    let (report_tx, report) = watch::channel(ControlReport {
        leases_total: u64::from(total),
        ..Default::default()
    });
    tokio::spawn(refresh_control_report(
        ctl.clone(),
        report_tx,
        start.started,
        u64::from(total),
    ));
    Ok(Gossip {
        source: ControlSource {
            handle: ctl,
            report,
        },
        join,
    })
}

/// Turns lease updates into the node's subnet feed, logging each change once.
async fn follow_lease(
    mut lease: watch::Receiver<LeaseStatus>,
    subnet: watch::Sender<Option<IpNet>>,
) {
    let mut said: Option<LeaseWait> = None;
    loop {
        let status = lease.borrow_and_update().clone();
        // What the node waits for, once per change (the status lease line and
        // /healthz say the same).
        match &status.waiting {
            Some(w) if !said.as_ref().is_some_and(|s| s.same_reason(w)) => {
                if status.exhausted {
                    tracing::warn!("no subnet: {w}; this node keeps running and asks again");
                } else {
                    tracing::info!("no subnet yet: {w}");
                }
            }
            _ => {}
        }
        said = status.waiting.clone();
        subnet.send_if_modified(|s| {
            if *s == status.subnet {
                return false;
            }
            match status.subnet {
                Some(new) => tracing::info!(subnet = %new, "lease granted"),
                None => tracing::warn!(old = ?s, "lease not usable (not yet granted, released or fenced)"),
            }
            *s = status.subnet;
            true
        });
        if lease.changed().await.is_err() {
            return;
        }
    }
}

/// Refreshes the control-plane part of `overlayd status` once a second, so status and
/// metrics read it without waiting on the control task.
async fn refresh_control_report(
    ctl: ControlHandle,
    report: watch::Sender<ControlReport>,
    started: Instant,
    total: u64,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Ok(st) = ctl.status().await else { return };
        report.send_replace(ControlReport::from_status(
            &st,
            total,
            started.elapsed().as_secs(),
        ));
    }
}
