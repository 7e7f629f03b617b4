//! Starts the dataplane `--dataplane` and `--encrypt` ask for and puts every kind
//! behind one type: [`Running`] for the daemon's loop, [`DataplaneHandle`] for the
//! peer table, status and metrics. This is the only place that knows there are
//! several.
//!
//! `auto` takes the kernel dataplane unless a flag the node was given tunes the
//! userspace one, and falls back to userspace when the kernel dataplane cannot
//! start (no vxlan support, no nftables); the reason is kept for the log, status
//! and metrics. `--encrypt` takes the encrypted (WireGuard) userspace dataplane
//! whatever `--dataplane` says, and says why. Starting one mode removes what the
//! other left from an earlier run.

use std::net::SocketAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::error::DaemonError;
use super::host::{ClusterRoute, Underlay};
use super::peers::build_fib;
use crate::config::{DaemonArgs, DataplaneChoice};
use crate::dataplane::driver::{DataplaneDriver, DataplaneOptions};
use crate::dataplane::kernel::{KernelConfig, KernelDriver, VxlanSpec};
use crate::dataplane::netlink::{accept_local, disable_ipv6, Netlink};
use crate::dataplane::wg::key::KeyPair;
use crate::dataplane::wg::WgDriver;
use crate::dataplane::wire::MacAddr;
use crate::dataplane::{
    tun, udp, DataplaneHandle, DataplaneMode, EncapConfig, Fib, PathInfo, Peer,
};

/// The running dataplane, whichever it is.
pub(crate) enum Running {
    /// Worker threads on a TUN.
    Userspace(DataplaneDriver),
    /// A programmed kernel vxlan device.
    Kernel(KernelDriver),
    /// WireGuard worker threads on a TUN.
    Encrypted(WgDriver),
}

/// A started dataplane.
pub(crate) struct Started {
    /// What the daemon waits on and stops.
    pub(crate) running: Running,
    /// The feed and the counters.
    pub(crate) handle: DataplaneHandle,
    /// What carries the cluster CIDR, for the host's routes.
    pub(crate) cluster_route: ClusterRoute,
}

impl Running {
    /// Waits until the dataplane fails.
    pub(crate) async fn wait(&mut self) -> Result<(), crate::dataplane::Error> {
        match self {
            Running::Userspace(d) => d.threads.wait().await,
            Running::Kernel(k) => k.wait().await,
            Running::Encrypted(d) => d.threads.wait().await,
        }
    }

    /// Stops the dataplane. The userspace one takes its TUN (and route) with it; the
    /// kernel one leaves its device programmed so traffic flows across a restart,
    /// unless the node `left` the cluster, when it is removed.
    pub(crate) async fn shut_down(self, netlink: &Netlink, args: &DaemonArgs, left: bool) {
        match self {
            Running::Userspace(d) => d.threads.shutdown().await,
            Running::Encrypted(d) => d.threads.shutdown().await,
            Running::Kernel(k) => {
                k.shutdown().await;
                if left {
                    match KernelDriver::remove(netlink, &args.vxlan_device, args.cluster_cidr.all())
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(device = %args.vxlan_device, "removed the vxlan device, its routes and the nftables table")
                        }
                        Err(e) => tracing::warn!("removing the kernel dataplane: {e}"),
                    }
                }
            }
        }
    }
}

/// What the dataplane starts from.
pub(crate) struct Start<'a> {
    /// The daemon's flags.
    pub(crate) args: &'a DaemonArgs,
    /// Netlink in the daemon's namespace.
    pub(crate) netlink: &'a Netlink,
    /// The advertise address and the overlay MTU.
    pub(crate) underlay: Underlay,
    /// The VTEP MAC.
    pub(crate) vtep_mac: MacAddr,
    /// `--subnet`, if fixed.
    pub(crate) fixed_subnet: Option<IpNet>,
    /// The static peers.
    pub(crate) statics: &'a [Peer],
    /// With `--encrypt`: the node's WireGuard key pair.
    pub(crate) wg_keys: Option<KeyPair>,
}

/// Why `--dataplane auto` must take userspace, if a flag says so.
fn needs_userspace(args: &DaemonArgs) -> Option<String> {
    if !args.busy_poll.is_zero() {
        return Some("--busy-poll tunes the userspace dataplane".into());
    }
    if args.workers != 0 {
        return Some("--workers tunes the userspace dataplane".into());
    }
    None
}

/// Starts the dataplane `--dataplane` asks for.
pub(crate) async fn start(s: Start<'_>) -> Result<Started, DaemonError> {
    let (fib, warnings) = build_fib(s.fixed_subnet, s.statics.to_vec());
    for w in warnings {
        tracing::warn!("{w}");
    }
    let fib = Arc::new(fib);
    if let Some(pair) = s.wg_keys.clone() {
        let reason = match s.args.dataplane {
            DataplaneChoice::Userspace => "--encrypt: WireGuard in the userspace dataplane".to_string(),
            DataplaneChoice::Auto => "auto: --encrypt needs the userspace dataplane (overlayd has no kernel WireGuard path; this kernel has no wireguard module)".to_string(),
            DataplaneChoice::Kernel => {
                tracing::warn!("--dataplane kernel with --encrypt: encrypted traffic takes the userspace dataplane (overlayd has no kernel WireGuard path)");
                "--dataplane kernel, but --encrypt: encrypted traffic takes the userspace dataplane (no kernel WireGuard path)".to_string()
            }
        };
        let started = start_encrypted(&s, fib, pair, reason).await?;
        let path = started.handle.path();
        tracing::info!(mode = %path.mode, device = %path.device, reason = %path.reason, "dataplane: {}", path.mode);
        return Ok(started);
    }
    let started = match s.args.dataplane {
        DataplaneChoice::Userspace => {
            start_userspace(&s, fib, "--dataplane userspace".into()).await?
        }
        DataplaneChoice::Kernel => start_kernel(&s, fib, "--dataplane kernel".into())
            .await
            .map_err(|e| crate::dataplane::Error::KernelForced(Box::new(e)))?,
        DataplaneChoice::Auto => match needs_userspace(s.args) {
            Some(why) => start_userspace(&s, fib, format!("auto: {why}")).await?,
            None => match start_kernel(
                &s,
                fib.clone(),
                "auto: a vxlan device could be created".into(),
            )
            .await
            {
                Ok(started) => started,
                Err(e) => {
                    tracing::warn!("--dataplane auto: the kernel dataplane cannot start ({e}); using the userspace dataplane");
                    start_userspace(
                        &s,
                        fib,
                        format!("auto: the kernel dataplane cannot start ({e})"),
                    )
                    .await?
                }
            },
        },
    };
    let path = started.handle.path();
    tracing::info!(mode = %path.mode, device = %path.device, reason = %path.reason, "dataplane: {}", path.mode);
    Ok(started)
}

/// The kernel dataplane on a vxlan device, after removing a TUN route an earlier
/// userspace run left (its TUN died with it). On failure nothing of it is left.
async fn start_kernel(
    s: &Start<'_>,
    fib: Arc<Fib>,
    reason: String,
) -> Result<Started, crate::dataplane::Error> {
    let args = s.args;
    let underlay_index = s
        .netlink
        .link_of_addr(s.underlay.advertise_addr)
        .await?
        .map(|(index, _)| index);
    let spec = VxlanSpec {
        name: args.vxlan_device.clone(),
        vni: args.vni,
        local: s.underlay.advertise_addr,
        port: args.port,
        mtu: s.underlay.mtu,
        mac: s.vtep_mac,
        underlay_index,
    };
    let path = PathInfo {
        mode: DataplaneMode::Kernel,
        device: args.vxlan_device.clone(),
        reason,
    };
    let (handle, feeds) = DataplaneHandle::new(fib, 1, path);
    let config = KernelConfig {
        spec,
        cluster_cidrs: args.cluster_cidr.all().collect(),
    };
    match KernelDriver::start(s.netlink.clone(), config, feeds).await {
        Ok(driver) => Ok(Started {
            running: Running::Kernel(driver),
            handle,
            cluster_route: ClusterRoute::KernelRoutes,
        }),
        Err(e) => {
            if let Err(cleanup) =
                KernelDriver::remove(s.netlink, &args.vxlan_device, args.cluster_cidr.all()).await
            {
                tracing::warn!("removing what the kernel dataplane set up: {cleanup}");
            }
            Err(e)
        }
    }
}

/// The TUN of a userspace dataplane (plain or encrypted), up, with its index, after
/// removing what an earlier kernel-mode run left (its vxlan device, routes and
/// nftables table).
async fn open_tun(s: &Start<'_>) -> Result<(tun::TunDevice, u32), DaemonError> {
    let args = s.args;
    if KernelDriver::remove(s.netlink, &args.vxlan_device, args.cluster_cidr.all()).await? {
        tracing::info!(device = %args.vxlan_device, "removed the kernel dataplane an earlier run left (vxlan device, unreachable route, nftables table)");
    }
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => usize::from(n),
    };
    let tun = tun::open(&args.tun, s.underlay.mtu, workers)?;
    let tun_index = s
        .netlink
        .link_by_name(&args.tun)
        .await?
        .ok_or_else(|| crate::dataplane::Error::Vanished {
            what: "TUN",
            name: args.tun.clone(),
        })?
        .header
        .index;
    if args.cluster_cidr.second.is_none() && args.cluster_cidr.primary.addr().is_ipv4() {
        disable_ipv6(&args.tun)?;
        accept_local(&args.tun)?;
    }
    s.netlink.set_up(tun_index, s.underlay.mtu).await?;
    Ok((tun, tun_index))
}

/// The encrypted dataplane: WireGuard workers on a TUN.
async fn start_encrypted(
    s: &Start<'_>,
    fib: Arc<Fib>,
    pair: KeyPair,
    reason: String,
) -> Result<Started, DaemonError> {
    let args = s.args;
    let (tun, tun_index) = open_tun(s).await?;
    let bind = SocketAddr::new(s.underlay.advertise_addr, args.wg_port);
    let sockets = udp::open_rx_sockets(bind, tun.queues.len())?;
    let workers = tun.queues.len().min(sockets.len()).max(1);
    let path = PathInfo {
        mode: DataplaneMode::Encrypted,
        device: args.tun.clone(),
        reason,
    };
    let (handle, feeds) = DataplaneHandle::new(fib, WgDriver::counter_sets(workers), path);
    let options = DataplaneOptions {
        busy_poll: args.busy_poll,
        mtu: s.underlay.mtu,
    };
    let driver = WgDriver::spawn(tun, sockets, pair, feeds, options)?;
    let handle = handle.with_encryption(driver.control());
    Ok(Started {
        running: Running::Encrypted(driver),
        handle,
        cluster_route: ClusterRoute::Tun(tun_index),
    })
}

/// The userspace dataplane on a TUN.
async fn start_userspace(
    s: &Start<'_>,
    fib: Arc<Fib>,
    reason: String,
) -> Result<Started, DaemonError> {
    let args = s.args;
    let (tun, tun_index) = open_tun(s).await?;
    let bind = SocketAddr::new(s.underlay.advertise_addr, args.port);
    let sockets = udp::open_sockets(bind, tun.queues.len())?;
    let config = EncapConfig {
        vni: args.vni,
        local_mac: s.vtep_mac,
    };
    let options = DataplaneOptions {
        busy_poll: args.busy_poll,
        mtu: s.underlay.mtu,
    };
    let path = PathInfo {
        mode: DataplaneMode::Userspace,
        device: args.tun.clone(),
        reason,
    };
    let (handle, feeds) =
        DataplaneHandle::new(fib, DataplaneDriver::workers_for(&tun, &sockets), path);
    let driver = DataplaneDriver::spawn(tun, sockets, config, feeds, options)?;
    Ok(Started {
        running: Running::Userspace(driver),
        handle,
        cluster_route: ClusterRoute::Tun(tun_index),
    })
}
