//! `run(config, shutdown)`: brings the node up and forwards until `shutdown` resolves.
//!
//! Start-up order: check the flags, resolve what depends on the host (node name,
//! advertise address, MTU), load or create the VTEP MAC, set up the bridge and its
//! gateway address, enable forwarding, create the TUN and route the cluster CIDR
//! through it, open the VXLAN socket, start the dataplane, then publish `node.json`
//! and the status socket. On shutdown the TUN (and with it the cluster route) goes
//! away with the process; the bridge, its address and `node.json` stay, so pods keep
//! their addresses across a restart.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;

use crate::config::{ConfigError, DaemonArgs, MetricsAddr};
use crate::control::driver::{ControlConfig, ControlDriver, ControlHandle, LeaseStatus};
use crate::control::{KeySet, PeerInfo};
use crate::dataplane::driver::{DataplaneDriver, DataplaneOptions};
use crate::dataplane::encap::{OVERHEAD_V4, OVERHEAD_V6};
use crate::dataplane::netlink::{accept_local, disable_ipv6, enable_forwarding, Netlink};
use crate::dataplane::wire::MacAddr;
use crate::dataplane::{tun, udp};
use crate::dataplane::{EncapConfig, Fib, Peer, PeerOrigin, PeerState};
use crate::fsutil::write_atomic;
use crate::node::{NodeInfo, NODE_FILE};
use crate::status::{self, ControlReport, NodeReport, StatusSource};

/// File inside `--state-dir` that keeps the VTEP MAC across restarts.
pub const VTEP_MAC_FILE: &str = "vtep_mac";

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The flags do not make a valid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Device setup or forwarding failed.
    #[error(transparent)]
    Dataplane(#[from] crate::dataplane::Error),
    /// The control plane could not start, or stopped with an error.
    #[error(transparent)]
    Control(#[from] crate::control::Error),
    /// `--install-cni` failed.
    #[error(transparent)]
    InstallCni(#[from] crate::cni_install::InstallError),
    /// A listener could not be bound.
    #[error("{what} {addr}: cannot listen: {source}")]
    Listen {
        /// The flag that named the address.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A state or runtime file could not be read or written.
    #[error("{what} {path}: {source}")]
    File {
        /// What the file is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_path_buf();
    move |source| DaemonError::File { what, path, source }
}

/// The first host address of `subnet`: the node's gateway.
pub fn gateway_of(subnet: &IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + 1).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + 1).into()),
    }
}

/// The node's name when no `--node-name` is given: the kernel hostname.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Loads the VTEP MAC kept in the state dir, or creates and keeps one. An explicit
/// `--vtep-mac` wins and is kept too.
fn vtep_mac(state_dir: &Path, given: Option<MacAddr>) -> Result<MacAddr, DaemonError> {
    let path = state_dir.join(VTEP_MAC_FILE);
    let mac = match given {
        Some(mac) => mac,
        None => match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|e| DaemonError::File {
                what: "VTEP MAC file",
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{e}; delete it to pick a new MAC"),
                ),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                MacAddr::random_local(&mut rand::rng())
            }
            Err(e) => return Err(file_err("VTEP MAC file", &path)(e)),
        },
    };
    write_atomic(&path, format!("{mac}\n").as_bytes(), 0o600, 0o700)
        .map_err(file_err("VTEP MAC file", &path))?;
    Ok(mac)
}

/// Builds the peers of the forwarding table from `--static-peer`.
pub fn static_peers(args: &DaemonArgs) -> Vec<Peer> {
    args.static_peers
        .iter()
        .map(|p| Peer {
            name: format!("static:{}", p.subnet),
            subnet: p.subnet,
            underlay: p.addr,
            vtep_mac: p.mac,
            state: PeerState::Alive,
            origin: PeerOrigin::Static,
            allow_any_source: p.allow_any_source,
            stats: Arc::default(),
        })
        .collect()
}

/// Builds the forwarding table from static and learned peers. A peer whose subnet
/// overlaps our own or an earlier peer's (static peers come first), or that shares an
/// earlier peer's underlay address, is left out and named in the returned warnings,
/// so one bad announcement never takes down forwarding to everyone else.
pub fn build_fib(own: Option<IpNet>, peers: Vec<Peer>) -> (Fib, Vec<String>) {
    let mut kept: Vec<Peer> = Vec::with_capacity(peers.len());
    let mut warnings = Vec::new();
    for peer in peers {
        if let Some(own) = own.filter(|own| crate::config::overlaps(own, &peer.subnet)) {
            warnings.push(format!(
                "ignoring peer {}: its subnet {} overlaps ours ({own})",
                peer.name, peer.subnet
            ));
            continue;
        }
        if let Some(other) = kept
            .iter()
            .find(|k| crate::config::overlaps(&k.subnet, &peer.subnet))
        {
            warnings.push(format!(
                "ignoring peer {}: its subnet {} overlaps {}'s {}",
                peer.name, peer.subnet, other.name, other.subnet
            ));
            continue;
        }
        if let Some(other) = kept.iter().find(|k| k.underlay.ip() == peer.underlay.ip()) {
            warnings.push(format!(
                "ignoring peer {}: underlay address {} is {}'s",
                peer.name,
                peer.underlay.ip(),
                other.name
            ));
            continue;
        }
        kept.push(peer);
    }
    // Overlaps and shared addresses were filtered above, so this cannot fail.
    let fib = Fib::new(kept).unwrap_or_default();
    (fib, warnings)
}

/// The node's devices, and what it applies when its subnet changes.
struct Host {
    netlink: Netlink,
    bridge_index: u32,
    tun_index: u32,
    cluster_cidr: IpNet,
    node_path: PathBuf,
    node_name: String,
    bridge: String,
    mtu: u32,
    applied: Option<Option<IpNet>>,
}

impl Host {
    /// Makes the host match `subnet`: the gateway address on the bridge, the cluster
    /// route's source, and node.json. Without a subnet, the cluster addresses go and
    /// node.json is removed, so the CNI plugin answers "try again later".
    async fn apply(&mut self, subnet: Option<IpNet>) -> Result<(), DaemonError> {
        if self.applied == Some(subnet) {
            return Ok(());
        }
        let gateway = subnet.map(|s| gateway_of(&s));
        let gateway_net = subnet
            .zip(gateway)
            .and_then(|(s, g)| IpNet::new(g, s.prefix_len()).ok());
        self.netlink
            .ensure_address(self.bridge_index, gateway_net, self.cluster_cidr)
            .await?;
        for (dst, oif, msg) in self.netlink.routes_within(self.cluster_cidr).await? {
            let stale = (oif == Some(self.bridge_index)
                && Some(dst) != subnet
                && dst.prefix_len() != dst.max_prefix_len())
                || (oif == Some(self.tun_index) && dst != self.cluster_cidr);
            if stale {
                tracing::info!(route = %dst, "removing stale route");
                self.netlink.delete_route(msg).await?;
            }
        }
        self.netlink
            .replace_route(self.cluster_cidr, self.tun_index, gateway)
            .await?;
        match (subnet, gateway) {
            (Some(subnet), Some(gateway)) => {
                let info = NodeInfo {
                    node_name: self.node_name.clone(),
                    subnet,
                    gateway,
                    bridge: self.bridge.clone(),
                    mtu: self.mtu,
                    cluster_cidr: self.cluster_cidr,
                };
                let json = serde_json::to_vec_pretty(&info).expect("NodeInfo serializes");
                write_atomic(&self.node_path, &json, 0o600, 0o700)
                    .map_err(file_err("node file", &self.node_path))?;
                tracing::info!(%subnet, %gateway, "node subnet in use");
            }
            _ => {
                match std::fs::remove_file(&self.node_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(file_err("node file", &self.node_path)(e)),
                }
                tracing::warn!("no subnet for this node: pods cannot be added until it has one");
            }
        }
        self.applied = Some(subnet);
        Ok(())
    }
}

/// Creates `dir` (mode 0700) or, if it exists, takes group and other access away: the
/// state and runtime files are root's alone.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7700))?;
    }
    Ok(())
}

/// Reads and checks `--secret-file`. Errors name the flag and the path.
pub fn load_keys(path: &Path) -> Result<KeySet, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: String| ConfigError::Invalid {
        flag: "--secret-file",
        value: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let keys = KeySet::parse(&text).map_err(|e| bad(e.to_string()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "--secret-file is readable by others (mode {mode:o}): chmod 600 it"
            );
        }
    }
    Ok(keys)
}

/// Re-reads `--secret-file` on each SIGHUP and hands the keys to the control plane.
/// A file that does not load leaves the keys in use unchanged.
async fn reload_keys_on_hangup(
    ctl: ControlHandle,
    path: Option<PathBuf>,
    mut hangup: tokio::signal::unix::Signal,
) {
    while hangup.recv().await.is_some() {
        let Some(path) = &path else {
            tracing::warn!("SIGHUP: no --secret-file is configured, nothing to reload");
            continue;
        };
        match load_keys(path) {
            Ok(keys) => {
                let ids = keys.ids();
                if ctl.set_keys(Some(keys)).await.is_err() {
                    return;
                }
                tracing::info!(keys = ?ids, "SIGHUP: reloaded the cluster key(s); the first signs");
            }
            Err(e) => tracing::error!("SIGHUP: {e}; keeping the keys in use"),
        }
    }
}

/// Runs the daemon until `shutdown` resolves or the dataplane fails.
pub async fn run(args: DaemonArgs, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let started = Instant::now();
    let fixed_subnet = args.validate()?;
    let keys = match &args.secret_file {
        Some(path) => {
            let keys = load_keys(path)?;
            if fixed_subnet.is_some() {
                tracing::warn!(
                    "--secret-file has no effect with --subnet: this node does not gossip"
                );
            } else {
                tracing::info!(keys = ?keys.ids(), "gossip is authenticated with the cluster key");
            }
            Some(keys)
        }
        None => {
            if fixed_subnet.is_none() {
                tracing::warn!(
                    "gossip is NOT authenticated: any host that can reach UDP port {} can join this cluster and claim subnets; set --secret-file (`overlayd genkey` makes a key)",
                    args.gossip_port
                );
            }
            None
        }
    };
    // Installed before the control plane starts, so an early SIGHUP is not fatal.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(file_err("SIGHUP handler", &args.state_dir))?;
    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    let netlink = Netlink::connect()?;

    let (advertise_addr, underlay_mtu) = match args.advertise_addr {
        Some(addr) => {
            let (_, mtu) = netlink.link_of_addr(addr).await?.ok_or_else(|| ConfigError::Invalid {
                flag: "--advertise-addr",
                value: addr.to_string(),
                why: "is not an address of any interface on this host".into(),
            })?;
            (addr, mtu)
        }
        None => match netlink.default_route_addr(false).await? {
            Some(found) => found,
            None => netlink.default_route_addr(true).await?.ok_or(ConfigError::Missing {
                flag: "--advertise-addr",
                why: "no default route to take the underlay address from; pass the address peers should send VXLAN to",
            })?,
        },
    };
    let overhead = if advertise_addr.is_ipv4() {
        OVERHEAD_V4
    } else {
        OVERHEAD_V6
    };
    let mtu = match args.mtu {
        Some(mtu) => {
            if mtu + overhead > underlay_mtu {
                tracing::warn!(mtu, underlay_mtu, overhead, "--mtu plus VXLAN overhead exceeds the underlay MTU: large packets will be fragmented or lost");
            }
            mtu
        }
        None => underlay_mtu.saturating_sub(overhead).max(576),
    };
    private_dir(&args.state_dir).map_err(file_err("state dir", &args.state_dir))?;
    for dir in [&args.state_dir, &args.run_dir] {
        match crate::fsutil::remove_stale_temps(dir) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(dir = %dir.display(), n, "removed temporary files left by a killed daemon")
            }
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot clean temporary files")
            }
        }
    }
    let vtep_mac = vtep_mac(&args.state_dir, args.vtep_mac)?;

    // The bridge pods attach to, and the TUN that carries the rest of the cluster CIDR.
    let bridge_index = netlink.ensure_bridge(&args.bridge, mtu).await?;
    enable_forwarding(&args.cluster_cidr)?;
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => usize::from(n),
    };
    let tun = tun::open(&args.tun, mtu, workers)?;
    let tun_index = netlink
        .link_by_name(&args.tun)
        .await?
        .ok_or_else(|| {
            crate::dataplane::Error::Host(format!("TUN {} vanished after creation", args.tun))
        })?
        .header
        .index;
    if args.cluster_cidr.addr().is_ipv4() {
        disable_ipv6(&args.tun)?;
        accept_local(&args.tun)?;
    }
    netlink.set_up(tun_index, mtu).await?;

    let sockets = udp::open_sockets(SocketAddr::new(advertise_addr, args.port), tun.queues.len())?;
    let statics = static_peers(&args);
    let (fib, warnings) = build_fib(fixed_subnet, statics.clone());
    for w in warnings {
        tracing::warn!("{w}");
    }
    let config = EncapConfig {
        vni: args.vni,
        local_mac: vtep_mac,
    };
    let options = DataplaneOptions {
        spin: args.busy_poll,
    };
    let (mut driver, handle) = DataplaneDriver::spawn(tun, sockets, config, Arc::new(fib), options);

    // Where this node's subnet comes from: --subnet, or a lease agreed by gossip.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let (subnet_tx, mut subnet_rx) = tokio::sync::watch::channel(fixed_subnet);
    let mut control = None;
    if fixed_subnet.is_none() {
        let seeds = crate::control::driver::parse_peers(&args.peers.join(","), args.gossip_port)
            .map_err(|e| ConfigError::Invalid {
                flag: "--peers",
                value: args.peers.join(","),
                why: format!("cannot resolve: {e}"),
            })?;
        let cfg = ControlConfig {
            name: node_name.clone(),
            advertise_addr,
            vxlan_port: args.port,
            vni: args.vni,
            vtep_mac: vtep_mac.0,
            cluster_cidr: args.cluster_cidr,
            subnet_len: args.subnet_len,
            seeds,
            gossip_port: args.gossip_port,
            state_dir: args.state_dir.clone(),
            reclaim_after: args.reclaim_after,
            leave_on_exit: args.leave_on_exit,
            membership: Default::default(),
            keys: keys.clone(),
        };
        let mut stopping = stop_rx.clone();
        let (ctl, join) = ControlDriver::spawn(cfg, async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        })
        .await?;
        tokio::spawn(follow_lease(ctl.lease(), subnet_tx));
        tokio::spawn(reload_keys_on_hangup(
            ctl.clone(),
            args.secret_file.clone(),
            hangup,
        ));
        let total = crate::control::subnet_count(args.cluster_cidr, args.subnet_len).unwrap_or(0);
        let (report_tx, report_rx) = tokio::sync::watch::channel(ControlReport {
            leases_total: u64::from(total),
            ..Default::default()
        });
        tokio::spawn(refresh_control_report(
            ctl.clone(),
            report_tx,
            started,
            u64::from(total),
        ));
        control = Some((ctl, join, report_rx));
    } else {
        drop(subnet_tx);
    }

    let (node_report, _) = tokio::sync::watch::channel(NodeReport {
        name: node_name.clone(),
        advertise_addr,
        port: args.port,
        vni: args.vni,
        vtep_mac,
        subnet: None,
        gateway: None,
        cluster_cidr: args.cluster_cidr,
        mtu,
        bridge: args.bridge.clone(),
        tun: args.tun.clone(),
        uptime_secs: 0,
    });
    let source = Arc::new(StatusSource {
        node: node_report,
        started,
        dataplane: handle.clone(),
        control: control
            .as_ref()
            .map(|(ctl, _, report)| (ctl.clone(), report.clone())),
        stop: stop_tx.clone(),
        heard: Default::default(),
        netlink: Some(netlink.clone()),
    });
    let sampler = {
        let source = source.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                source.sample_heard();
            }
        })
    };
    let socket_path = args.run_dir.join(status::SOCKET_FILE);
    private_dir(&args.run_dir).map_err(file_err("run dir", &args.run_dir))?;
    let listener = status::bind(&socket_path).map_err(file_err("status socket", &socket_path))?;
    let status_task = tokio::spawn(status::serve(listener, source.clone()));
    let metrics_task = match args.metrics_addr {
        MetricsAddr::Off => None,
        MetricsAddr::On(addr) => {
            let listener =
                crate::metrics::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Listen {
                        what: "--metrics-addr",
                        addr,
                        source,
                    })?;
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                source.clone(),
            )))
        }
    };

    if args.install_cni {
        let install = crate::cni_install::InstallCni {
            plugin: args
                .cni_plugin
                .clone()
                .unwrap_or_else(crate::cni_install::default_plugin),
            bin_dir: args.cni_bin_dir.clone(),
            conf_dir: args.cni_conf_dir.clone(),
            conflist_name: args.cni_conflist.clone(),
            run_dir: args.run_dir.clone(),
        };
        let done = install.install()?;
        tracing::info!(
            bin_dir = %install.bin_dir.display(), conf_dir = %install.conf_dir.display(),
            binary_written = done.binary, conflist_written = done.conflist, "CNI plugin installed"
        );
    }

    let mut host = Host {
        netlink,
        bridge_index,
        tun_index,
        cluster_cidr: args.cluster_cidr,
        node_path: args.run_dir.join(NODE_FILE),
        node_name: node_name.clone(),
        bridge: args.bridge.clone(),
        mtu,
        applied: None,
    };
    let mut peers_rx = control.as_ref().map(|(ctl, _, _)| ctl.peers());
    let mut table = PeerTable::new(statics, args.vni);

    tracing::info!(
        node = %node_name, %advertise_addr, port = args.port, vni = args.vni, %vtep_mac, mtu,
        subnet = ?fixed_subnet, peers = ?args.peers, "overlayd is up"
    );

    tokio::pin!(shutdown);
    let mut subnet_open = fixed_subnet.is_none();
    let result = loop {
        let subnet = *subnet_rx.borrow_and_update();
        if let Err(e) = host.apply(subnet).await {
            break Err(e);
        }
        source.node.send_modify(|n| {
            n.subnet = subnet;
            n.gateway = subnet.map(|s| gateway_of(&s));
        });
        handle.set_router(subnet.map(|s| gateway_of(&s)));
        let learned = peers_rx
            .as_mut()
            .map(|rx| rx.borrow_and_update().clone())
            .unwrap_or_default();
        if let Some(fib) = table.update(subnet, &learned) {
            handle.set_fib(Arc::new(fib));
        }
        let control_done = async {
            match control.as_mut() {
                Some((_, join, _)) => join.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutting down");
                break Ok(());
            }
            _ = stop_rx.wait_for(|stop| *stop) => {
                // The subnet was handed back: stop using it before exiting.
                tracing::info!("left the cluster; shutting down");
                break host.apply(None).await;
            }
            r = driver.wait() => break r.map_err(DaemonError::from),
            changed = subnet_rx.changed(), if subnet_open => subnet_open = changed.is_ok(),
            changed = async { peers_rx.as_mut().expect("guarded").changed().await }, if peers_rx.is_some() => {
                if changed.is_err() {
                    peers_rx = None;
                }
            }
            done = control_done => {
                control = None;
                match done {
                    Ok(Ok(())) => break Ok(()),
                    Ok(Err(e)) => break Err(DaemonError::Control(e)),
                    Err(join) => break Err(crate::dataplane::Error::Host(format!("control plane task ended: {join}")).into()),
                }
            }
        }
    };
    // Stop the control plane (releasing the lease with --leave-on-exit) before exiting.
    let _ = stop_tx.send(true);
    if let Some((_, join, _)) = control {
        match tokio::time::timeout(std::time::Duration::from_secs(10), join).await {
            Ok(Ok(Err(e))) => tracing::warn!("control plane stopped with an error: {e}"),
            Err(_) => tracing::warn!("control plane did not stop within 10 s"),
            _ => {}
        }
    }
    status_task.abort();
    sampler.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    let _ = std::fs::remove_file(&socket_path);
    driver.shutdown().await;
    result
}

/// Turns lease updates into the node's subnet feed, logging each change once.
async fn follow_lease(
    mut lease: tokio::sync::watch::Receiver<LeaseStatus>,
    subnet: tokio::sync::watch::Sender<Option<IpNet>>,
) {
    let mut was_exhausted = false;
    loop {
        let status = lease.borrow_and_update().clone();
        if status.exhausted && !was_exhausted {
            tracing::warn!("the cluster CIDR has no free subnet for this node; it keeps running and asks again");
        }
        was_exhausted = status.exhausted;
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
    report: tokio::sync::watch::Sender<ControlReport>,
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

/// The peers behind the FIB: static ones plus those learned by gossip, with traffic
/// counters kept per name across rebuilds and each state change logged once.
struct PeerTable {
    statics: Vec<Peer>,
    vni: u32,
    counters: std::collections::HashMap<String, Arc<crate::dataplane::stats::PeerStats>>,
    last: Option<(Option<IpNet>, Vec<PeerInfo>)>,
    states: std::collections::HashMap<String, PeerState>,
}

impl PeerTable {
    fn new(statics: Vec<Peer>, vni: u32) -> PeerTable {
        PeerTable {
            statics,
            vni,
            counters: Default::default(),
            last: None,
            states: Default::default(),
        }
    }

    /// A new FIB if our subnet or the learned peers changed since the last call.
    fn update(&mut self, own: Option<IpNet>, learned: &[PeerInfo]) -> Option<Fib> {
        if self
            .last
            .as_ref()
            .is_some_and(|(o, l)| *o == own && l.as_slice() == learned)
        {
            return None;
        }
        self.last = Some((own, learned.to_vec()));
        let mut peers = self.statics.clone();
        let mut seen = std::collections::HashSet::new();
        for p in learned.iter().filter(|p| p.vni == self.vni) {
            let state = match p.state {
                crate::control::PeerState::Alive => PeerState::Alive,
                crate::control::PeerState::Suspect => PeerState::Suspect,
                crate::control::PeerState::Dead => PeerState::Dead,
            };
            if self.states.insert(p.name.clone(), state) != Some(state) {
                tracing::info!(peer = %p.name, subnet = %p.subnet, underlay = %p.underlay, ?state, "peer state");
            }
            seen.insert(p.name.clone());
            let stats = self.counters.entry(p.name.clone()).or_default().clone();
            peers.push(Peer {
                name: p.name.clone(),
                subnet: p.subnet,
                underlay: p.underlay,
                vtep_mac: MacAddr(p.vtep_mac),
                state,
                origin: PeerOrigin::Gossip,
                allow_any_source: false,
                stats,
            });
        }
        self.states.retain(|name, _| {
            let keep = seen.contains(name);
            if !keep {
                tracing::info!(peer = %name, "peer gone");
            }
            keep
        });
        let (fib, warnings) = build_fib(own, peers);
        for w in warnings {
            tracing::warn!("{w}");
        }
        Some(fib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_fib_skips_conflicting_peers() {
        use crate::dataplane::fib::tests::peer;
        let (fib, warnings) = build_fib(
            Some("10.244.1.0/24".parse().unwrap()),
            vec![
                peer("a", "10.244.2.0/24", "198.18.0.2:4789"),
                peer("ours", "10.244.1.0/24", "198.18.0.3:4789"),
                peer("dup", "10.244.2.0/24", "198.18.0.4:4789"),
                peer("same-addr", "10.244.5.0/24", "198.18.0.2:4789"),
                peer("b", "10.244.3.0/24", "198.18.0.5:4789"),
            ],
        );
        let names: Vec<&str> = fib.peers().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("ours"));
    }

    #[test]
    fn gateway_is_first_host() {
        assert_eq!(
            gateway_of(&"10.244.3.0/24".parse().unwrap()),
            "10.244.3.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            gateway_of(&"fd00:1::/64".parse().unwrap()),
            "fd00:1::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn vtep_mac_is_kept_across_restarts() {
        let dir = std::env::temp_dir().join(format!("overlayd-mac-{}", std::process::id()));
        let first = vtep_mac(&dir, None).unwrap();
        assert_eq!(vtep_mac(&dir, None).unwrap(), first);
        let given: MacAddr = "02:00:00:00:00:09".parse().unwrap();
        assert_eq!(vtep_mac(&dir, Some(given)).unwrap(), given);
        assert_eq!(vtep_mac(&dir, None).unwrap(), given);
        std::fs::write(dir.join(VTEP_MAC_FILE), "garbage").unwrap();
        let err = vtep_mac(&dir, None).unwrap_err().to_string();
        assert!(err.contains("vtep_mac"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
