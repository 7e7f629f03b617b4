//! The tokio task that owns the gossip socket, the clock and the lease state file,
//! and drives a [`Controller`]. It makes no protocol decisions.
//!
//! The daemon calls [`ControlDriver::spawn`] and keeps the [`ControlHandle`]: its
//! [`ControlHandle::peers`] watch feeds the FIB, [`ControlHandle::lease`] tells the
//! daemon which subnet it may use, and [`ControlHandle::status`],
//! [`ControlHandle::leave`] and [`ControlHandle::rmpeer`] back the CLI commands.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::auth::KeySet;
use super::controller::{
    Controller, ControllerConfig, Event, LEAVE_TIMEOUT, REJECT_LOG_BUDGET, REJECT_LOG_INTERVAL,
};
use super::error::Error;
use super::lease::{LeaseConfig, LeaseEvent, LeaseState, STATE_FORMAT};
use super::membership::MembershipConfig;
use super::message::{self, MAX_DATAGRAM};
use super::meta::{NodeMeta, WgIdentity};
use super::report::{GossipTraffic, LeaseWait, PeerInfo, Status};
use super::subnet::subnet_of;
use super::transport::{Transport, UdpTransport};
use crate::fsutil::write_atomic;

/// Default gossip port (`--gossip-port`).
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// File name of the persisted lease state inside `--state-dir`.
pub(crate) const STATE_FILE: &str = "lease.json";

/// Settings of the control plane, from the daemon's flags.
#[derive(Debug, Clone)]
pub(crate) struct ControlConfig {
    /// Node name (`--node-name`).
    pub(crate) name: String,
    /// Address peers reach us on, for gossip and VXLAN.
    pub(crate) advertise_addr: IpAddr,
    /// Our VXLAN UDP port.
    pub(crate) vxlan_port: u16,
    /// VXLAN network identifier.
    pub(crate) vni: u32,
    /// Our VTEP MAC address.
    pub(crate) vtep_mac: [u8; 6],
    /// `--cluster-cidr`.
    pub(crate) cluster_cidr: IpNet,
    /// `--subnet-len` (default 24).
    pub(crate) subnet_len: u8,
    /// Dual-stack: the IPv6 cluster CIDR and `--subnet-len-v6`.
    pub(crate) second: Option<super::SecondCidr>,
    /// `--peers`, resolved (see [`parse_peers`]).
    pub(crate) seeds: Vec<SocketAddr>,
    /// `--bootstrap-expect N`: found once a majority of N nodes started with the
    /// same N have met (`docs/founding.md`).
    pub(crate) bootstrap_expect: Option<u32>,
    /// `--gossip-port` (default 7946; 0 picks a free port, for tests).
    pub(crate) gossip_port: u16,
    /// `--state-dir`: where the lease state is persisted.
    pub(crate) state_dir: PathBuf,
    /// `--reclaim-after` (default 24 h). The fence bound is half of it.
    pub(crate) reclaim_after: Duration,
    /// `--leave-on-exit`: release our subnet when the shutdown future resolves.
    pub(crate) leave_on_exit: bool,
    /// Membership timing (200 ms gossip, 1 s probes by default).
    pub(crate) membership: MembershipConfig,
    /// The cluster keys from `--secret-file`; `None` runs unauthenticated.
    pub(crate) keys: Option<KeySet>,
    /// With `--encrypt`: our WireGuard port and public key, published in gossip.
    pub(crate) wg: Option<WgIdentity>,
}

impl ControlConfig {
    fn is_self(&self, s: &SocketAddr, local: SocketAddr) -> bool {
        *s == local || (s.ip() == self.advertise_addr && s.port() == local.port())
    }

    /// Whether this node creates the cluster's address space at once when it has no
    /// state: when `--peers` is empty or names only this node. Every other node takes
    /// part in founding by agreement (`docs/founding.md`) or joins a founded cluster.
    /// A node that merely lists itself first does not found alone: nodes given the
    /// same seeds in different orders would found several clusters. With
    /// `--bootstrap-expect` no node founds alone.
    pub(crate) fn is_founder(&self, local: SocketAddr) -> bool {
        self.bootstrap_expect.is_none() && self.seeds.iter().all(|s| self.is_self(s, local))
    }

    /// Whether this node proposes first in the founding agreement: it lists itself
    /// first in `--peers` (the old way of naming the founder).
    pub(crate) fn proposes_first(&self, local: SocketAddr) -> bool {
        self.seeds.first().is_some_and(|s| self.is_self(s, local))
    }
}

/// Resolves `--peers HOST[:PORT][,…]`; the port defaults to `default_port`.
pub(crate) fn parse_peers(list: &str, default_port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let with_port = if item.parse::<SocketAddr>().is_ok() {
            item.to_owned()
        } else if item.parse::<IpAddr>().is_ok() {
            SocketAddr::new(item.parse().map_err(std::io::Error::other)?, default_port).to_string()
        } else if item
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            item.to_owned()
        } else {
            format!("{item}:{default_port}")
        };
        out.extend(with_port.to_socket_addrs()?.take(1));
    }
    Ok(out)
}

/// What the daemon needs to know about its own subnet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct LeaseStatus {
    /// The subnet we may use now (`None`: not yet, lost, or fenced).
    pub(crate) subnet: Option<IpNet>,
    /// Every subnet is in use; the node keeps asking.
    pub(crate) exhausted: bool,
    /// What the node waits for while it uses no subnet.
    pub(crate) waiting: Option<LeaseWait>,
}

enum Command {
    Status(oneshot::Sender<Status>),
    Leave(oneshot::Sender<()>),
    Rmpeer(String, oneshot::Sender<Vec<IpNet>>),
    SetKeys(Option<KeySet>, oneshot::Sender<()>),
    SetWg(WgIdentity, oneshot::Sender<()>),
}

/// The cloneable front end of the control driver.
#[derive(Debug, Clone)]
pub(crate) struct ControlHandle {
    tx: mpsc::Sender<Command>,
    peers: watch::Receiver<Vec<PeerInfo>>,
    lease: watch::Receiver<LeaseStatus>,
    /// The gossip socket's address (the tests read it).
    #[cfg_attr(not(test), allow(dead_code))]
    local: SocketAddr,
}

impl ControlHandle {
    /// Peers with a subnet, for the FIB. Changes when a peer appears, changes its
    /// subnet, is declared dead or comes back.
    pub(crate) fn peers(&self) -> watch::Receiver<Vec<PeerInfo>> {
        self.peers.clone()
    }

    /// Our own subnet.
    pub(crate) fn lease(&self) -> watch::Receiver<LeaseStatus> {
        self.lease.clone()
    }

    /// The gossip socket's address.
    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A snapshot for `overlayd status`.
    pub(crate) async fn status(&self) -> Result<Status, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Status(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// `overlayd leave`: releases our subnet to a witness, leaves the cluster and
    /// stops the driver. Resolves when done.
    pub(crate) async fn leave(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Leave(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// `overlayd rmpeer NAME`: takes over NAME's subnets now, without waiting for
    /// `--reclaim-after`. If NAME is alive behind a partition, two nodes then use the
    /// same subnet until the partition heals; only use it for nodes known to be gone.
    pub(crate) async fn rmpeer(&self, name: &str) -> Result<Vec<IpNet>, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Rmpeer(name.to_owned(), tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Publishes a new WireGuard port and public key (`overlayd rotate-key`).
    pub(crate) async fn set_wg(&self, wg: WgIdentity) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::SetWg(wg, tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Replaces the cluster keys (the daemon re-reads `--secret-file` on SIGHUP).
    /// Datagrams are signed with the new first key from now on.
    pub(crate) async fn set_keys(&self, keys: Option<KeySet>) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::SetKeys(keys, tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }
}

/// The control plane's tokio task.
#[derive(Debug)]
pub(crate) struct ControlDriver;

impl ControlDriver {
    /// Binds the gossip socket on `0.0.0.0:gossip_port` and spawns the driver. The
    /// task ends when `shutdown` resolves (after releasing our subnet if
    /// `leave_on_exit`), after [`ControlHandle::leave`], or on a fatal error such as
    /// a cluster mismatch.
    pub(crate) async fn spawn(
        cfg: ControlConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(ControlHandle, JoinHandle<Result<(), Error>>), Error> {
        let bind = SocketAddr::new(
            if cfg.advertise_addr.is_ipv6() {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            },
            cfg.gossip_port,
        );
        let t = UdpTransport::bind(bind)
            .await
            .map_err(|source| Error::Socket { addr: bind, source })?;
        Self::spawn_with(cfg, t, shutdown)
    }

    /// Spawns the driver on any [`Transport`] (tests use the in-memory one).
    pub(crate) fn spawn_with<T: Transport>(
        cfg: ControlConfig,
        transport: T,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(ControlHandle, JoinHandle<Result<(), Error>>), Error> {
        let local = SocketAddr::new(cfg.advertise_addr, transport.local_addr().port());
        let state_path = cfg.state_dir.join(STATE_FILE);
        let persisted = load_state(&state_path)?;
        let node_cfg = ControllerConfig {
            meta: NodeMeta {
                name: cfg.name.clone(),
                gossip: local,
                vxlan_port: cfg.vxlan_port,
                vni: cfg.vni,
                vtep_mac: cfg.vtep_mac,
                cluster_cidr: cfg.cluster_cidr,
                subnet_len: cfg.subnet_len,
                second: cfg.second,
                lease: None,
                has_free: false,
                bump: 0,
                cluster_id: None,
                bootstrap_expect: cfg.bootstrap_expect,
                wg: cfg.wg,
            },
            seeds: cfg.seeds.iter().copied().filter(|s| *s != local).collect(),
            founder: cfg.is_founder(local),
            propose_first: cfg.proposes_first(local),
            bootstrap_expect: cfg.bootstrap_expect,
            membership: cfg.membership.clone(),
            lease: LeaseConfig::new(cfg.name.clone(), 0, false)
                .with_reclaim_after(cfg.reclaim_after),
            keys: cfg.keys.clone(),
            session: rand::random(),
        };
        let mut node = Controller::new(node_cfg, persisted, Instant::now().into_std())?;
        node.set_wall_clock(now(), unix_ms());
        // A state dir that cannot be written is a start-up error: the new boot number
        // must be on disk before anything is sent.
        if node.take_lease_dirty() {
            save_state(&state_path, node.lease().state())?;
        }
        let (tx, rx) = mpsc::channel(16);
        let (peers_tx, peers) = watch::channel(Vec::new());
        let (lease_tx, lease) = watch::channel(LeaseStatus::default());
        let mut driver = Driver {
            node,
            transport,
            rx,
            peers_tx,
            lease_tx,
            state_path,
            leave_on_exit: cfg.leave_on_exit,
            traffic: GossipTraffic::default(),
            save_error: None,
            leaving: false,
            leave_done: None,
            left: false,
        };
        let task = tokio::spawn(async move { driver.run(shutdown).await });
        Ok((
            ControlHandle {
                tx,
                peers,
                lease,
                local,
            },
            task,
        ))
    }
}

enum Wake {
    Recv(std::io::Result<(usize, SocketAddr)>),
    Timer,
    Command(Option<Command>),
    Shutdown,
}

struct Driver<T> {
    node: Controller,
    transport: T,
    rx: mpsc::Receiver<Command>,
    peers_tx: watch::Sender<Vec<PeerInfo>>,
    lease_tx: watch::Sender<LeaseStatus>,
    state_path: PathBuf,
    leave_on_exit: bool,
    traffic: GossipTraffic,
    save_error: Option<SaveError>,
    /// A leave is in progress: commands and shutdown wait until it ends.
    leaving: bool,
    /// Told when the leave ends (`overlayd leave` waits on it).
    leave_done: Option<oneshot::Sender<()>>,
    /// The node raised [`Event::Left`]: the driver stops.
    left: bool,
}

/// The lease state could not be saved: since when, the last error, when to retry and
/// when the error was last logged.
struct SaveError {
    since: Instant,
    message: String,
    retry_at: Instant,
    logged_at: Instant,
}

/// While the lease state cannot be saved: how often to retry, and to log it again.
const SAVE_RETRY: Duration = Duration::from_secs(1);
const SAVE_RELOG: Duration = Duration::from_secs(60);

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<T: Transport> Driver<T> {
    async fn run(&mut self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        tokio::pin!(shutdown);
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            self.flush().await?;
            if self.left {
                if let Some(done) = self.leave_done.take() {
                    let _ = done.send(());
                }
                return Ok(());
            }
            let wake = Instant::from_std(self.node.poll_timeout());
            let leaving = self.leaving;
            let r = tokio::select! {
                r = self.transport.recv_from(&mut buf) => Wake::Recv(r),
                _ = tokio::time::sleep_until(wake) => Wake::Timer,
                cmd = self.rx.recv(), if !leaving => Wake::Command(cmd),
                _ = &mut shutdown, if !leaving => Wake::Shutdown,
            };
            // The wall clock follows NTP steps; the node takes its timestamps from it.
            self.node.set_wall_clock(now(), unix_ms());
            match r {
                Wake::Recv(r) => match r {
                    Ok((n, from)) => {
                        self.traffic.rx_datagrams += 1;
                        self.traffic.rx_bytes += n as u64;
                        self.node.handle_datagram(from, &buf[..n], now());
                    }
                    Err(e) => tracing::debug!(error = %e, "gossip receive failed"),
                },
                Wake::Timer => self.node.handle_timeout(now()),
                Wake::Command(cmd) => match cmd {
                    Some(Command::Status(tx)) => {
                        let mut status = self.node.status(now());
                        status.traffic = self.traffic;
                        status.state_error = self.save_error.as_ref().map(|e| {
                            format!("{} (for {} s)", e.message, e.since.elapsed().as_secs())
                        });
                        let _ = tx.send(status);
                    }
                    Some(Command::Leave(tx)) => {
                        self.leaving = true;
                        self.leave_done = Some(tx);
                        self.node.leave(now());
                    }
                    Some(Command::Rmpeer(name, tx)) => {
                        let taken = self.node.force_reclaim(&name, now());
                        tracing::warn!(peer = %name, subnets = ?taken, "rmpeer: reclaimed without waiting; unsafe if the peer is alive");
                        let me = self.node.membership().me().clone();
                        let nets = taken
                            .iter()
                            .filter_map(|i| subnet_of(me.cluster_cidr, me.subnet_len, *i))
                            .collect();
                        let _ = tx.send(nets);
                    }
                    Some(Command::SetKeys(keys, tx)) => {
                        self.node.set_keys(keys);
                        let _ = tx.send(());
                    }
                    Some(Command::SetWg(wg, tx)) => {
                        self.node.set_wg(Some(wg), now());
                        let _ = tx.send(());
                    }
                    None => {}
                },
                Wake::Shutdown => {
                    if self.leave_on_exit {
                        self.leaving = true;
                        self.node.leave(now());
                    } else {
                        self.flush().await?;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Saves the lease state if it changed, or retries a failed save once it is due.
    /// A failure is not fatal: the node keeps the subnet it uses (the saved one), holds
    /// back lease messages, logs the error, shows it in status and retries every
    /// second.
    fn save(&mut self) {
        let dirty = self.node.take_lease_dirty();
        let now = Instant::now();
        if !dirty && !self.node.state_unsaved() {
            return;
        }
        if self.save_error.as_ref().is_some_and(|e| now < e.retry_at) {
            self.node.set_state_saved(false);
            return;
        }
        match save_state(&self.state_path, self.node.lease().state()) {
            Ok(()) => {
                self.node.set_state_saved(true);
                if let Some(e) = self.save_error.take() {
                    tracing::info!(
                        path = %self.state_path.display(),
                        after_secs = e.since.elapsed().as_secs(),
                        "lease state saved again; lease messages resume"
                    );
                }
            }
            Err(e) => {
                self.node.set_state_saved(false);
                let message = e.to_string();
                let log = match &self.save_error {
                    None => true,
                    Some(old) => old.message != message || now >= old.logged_at + SAVE_RELOG,
                };
                if log {
                    tracing::error!(
                        "cannot save the lease state: {message}; keeping the saved subnet in use, \
                         holding lease messages and retrying every second"
                    );
                }
                let since = self.save_error.as_ref().map_or(now, |o| o.since);
                let logged_at = match &self.save_error {
                    Some(old) if !log => old.logged_at,
                    _ => now,
                };
                self.save_error = Some(SaveError {
                    since,
                    message,
                    retry_at: now + SAVE_RETRY,
                    logged_at,
                });
            }
        }
    }

    /// Logs or acts on one event of the node; true when the peers changed. Returns
    /// fatal errors.
    fn on_event(&mut self, ev: Event) -> Result<bool, Error> {
        match ev {
            Event::PeersChanged => return Ok(true),
            Event::Refused { peer, reason } => {
                return Err(Error::ClusterMismatch { peer, reason });
            }
            Event::RefusedWhileServing { peer, reason } => {
                tracing::error!(
                    %peer,
                    %reason,
                    "a peer refused us (another cluster or configuration); this node keeps serving its own cluster: check --peers and the cluster settings on both"
                );
            }
            Event::Left { timed_out } => {
                if !timed_out {
                    tracing::info!("left the cluster");
                } else {
                    tracing::warn!(
                        "left the cluster before a witness confirmed taking our subnet (waited {} s); the cluster reclaims it as it does a dead node's",
                        LEAVE_TIMEOUT.as_secs()
                    );
                }
                self.left = true;
            }
            Event::RefusedPeer { peer, reason } => {
                tracing::error!(%peer, %reason, "refused a peer with a different configuration");
            }
            Event::SeedsSilent { seeds, for_secs } => {
                tracing::warn!(
                    ?seeds,
                    "no seed has answered for {for_secs} s: check that they run, that UDP port {} is open between the nodes, and that --secret-file holds the cluster's key (a peer drops gossip signed with another key, or unsigned)",
                    seeds.first().map(|s| s.port()).unwrap_or_default()
                );
            }
            Event::Rejected { from, reason } => {
                tracing::warn!(
                    %from,
                    reason = reason.label(),
                    "rejected gossip from {from}: {reason} (counted in overlayd_gossip_rejected_total; repeats from this address are not logged for {} s)",
                    REJECT_LOG_INTERVAL.as_secs()
                );
            }
            Event::VersionRefused { from, version } => {
                tracing::warn!(
                    %from,
                    peer_version = version,
                    version = message::version(),
                    "refusing gossip from {from}: it speaks gossip protocol {version}, this node speaks gossip protocol {} (accepts {} to {}); this node keeps serving its own pods. Upgrade one version at a time (repeats from this address are not logged for {} s)",
                    message::version(),
                    message::min_accepted(),
                    message::max_accepted(),
                    REJECT_LOG_INTERVAL.as_secs()
                );
            }
            Event::RejectReportsPaused => {
                tracing::warn!(
                    "{} rejected gossip senders logged in {} s: rejections from further addresses are counted in overlayd_gossip_rejected_total, not logged, until the interval ends",
                    REJECT_LOG_BUDGET,
                    REJECT_LOG_INTERVAL.as_secs()
                );
            }
            Event::RejectReportsResumed { unreported } => {
                tracing::warn!(
                    unreported,
                    "{unreported} rejected gossip datagrams from addresses not logged before went unlogged in the last {} s",
                    REJECT_LOG_INTERVAL.as_secs()
                );
            }
            // Said by the daemon from `LeaseStatus::waiting`, once per change, with
            // what is really missing (no free holder in reach is not exhaustion).
            Event::Lease(LeaseEvent::Exhausted) => {}
            Event::Lease(LeaseEvent::Reclaimed { node, subnets }) => {
                tracing::info!(%node, ?subnets, "reclaimed the space of a silent node");
            }
            Event::Lease(LeaseEvent::Lost) => {
                tracing::warn!("our witnesses declared our lease dead; requesting a new subnet");
            }
            Event::Lease(LeaseEvent::Using(_)) => {}
            // No probe is sent yet: the daemon's direct-routing driver is issue
            // 27's next part (docs/direct-routing.md).
            Event::ProbeAnswered { .. } => {}
        }
        Ok(false)
    }

    /// Persists state, sends datagrams, publishes events. Returns fatal errors.
    async fn flush(&mut self) -> Result<(), Error> {
        self.save();
        let t = now();
        while let Some(tx) = self.node.poll_transmit(t) {
            match self.transport.send_to(&tx.data, tx.to).await {
                Ok(()) => {
                    self.traffic.tx_datagrams += 1;
                    self.traffic.tx_bytes += tx.data.len() as u64;
                }
                Err(e) => tracing::debug!(to = %tx.to, error = %e, "gossip send failed"),
            }
        }
        let mut peers_changed = false;
        while let Some(ev) = self.node.poll_event() {
            peers_changed |= self.on_event(ev)?;
        }
        // The state file is written before the new lease is announced to the daemon.
        self.save();
        let waiting = self.node.waiting(now());
        let status = LeaseStatus {
            subnet: self.node.using_subnet(now()),
            exhausted: matches!(waiting, Some(LeaseWait::Exhausted { .. })),
            waiting,
        };
        self.lease_tx.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        if peers_changed {
            let peers = self.node.peers();
            self.peers_tx.send_if_modified(|p| {
                let changed = *p != peers;
                *p = peers;
                changed
            });
        }
        Ok(())
    }
}

/// Reads the persisted lease state, if any.
pub(crate) fn load_state(path: &Path) -> Result<Option<LeaseState>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let corrupt = |source| Error::StateCorrupt {
                path: path.to_owned(),
                source,
            };
            // The format is read first, alone, so a newer file is refused by name
            // even where its other fields would not parse.
            #[derive(serde::Deserialize)]
            struct Format {
                #[serde(default)]
                format: Option<u32>,
            }
            let format = serde_json::from_slice::<Format>(&bytes)
                .map_err(corrupt)?
                .format
                .unwrap_or(1);
            if format > STATE_FORMAT {
                return Err(Error::StateFormat {
                    path: path.to_owned(),
                    found: format,
                    supported: STATE_FORMAT,
                });
            }
            let st: LeaseState = serde_json::from_slice(&bytes).map_err(corrupt)?;
            // Every start increments `boot`; at the last value it would wrap, and beat
            // sequence numbers of two boots would collide.
            if st.boot == u64::MAX {
                return Err(corrupt(serde::de::Error::custom(
                    "boot counter at its maximum",
                )));
            }
            Ok(Some(st))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::State {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the lease state atomically ([`write_atomic`]: temporary file, fsync,
/// rename, fsync of the directory), readable by root only, so a crash or a full disk
/// leaves the old state or the new one, never a torn file. Unchanged state is not
/// rewritten.
pub(crate) fn save_state(path: &Path, st: &LeaseState) -> Result<(), Error> {
    let err = |source| Error::State {
        path: path.to_owned(),
        source,
    };
    let bytes = if st.format == STATE_FORMAT {
        serde_json::to_vec_pretty(st)
    } else {
        serde_json::to_vec_pretty(&LeaseState {
            format: STATE_FORMAT,
            ..st.clone()
        })
    }
    .map_err(|e| err(std::io::Error::other(e)))?;
    write_atomic(path, &bytes, 0o600, 0o700).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::super::transport::channel::ChannelNetwork;
    use super::*;

    fn cfg(name: &str, dir: &Path, seeds: Vec<SocketAddr>, port: u16) -> ControlConfig {
        ControlConfig {
            name: name.into(),
            advertise_addr: "127.0.0.1".parse().unwrap(),
            vxlan_port: 4789,
            vni: 7,
            vtep_mac: [2, 0, 0, 0, 0, port as u8],
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            subnet_len: 24,
            second: None,
            seeds,
            bootstrap_expect: None,
            gossip_port: port,
            state_dir: dir.join(name),
            reclaim_after: Duration::from_secs(3600),
            leave_on_exit: false,
            membership: MembershipConfig::default(),
            keys: None,
            wg: None,
        }
    }

    /// Starts a driver named `name` on the in-memory network at `addr` (its port is
    /// also the gossip port), with `seeds`, that runs until the test ends.
    fn start(
        net: &ChannelNetwork,
        dir: &Path,
        name: &str,
        seeds: Vec<SocketAddr>,
        addr: SocketAddr,
    ) -> (ControlHandle, JoinHandle<Result<(), Error>>) {
        ControlDriver::spawn_with(
            cfg(name, dir, seeds, addr.port()),
            net.bind(addr),
            std::future::pending(),
        )
        .unwrap()
    }

    const K1: &str = "first cluster key, long enough";
    const K2: &str = "second cluster key, long enough";

    fn keys(text: &str) -> Option<KeySet> {
        Some(KeySet::parse(text).unwrap())
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("overlayd-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    async fn wait_for<T: Clone>(rx: &mut watch::Receiver<T>, mut ok: impl FnMut(&T) -> bool) -> T {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let v = rx.borrow_and_update().clone();
                if ok(&v) {
                    return v;
                }
                rx.changed().await.expect("driver alive");
            }
        })
        .await
        .expect("condition reached in time")
    }

    /// Issue 13: two nodes that name each other. Before either hears from the other
    /// it says what it waits for; then they agree on a founder, both get a subnet,
    /// and the founding decision is in the state file, so a restart founds nothing.
    #[tokio::test(start_paused = true)]
    async fn two_drivers_that_name_each_other_found_by_agreement() {
        let dir = tmpdir("found");
        let net = ChannelNetwork::new();
        let a_addr: SocketAddr = "127.0.0.1:7011".parse().unwrap();
        let b_addr: SocketAddr = "127.0.0.1:7012".parse().unwrap();
        let (a, _ta) = start(&net, &dir, "a", vec![b_addr], a_addr);
        let waiting = wait_for(&mut a.lease(), |l| l.waiting.is_some()).await;
        assert_eq!(
            waiting.waiting.unwrap().to_string(),
            "waiting to found: 1 of 2 initial peers present, 2 needed (127.0.0.1:7012 not heard from)"
        );
        let (b, _tb) = start(&net, &dir, "b", vec![a_addr], b_addr);
        let la = wait_for(&mut a.lease(), |l| l.subnet.is_some()).await;
        let lb = wait_for(&mut b.lease(), |l| l.subnet.is_some()).await;
        assert_ne!(la.subnet, lb.subnet);
        let (sa, sb) = (a.status().await.unwrap(), b.status().await.unwrap());
        assert!(sa.founder.is_some());
        assert_eq!(sa.founder, sb.founder);
        for n in ["a", "b"] {
            let saved = load_state(&dir.join(n).join(STATE_FILE)).unwrap().unwrap();
            assert_eq!(saved.founding.decided, sa.founder, "{n}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn two_drivers_in_memory() {
        let dir = tmpdir("mem");
        let net = ChannelNetwork::new();
        let a_addr: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let b_addr: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let (a, _ta) = start(&net, &dir, "a", vec![], a_addr);
        let (b, tb) = start(&net, &dir, "b", vec![a_addr], b_addr);
        let la = wait_for(&mut a.lease(), |l| l.subnet.is_some()).await;
        let lb = wait_for(&mut b.lease(), |l| l.subnet.is_some()).await;
        assert_ne!(la.subnet, lb.subnet);
        let pa = wait_for(&mut a.peers(), |p| p.len() == 1).await;
        assert_eq!(pa[0].name, "b");
        assert_eq!(Some(pa[0].subnet), lb.subnet);
        assert_eq!(pa[0].underlay, "127.0.0.1:4789".parse().unwrap());
        let st = b.status().await.unwrap();
        assert_eq!(st.lease, lb.subnet);
        assert_eq!(st.witnesses, vec!["a".to_string()]);
        // The lease is persisted and survives a restart of the driver.
        let saved = load_state(&dir.join("b").join(STATE_FILE))
            .unwrap()
            .unwrap();
        assert!(saved.lease.is_some());
        tb.abort();
        let _ = tb.await;
        let (b2, _tb2) = start(&net, &dir, "b", vec![a_addr], b_addr);
        let lb2 = wait_for(&mut b2.lease(), |l| l.subnet.is_some()).await;
        assert_eq!(lb2.subnet, lb.subnet);
        // When a leaves on purpose, b sees it dead and gets its space.
        a.leave().await.unwrap();
        wait_for(&mut b2.peers(), |p| {
            p.iter()
                .all(|x| x.state == crate::control::membership::MemberState::Dead)
        })
        .await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_saves_hold_grants_and_keep_the_saved_lease() {
        let dir = tmpdir("unsaved");
        let net = ChannelNetwork::new();
        let a_addr: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let b_addr: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let (a, _ta) = start(&net, &dir, "a", vec![], a_addr);
        let la = wait_for(&mut a.lease(), |l| l.subnet.is_some()).await;
        // a's lease.json becomes a directory: every save fails from now on.
        let path = dir.join("a").join(STATE_FILE);
        let saved = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir_all(path.join("blocker")).unwrap();

        // b asks a for a subnet; a cannot save the grant, so it does not send it.
        let (b, _tb) = start(&net, &dir, "b", vec![a_addr], b_addr);
        tokio::time::sleep(Duration::from_secs(20)).await;
        let st = a.status().await.unwrap();
        let err = st.state_error.expect("the failed save is reported");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(st.held > 0);
        assert_eq!(st.lease, la.subnet, "a keeps its saved subnet");
        assert_eq!(*a.lease().borrow(), la);
        assert_eq!(b.lease().borrow().subnet, None, "b got an unsaved grant");

        // Saves work again: within a few seconds the grant goes out.
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::write(&path, saved).unwrap();
        let lb = wait_for(&mut b.lease(), |l| l.subnet.is_some()).await;
        assert_ne!(lb.subnet, la.subnet);
        assert_eq!(a.status().await.unwrap().state_error, None);
        let on_disk = load_state(&path).unwrap().unwrap();
        assert!(!on_disk.owned.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn unwritable_state_dir_is_a_start_up_error() {
        let dir = tmpdir("startup");
        // The state dir is a file: nothing can be written under it.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), b"not a dir").unwrap();
        let net = ChannelNetwork::new();
        let err = ControlDriver::spawn_with(
            cfg("a", &dir, vec![], 7001),
            net.bind("127.0.0.1:7001".parse().unwrap()),
            std::future::pending(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::State { .. }), "{err}");
        assert!(err.to_string().contains(STATE_FILE), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn an_established_node_refused_by_another_cluster_keeps_serving() {
        let dir = tmpdir("twoclusters");
        let net = ChannelNetwork::new();
        let a_addr: SocketAddr = "127.0.0.1:7021".parse().unwrap();
        let b_addr: SocketAddr = "127.0.0.1:7022".parse().unwrap();
        // b founds a cluster alone and stops; a founds another one alone.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (b, tb) =
            ControlDriver::spawn_with(cfg("b", &dir, vec![], 7022), net.bind(b_addr), async {
                let _ = stopped.await;
            })
            .unwrap();
        let lb = wait_for(&mut b.lease(), |l| l.subnet.is_some()).await;
        drop(b);
        stop.send(()).unwrap();
        tb.await.unwrap().unwrap();
        let (a, _ta) = start(&net, &dir, "a", vec![], a_addr);
        wait_for(&mut a.lease(), |l| l.subnet.is_some()).await;
        // b comes back naming a: a refuses it (another cluster id), and b, which holds
        // a subnet of its own cluster, goes on serving it instead of exiting.
        let (b, tb) = start(&net, &dir, "b", vec![a_addr], b_addr);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!tb.is_finished(), "b exited: {:?}", tb.await);
        assert_eq!(b.lease().borrow().subnet, lb.subnet);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn mismatched_cidr_refuses_to_join() {
        let dir = tmpdir("mismatch");
        let net = ChannelNetwork::new();
        let a_addr: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let b_addr: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let (_a, _ta) = start(&net, &dir, "a", vec![], a_addr);
        let mut bc = cfg("b", &dir, vec![a_addr], 7002);
        bc.cluster_cidr = "10.99.0.0/16".parse().unwrap();
        let (_b, tb) =
            ControlDriver::spawn_with(bc, net.bind(b_addr), std::future::pending()).unwrap();
        let err = tokio::time::timeout(Duration::from_secs(30), tb)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("peer a"), "{msg}");
        assert!(
            msg.contains("10.244.0.0/16") && msg.contains("10.99.0.0/16"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_key_cannot_join_and_rotation_lets_it_in() {
        let dir = tmpdir("keys");
        let net = ChannelNetwork::new();
        let a_addr: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let b_addr: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let c_addr: SocketAddr = "127.0.0.1:7003".parse().unwrap();
        let mut ac = cfg("a", &dir, vec![], 7001);
        ac.keys = keys(K1);
        let (a, _ta) =
            ControlDriver::spawn_with(ac, net.bind(a_addr), std::future::pending()).unwrap();
        wait_for(&mut a.lease(), |l| l.subnet.is_some()).await;
        // b signs with another key (and would accept a's), c has none: for 20 s
        // neither gets a lease or a peer.
        let mut bc = cfg("b", &dir, vec![a_addr], 7002);
        bc.keys = keys(&format!("{K2}\n{K1}"));
        let (b, _tb) =
            ControlDriver::spawn_with(bc, net.bind(b_addr), std::future::pending()).unwrap();
        let (c, _tc) = start(&net, &dir, "c", vec![a_addr], c_addr);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(a.peers().borrow().is_empty());
        for h in [&b, &c] {
            assert_eq!(h.lease().borrow().subnet, None);
            assert!(h.peers().borrow().is_empty());
        }
        let st = a.status().await.unwrap();
        assert!(st.peers.is_empty());
        assert!(st.rejected.unknown_key > 0, "{:?}", st.rejected);
        assert!(st.rejected.unsigned > 0, "{:?}", st.rejected);
        assert_eq!(st.auth_keys.len(), 1);
        // a rolls in b's key as its second: b joins, c still cannot.
        a.set_keys(keys(&format!("{K1}\n{K2}"))).await.unwrap();
        let lb = wait_for(&mut b.lease(), |l| l.subnet.is_some()).await;
        let pa = wait_for(&mut a.peers(), |p| p.len() == 1).await;
        assert_eq!(pa[0].name, "b");
        assert_eq!(Some(pa[0].subnet), lb.subnet);
        assert_eq!(c.lease().borrow().subnet, None);
        assert_eq!(a.status().await.unwrap().auth_keys.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn two_drivers_over_udp() {
        let dir = tmpdir("udp");
        let mut ac = cfg("a", &dir, vec![], 0);
        ac.keys = keys(K1);
        let (a, _ta) = ControlDriver::spawn(ac, std::future::pending())
            .await
            .unwrap();
        let mut bc = cfg("b", &dir, vec![a.local_addr()], 0);
        bc.keys = keys(&format!("{K1}\n{K2}"));
        let (b, _tb) = ControlDriver::spawn(bc, std::future::pending())
            .await
            .unwrap();
        let lb = wait_for(&mut b.lease(), |l| l.subnet.is_some()).await;
        let pa = wait_for(&mut a.peers(), |p| p.len() == 1).await;
        assert_eq!(Some(pa[0].subnet), lb.subnet);
        let pb = wait_for(&mut b.peers(), |p| p.len() == 1).await;
        assert_eq!(pb[0].name, "a");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_state_file_with_an_exhausted_boot_counter_is_corrupt() {
        let dir = tmpdir("boot");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(STATE_FILE);
        let mut st = LeaseState {
            boot: u64::MAX - 1,
            ..LeaseState::default()
        };
        save_state(&path, &st).unwrap();
        assert_eq!(load_state(&path).unwrap().unwrap().boot, u64::MAX - 1);
        st.boot = u64::MAX;
        save_state(&path, &st).unwrap();
        assert!(matches!(load_state(&path), Err(Error::StateCorrupt { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn peers_parse_with_default_port() {
        let p = parse_peers("127.0.0.1,127.0.0.2:8000, localhost", 7946).unwrap();
        assert_eq!(p[0], "127.0.0.1:7946".parse().unwrap());
        assert_eq!(p[1], "127.0.0.2:8000".parse().unwrap());
        assert_eq!(p[2].port(), 7946);
    }
}
