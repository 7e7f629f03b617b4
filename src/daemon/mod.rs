//! `run(config, shutdown)`: brings the node up and forwards until `shutdown` resolves.
//!
//! [`run`] goes through named phases: check the flags and the cluster key, prepare
//! the state dir (VTEP MAC), set up the host devices (bridge, forwarding, TUN and
//! its route), start the dataplane, start the control plane (unless `--subnet` is
//! fixed), serve the admin socket and metrics, install the CNI plugin if asked (its conflist once the node has a subnet), then
//! follow the lease and the peers until told to stop, and shut down. On shutdown the
//! TUN (and with it the cluster route) goes away with the process; the bridge, its
//! address and `node.json` stay, so pods keep their addresses across a restart.
//!
//! # Layout
//! - [`error`]: the daemon's error enum, [`DaemonError`].
//! - [`dataplane`]: starts the userspace or kernel dataplane (`--dataplane`).
//! - [`host`]: underlay address and MTU, bridge, the cluster route and `node.json`.
//! - [`peers`]: static and learned peers turned into the FIB.
//! - [`gossip`]: the control driver, the lease feed and the control report.
//! - [`keys`]: `--secret-file`, at start and on SIGHUP.
//! - [`state`]: the state and run dirs and the VTEP MAC.
//! - [`uninstall`]: `overlayd uninstall`, which removes all of the above from the host.
//! - [`pods`]: the driver that reclaims the addresses of gone pods.
//! - [`privilege`]: dropping capabilities at start.
//! - [`cni_install`]: what `--install-cni` does.
//! - [`node`]: `node.json`, the contract between the daemon and the CNI plugin.

pub(crate) mod cni_install;
pub(crate) mod dataplane;
pub(crate) mod error;
pub(crate) mod gossip;
pub(crate) mod host;
pub(crate) mod keys;
pub(crate) mod node;
pub(crate) mod peers;
pub(crate) mod pods;
pub mod privilege;
pub(crate) mod state;
pub mod uninstall;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{DaemonArgs, MetricsAddr};
use crate::control::KeySet;
use crate::dataplane::icmp::Routers;
use crate::dataplane::netlink::Netlink;
use crate::dataplane::wire::MacAddr;
use crate::dataplane::DataplaneHandle;
use crate::ops::live::StatusSource;
use crate::ops::status::NodeReport;

use dataplane::Running;
use error::file_err;
use gossip::{Gossip, GossipStart};
use host::Host;
use peers::PeerTable;

pub(crate) use error::DaemonError;
pub(crate) use host::gateway_of;
pub(crate) use keys::load_keys;
pub(crate) use peers::static_peers;

/// Runs the daemon until `shutdown` resolves or the dataplane fails.
pub async fn run(args: DaemonArgs, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let started = Instant::now();
    let (fixed_subnet, keys) = check_flags(&args)?;
    // Installed before the control plane starts, so an early SIGHUP is not fatal.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(file_err("SIGHUP handler", &args.state_dir))?;
    let node_name = args.node_name.clone().unwrap_or_else(host::hostname);
    let netlink = Netlink::connect()?;
    let underlay = host::underlay(&netlink, &args).await?;
    let vtep_mac = prepare_state(&args)?;
    let wg_keys = match args.encrypt {
        true => {
            let pair = crate::dataplane::wg::key::load_or_create(&args.state_dir)?;
            tracing::info!(public_key = %crate::dataplane::wg::key::encode(&pair.public_bytes()), port = args.wg_port, "pod traffic is encrypted with WireGuard");
            Some(pair)
        }
        false => None,
    };
    let wg_identity = wg_keys.as_ref().map(|p| crate::control::WgIdentity {
        port: args.wg_port,
        key: p.public_bytes(),
    });
    let statics = static_peers(&args);
    let carrier = dataplane::start(dataplane::Start {
        args: &args,
        netlink: &netlink,
        underlay,
        vtep_mac,
        fixed_subnet,
        statics: &statics,
        wg_keys,
    })
    .await?;
    let (driver, dataplane) = (carrier.running, carrier.handle);
    let host = Host::set_up(
        netlink.clone(),
        &args,
        &node_name,
        underlay.mtu,
        carrier.cluster_route,
    )
    .await?;

    // Where this node's subnet comes from: --subnet, or a lease agreed by gossip.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (subnet_tx, subnet_rx) = watch::channel(fixed_subnet);
    let gossip = match fixed_subnet {
        Some(_) => {
            drop(subnet_tx);
            None
        }
        None => {
            let start = GossipStart {
                node_name: node_name.clone(),
                underlay,
                vtep_mac,
                keys,
                hangup,
                started,
                wg: wg_identity,
            };
            Some(gossip::start(&args, start, stop_rx.clone(), subnet_tx).await?)
        }
    };

    let node_report = NodeReport {
        name: node_name.clone(),
        advertise_addr: underlay.advertise_addr,
        port: args.port,
        vni: args.vni,
        vtep_mac,
        subnet: None,
        gateway: None,
        cluster_cidr: args.cluster_cidr.primary,
        subnet_v6: None,
        cluster_cidr_v6: args.cluster_cidr.second,
        mtu: underlay.mtu,
        bridge: args.bridge.clone(),
        tun: args.tun.clone(),
        uptime_secs: 0,
    };
    let source = Arc::new(StatusSource {
        node: watch::channel(node_report).0,
        started,
        dataplane: dataplane.clone(),
        control: gossip.as_ref().map(|g| g.source.clone()),
        stop: stop_tx.clone(),
        heard: Default::default(),
        netlink: Some(netlink.clone()),
        state_dir: args.state_dir.clone(),
        pods: args
            .cni_data_dir()
            .map(|dir| Arc::new(pods::PodWatch::new(dir, args.reclaim_pod_after))),
    });
    let admin = serve_admin(&args, source.clone()).await?;
    let cni = install_cni_plugin(&args)?;

    tracing::info!(
        node = %node_name, advertise_addr = %underlay.advertise_addr, port = args.port,
        vni = args.vni, %vtep_mac, mtu = underlay.mtu, subnet = ?fixed_subnet,
        peers = ?args.peers, "overlayd is up"
    );
    let mut daemon = Daemon {
        host,
        table: PeerTable::new(statics, args.vni, args.encrypt),
        dataplane,
        driver,
        source,
        peers: gossip.as_ref().map(|g| g.source.handle.peers()),
        gossip,
        subnet: subnet_rx,
        subnet_open: fixed_subnet.is_none(),
        stop: stop_rx,
        left: false,
        cni,
    };
    let result = daemon.follow(shutdown).await;
    daemon.shut_down(stop_tx, admin, &netlink, &args).await;
    result
}

/// Checks the flags and loads the cluster key. Returns the fixed `--subnet`, if any,
/// and the keys, and warns about gossip that is not authenticated.
fn check_flags(args: &DaemonArgs) -> Result<(Option<IpNet>, Option<KeySet>), DaemonError> {
    let fixed_subnet = args.validate()?;
    let speaks = crate::control::message::version();
    if speaks != crate::control::message::BUILD_VERSION {
        tracing::warn!(
            "a test build: speaking gossip protocol {speaks}, set by {}, not this release's {}",
            crate::control::message::TEST_VERSION_VAR,
            crate::control::message::BUILD_VERSION
        );
    }
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
    Ok((fixed_subnet, keys))
}

/// Prepares the state dir (root's alone, no temporary files left by a killed daemon)
/// and returns the VTEP MAC kept in it.
fn prepare_state(args: &DaemonArgs) -> Result<MacAddr, DaemonError> {
    state::private_dir(&args.state_dir).map_err(file_err("state dir", &args.state_dir))?;
    state::remove_stale_temps(&[&args.state_dir, &args.run_dir]);
    state::vtep_mac(&args.state_dir, args.vtep_mac)
}

/// The tasks behind the admin socket and the metrics listener.
struct AdminTasks {
    socket_path: PathBuf,
    admin: JoinHandle<()>,
    sampler: JoinHandle<()>,
    metrics: Option<JoinHandle<()>>,
    pods: Option<JoinHandle<()>>,
}

/// Serves the admin socket in `--run-dir` and, unless turned off, the metrics; samples
/// the peers' receive counters once a second for "last heard".
async fn serve_admin(
    args: &DaemonArgs,
    source: Arc<StatusSource>,
) -> Result<AdminTasks, DaemonError> {
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
    let socket_path = args.run_dir.join(crate::ops::admin::SOCKET_FILE);
    state::private_dir(&args.run_dir).map_err(file_err("run dir", &args.run_dir))?;
    let listener =
        crate::ops::admin::bind(&socket_path).map_err(file_err("status socket", &socket_path))?;
    let admin = tokio::spawn(crate::ops::admin::serve(listener, source.clone()));
    let pods = source.pods.clone().map(|w| tokio::spawn(w.run()));
    let metrics = match args.metrics_addr {
        MetricsAddr::Off => None,
        MetricsAddr::On(addr) => {
            let listener =
                crate::ops::metrics::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Listen {
                        what: "--metrics-addr",
                        addr,
                        source,
                    })?;
            Some(tokio::spawn(crate::ops::metrics::serve(listener, source)))
        }
    };
    Ok(AdminTasks {
        socket_path,
        admin,
        sampler,
        metrics,
        pods,
    })
}

/// What `--install-cni` installs, from the flags.
pub(crate) fn cni_install_of(args: &DaemonArgs) -> crate::daemon::cni_install::InstallCni {
    crate::daemon::cni_install::InstallCni {
        plugin: args
            .cni_plugin
            .clone()
            .unwrap_or_else(crate::daemon::cni_install::default_plugin),
        bin_dir: args.cni_bin_dir.clone(),
        conf_dir: args.cni_conf_dir.clone(),
        conflist_name: args.cni_conflist.clone(),
        run_dir: args.run_dir.clone(),
        data_dir: args
            .cni_data_dir()
            .unwrap_or_else(|| crate::config::DEFAULT_CNI_DATA_DIR.into()),
    }
}

/// With `--install-cni`, installs the plugin binary now; the conflist follows once
/// the node has a subnet ([`Daemon::follow`]).
fn install_cni_plugin(args: &DaemonArgs) -> Result<Option<CniInstall>, DaemonError> {
    if !args.install_cni {
        return Ok(None);
    }
    let install = cni_install_of(args);
    let written = install.install_plugin()?;
    tracing::info!(
        bin_dir = %install.bin_dir.display(), binary_written = written,
        "CNI plugin installed; its conflist follows once this node has a subnet"
    );
    Ok(Some(CniInstall {
        install,
        conflist: false,
    }))
}

/// `--install-cni`, and whether the conflist is in place.
struct CniInstall {
    install: crate::daemon::cni_install::InstallCni,
    conflist: bool,
}

/// The running daemon: what it follows and what it stops.
struct Daemon {
    host: Host,
    table: PeerTable,
    dataplane: DataplaneHandle,
    driver: Running,
    source: Arc<StatusSource>,
    gossip: Option<Gossip>,
    /// Learned peers, while the control plane publishes them.
    peers: Option<watch::Receiver<Vec<crate::control::PeerInfo>>>,
    subnet: watch::Receiver<Option<IpNet>>,
    /// Whether the subnet feed may still change.
    subnet_open: bool,
    /// Turns true after `overlayd leave`.
    stop: watch::Receiver<bool>,
    /// The node left the cluster (its dataplane goes with it).
    left: bool,
    /// `--install-cni`: the conflist is written once the node has a subnet.
    cni: Option<CniInstall>,
}

impl Daemon {
    /// Follows the node's subnet and the learned peers (host, status, router and FIB)
    /// until `shutdown` resolves, the node leaves, or the dataplane or control plane
    /// stops.
    async fn follow(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        tokio::pin!(shutdown);
        loop {
            let subnet = *self.subnet.borrow_and_update();
            self.host.apply(subnet).await?;
            let subnet_v6 = subnet.and_then(|s| self.host.subnet_v6_of(s));
            self.source.node.send_modify(|n| {
                n.subnet = subnet;
                n.subnet_v6 = subnet_v6;
                n.gateway = subnet.map(|s| gateway_of(&s));
            });
            self.dataplane.set_router(Routers {
                primary: subnet.map(|s| gateway_of(&s)),
                second: subnet_v6.map(|s| gateway_of(&s)),
            });
            let learned = self
                .peers
                .as_mut()
                .map(|rx| rx.borrow_and_update().clone())
                .unwrap_or_default();
            if let Some(fib) = self.table.update(subnet, &learned) {
                self.dataplane.set_fib(Arc::new(fib));
            }
            if let (Some(cni), Some(subnet)) = (self.cni.as_mut(), subnet) {
                if !cni.conflist {
                    let written = cni.install.install_conflist()?;
                    cni.conflist = true;
                    tracing::info!(
                        conflist = %cni.install.conflist_path().display(), written, %subnet,
                        "CNI conflist installed: this node has a subnet, so the kubelet may send it pods"
                    );
                }
            }
            let control_done = async {
                match self.gossip.as_mut() {
                    Some(g) => (&mut g.join).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => {
                    tracing::info!("shutting down");
                    return Ok(());
                }
                _ = self.stop.wait_for(|stop| *stop) => {
                    // The subnet was handed back: stop using it before exiting.
                    tracing::info!("left the cluster; shutting down");
                    self.left = true;
                    return self.host.apply(None).await;
                }
                r = self.driver.wait() => return r.map_err(DaemonError::from),
                changed = self.subnet.changed(), if self.subnet_open => self.subnet_open = changed.is_ok(),
                changed = async { self.peers.as_mut().expect("guarded").changed().await }, if self.peers.is_some() => {
                    if changed.is_err() {
                        self.peers = None;
                    }
                }
                done = control_done => {
                    self.gossip = None;
                    return match done {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(DaemonError::Control(e)),
                        Err(join) => Err(DaemonError::ControlTaskEnded(join)),
                    };
                }
            }
        }
    }

    /// Stops the control plane (releasing the lease with `--leave-on-exit`), the
    /// admin socket, the metrics and the dataplane.
    async fn shut_down(
        self,
        stop: watch::Sender<bool>,
        admin: AdminTasks,
        netlink: &Netlink,
        args: &DaemonArgs,
    ) {
        let _ = stop.send(true);
        if let Some(g) = self.gossip {
            match tokio::time::timeout(std::time::Duration::from_secs(10), g.join).await {
                Ok(Ok(Err(e))) => tracing::warn!("control plane stopped with an error: {e}"),
                Err(_) => tracing::warn!("control plane did not stop within 10 s"),
                _ => {}
            }
        }
        admin.admin.abort();
        admin.sampler.abort();
        for task in [admin.metrics, admin.pods].into_iter().flatten() {
            task.abort();
        }
        let _ = std::fs::remove_file(&admin.socket_path);
        self.driver.shut_down(netlink, args, self.left).await;
    }
}
