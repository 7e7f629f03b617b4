//! `overlayd status`: the daemon answers on a unix socket in `--run-dir` (mode 0600),
//! the client prints the answer as text or JSON.
//!
//! The protocol is one request line (`status`) and one JSON reply, then the daemon
//! closes the connection.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::dataplane::driver::DataplaneHandle;
use crate::dataplane::stats::StatsSnapshot;
use crate::dataplane::wire::MacAddr;
use crate::dataplane::{PeerOrigin, PeerState};

/// File name of the status socket inside `--run-dir`.
pub const SOCKET_FILE: &str = "overlayd.sock";

/// This node, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Node name.
    pub name: String,
    /// Underlay address peers send to.
    pub advertise_addr: IpAddr,
    /// VXLAN UDP port.
    pub port: u16,
    /// VNI.
    pub vni: u32,
    /// VTEP MAC.
    pub vtep_mac: MacAddr,
    /// Pod subnet, once the node has one.
    pub subnet: Option<IpNet>,
    /// Gateway address on the bridge, once the node has a subnet.
    pub gateway: Option<IpAddr>,
    /// Cluster CIDR.
    pub cluster_cidr: IpNet,
    /// Overlay MTU.
    pub mtu: u32,
    /// Bridge name.
    pub bridge: String,
    /// TUN name.
    pub tun: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
}

/// One peer, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// Peer name.
    pub name: String,
    /// Its subnet.
    pub subnet: IpNet,
    /// Its underlay address and port.
    pub underlay: SocketAddr,
    /// Its VTEP MAC.
    pub vtep_mac: MacAddr,
    /// Alive, suspect or dead.
    pub state: PeerState,
    /// Static or learned.
    pub origin: PeerOrigin,
    /// Packets sent to it.
    pub tx_packets: u64,
    /// Inner bytes sent to it.
    pub tx_bytes: u64,
    /// Packets received from it.
    pub rx_packets: u64,
    /// Inner bytes received from it.
    pub rx_bytes: u64,
    /// Packets to it dropped (it was dead).
    pub tx_dropped: u64,
    /// Datagrams from it dropped after it was identified.
    pub rx_dropped: u64,
    /// Seconds since the last VXLAN packet from it (to 1 s), if any arrived.
    pub last_heard_secs: Option<u64>,
}

/// The control plane, as status shows it (absent with a fixed `--subnet`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReport {
    /// The leased subnet this node uses now.
    pub lease: Option<IpNet>,
    /// Whether the node holds a lease it may not use (cut off from its witnesses).
    pub fenced: bool,
    /// Whether the last request for a subnet found no free space.
    pub exhausted: bool,
    /// The nodes that witness our lease.
    pub witnesses: Vec<String>,
    /// Gossip datagrams dropped as malformed, oversized or mismatched.
    pub gossip_dropped: u64,
    /// Ids of the cluster keys in use, signing key first. Empty: gossip is not
    /// authenticated (no `--secret-file`).
    #[serde(default)]
    pub auth_keys: Vec<String>,
    /// Gossip datagrams rejected by the authentication layer, by reason.
    #[serde(default)]
    pub gossip_rejected: std::collections::BTreeMap<String, u64>,
    /// Gossip datagrams sent.
    pub gossip_tx_messages: u64,
    /// Gossip bytes sent (UDP payload).
    pub gossip_tx_bytes: u64,
    /// Gossip datagrams received.
    pub gossip_rx_messages: u64,
    /// Gossip bytes received (UDP payload).
    pub gossip_rx_bytes: u64,
    /// Members with a subnet, by state.
    pub alive: usize,
    /// Suspect members.
    pub suspect: usize,
    /// Dead members.
    pub dead: usize,
    /// Subnets of the cluster CIDR in use (ours included).
    pub leases_used: u64,
    /// Subnets of the cluster CIDR in all.
    pub leases_total: u64,
    /// When this report was taken (seconds of daemon uptime).
    pub as_of_secs: u64,
    /// Peers this node has seen declared dead since it started.
    #[serde(default)]
    pub peer_deaths: u64,
    /// Why the lease state cannot be saved, while it cannot: the node keeps its saved
    /// subnet, holds back lease messages and retries every second.
    #[serde(default)]
    pub state_error: Option<String>,
    /// Lease messages held back because the lease state could not be saved.
    #[serde(default)]
    pub lease_messages_held: u64,
}

impl ControlReport {
    /// The report for a control-plane snapshot `st`, with `total` subnets in the
    /// cluster CIDR, taken `as_of_secs` into the daemon's life.
    pub fn from_status(st: &crate::control::Status, total: u64, as_of_secs: u64) -> ControlReport {
        use crate::control::PeerState as Ctl;
        let count = |state: Ctl| st.peers.iter().filter(|p| p.state == state).count();
        ControlReport {
            lease: st.lease,
            fenced: st.fenced,
            exhausted: st.exhausted,
            witnesses: st.witnesses.clone(),
            gossip_dropped: st.dropped,
            auth_keys: st.auth_keys.clone(),
            gossip_rejected: st
                .rejected
                .by_reason()
                .iter()
                .map(|(r, n)| (r.to_string(), *n))
                .collect(),
            gossip_tx_messages: st.traffic.tx_datagrams,
            gossip_tx_bytes: st.traffic.tx_bytes,
            gossip_rx_messages: st.traffic.rx_datagrams,
            gossip_rx_bytes: st.traffic.rx_bytes,
            alive: count(Ctl::Alive),
            suspect: count(Ctl::Suspect),
            dead: count(Ctl::Dead),
            leases_used: st.peers.len() as u64 + u64::from(st.lease.is_some()),
            leases_total: total,
            as_of_secs,
            peer_deaths: st.deaths,
            state_error: st.state_error.clone(),
            lease_messages_held: st.held,
        }
    }
}

/// The whole status reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// This node.
    pub node: NodeReport,
    /// Gossip and leases, when the subnet comes from a lease.
    pub control: Option<ControlReport>,
    /// Every peer in the forwarding table.
    pub peers: Vec<PeerReport>,
    /// Dataplane counters, drops by reason included.
    pub dataplane: StatsSnapshot,
}

/// What the status server needs to build a report.
pub struct StatusSource {
    /// The node report; the daemon updates it when the subnet changes (uptime is
    /// filled in per request).
    pub node: tokio::sync::watch::Sender<NodeReport>,
    /// When the daemon started.
    pub started: Instant,
    /// The running dataplane.
    pub dataplane: DataplaneHandle,
    /// The control plane, when leases are in use, and its latest report.
    pub control: Option<(
        crate::control::driver::ControlHandle,
        tokio::sync::watch::Receiver<ControlReport>,
    )>,
    /// Asks the daemon to stop (after `overlayd leave`).
    pub stop: tokio::sync::watch::Sender<bool>,
    /// Per peer: received packets at the last sample, and when that count last grew.
    pub heard: std::sync::Mutex<std::collections::HashMap<String, (u64, Instant)>>,
    /// Netlink, for `diagnose`.
    pub netlink: Option<crate::dataplane::netlink::Netlink>,
}

impl StatusSource {
    /// Builds a report from the live counters.
    pub fn report(&self) -> StatusReport {
        let mut node = self.node.borrow().clone();
        node.uptime_secs = self.started.elapsed().as_secs();
        let fib = self.dataplane.fib();
        let peers = fib
            .peers()
            .iter()
            .map(|p| {
                let (tx_packets, tx_bytes) = p.stats.tx.get();
                let (rx_packets, rx_bytes) = p.stats.rx.get();
                PeerReport {
                    name: p.name.clone(),
                    subnet: p.subnet,
                    underlay: p.underlay,
                    vtep_mac: p.vtep_mac,
                    state: p.state,
                    origin: p.origin,
                    tx_packets,
                    tx_bytes,
                    rx_packets,
                    rx_bytes,
                    tx_dropped: p.stats.tx_dropped.get().0,
                    rx_dropped: p.stats.rx_dropped.get().0,
                    last_heard_secs: self.last_heard(&p.name),
                }
            })
            .collect();
        let control = self
            .control
            .as_ref()
            .map(|(_, report)| report.borrow().clone());
        StatusReport {
            node,
            control,
            peers,
            dataplane: self.dataplane.stats().snapshot(),
        }
    }
}

impl StatusSource {
    /// Notes which peers' receive counters grew since the last call; the daemon calls
    /// it once a second, so "last heard" is accurate to a second and the packet path
    /// never reads a clock.
    pub fn sample_heard(&self) {
        let now = Instant::now();
        let fib = self.dataplane.fib();
        let Ok(mut heard) = self.heard.lock() else {
            return;
        };
        for p in fib.peers() {
            let rx = p.stats.rx.get().0;
            match heard.get_mut(&p.name) {
                Some((last, at)) if rx != *last => {
                    *last = rx;
                    *at = now;
                }
                Some(_) => {}
                None if rx > 0 => {
                    heard.insert(p.name.clone(), (rx, now));
                }
                None => {}
            }
        }
    }

    fn last_heard(&self, name: &str) -> Option<u64> {
        let heard = self.heard.lock().ok()?;
        heard.get(name).map(|(_, at)| at.elapsed().as_secs())
    }

    /// Like [`StatusSource::report`], with the control plane asked now rather than
    /// the once-a-second copy that metrics use.
    pub async fn fresh_report(&self) -> StatusReport {
        // Traffic since the last tick counts as heard now, not "never".
        self.sample_heard();
        let mut report = self.report();
        if let Some((handle, cached)) = &self.control {
            let total = cached.borrow().leases_total;
            if let Ok(st) = handle.status().await {
                report.control = Some(ControlReport::from_status(
                    &st,
                    total,
                    self.started.elapsed().as_secs(),
                ));
            }
        }
        report
    }
}

/// Binds the status socket at `path` with mode 0600, replacing a stale one.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        // A live daemon answers; a dead one left a stale socket behind.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another overlayd is answering on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves status requests until the task is dropped.
pub async fn serve(listener: UnixListener, source: Arc<StatusSource>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &source)).await;
        });
    }
}

async fn answer(stream: UnixStream, source: &StatusSource) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(1024));
    reader.read_line(&mut line).await?;
    let mut words = line.split_whitespace();
    let reply = match (words.next(), words.next(), words.next()) {
        (Some("status"), None, _) => serde_json::to_string(&source.fresh_report().await)
            .unwrap_or_else(|e| error_json(&e.to_string())),
        (Some("diagnose"), Some(ip), None) => match (ip.parse::<IpAddr>(), &source.netlink) {
            (Ok(ip), Some(netlink)) => {
                let d = crate::diagnose::diagnose(ip, source, netlink).await;
                serde_json::to_string(&d).unwrap_or_else(|e| error_json(&e.to_string()))
            }
            (Err(_), _) => error_json(&format!("'{ip}' is not an IP address")),
            (_, None) => error_json("diagnose is not available on this daemon"),
        },
        (Some("leave"), None, _) => match &source.control {
            None => error_json("this node has a fixed --subnet: there is no lease to release"),
            Some((handle, _)) => match handle.leave().await {
                Ok(()) => {
                    let _ = source.stop.send(true);
                    serde_json::json!({ "ok": "released this node's subnet and left the cluster; the daemon stops now" }).to_string()
                }
                Err(e) => error_json(&e.to_string()),
            },
        },
        (Some("rmpeer"), Some(name), None) => match &source.control {
            None => error_json("this node has a fixed --subnet: it takes no part in leases"),
            Some((handle, _)) => match handle.rmpeer(name).await {
                Ok(subnets) => serde_json::json!({ "reclaimed": subnets }).to_string(),
                Err(e) => error_json(&e.to_string()),
            },
        },
        _ => error_json(&format!("unknown request '{}'", line.trim())),
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

use tokio::io::AsyncReadExt as _;

fn error_json(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

/// Why the client could not get a status.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("overlayd is not running: nothing answers on {path} ({source})")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// The daemon refused the request.
    #[error("overlayd: {0}")]
    Refused(String),
    /// The daemon's reply could not be read.
    #[error("bad reply from overlayd on {path}: {why}")]
    BadReply {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// Sends one request line to the daemon whose run dir is `run_dir` and returns its
/// JSON reply; a reply with an `error` field becomes [`ClientError::Refused`].
pub async fn call(
    run_dir: &Path,
    request: &str,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let path = run_dir.join(SOCKET_FILE);
    let bad = |why: String| ClientError::BadReply {
        path: path.clone(),
        why,
    };
    let mut stream =
        UnixStream::connect(&path)
            .await
            .map_err(|source| ClientError::NotRunning {
                path: path.clone(),
                source,
            })?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .await
        .map_err(|e| bad(e.to_string()))?;
    let mut reply = String::new();
    let read = stream.read_to_string(&mut reply);
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| bad("timed out".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&reply).map_err(|e| bad(format!("{e}: {}", reply.trim())))?;
    if let Some(msg) = value.get("error").and_then(|e| e.as_str()) {
        return Err(ClientError::Refused(msg.to_string()));
    }
    Ok(value)
}

/// Asks the daemon whose run dir is `run_dir` for its status.
pub async fn request(run_dir: &Path) -> Result<StatusReport, ClientError> {
    let value = call(run_dir, "status", Duration::from_secs(5)).await?;
    serde_json::from_value(value).map_err(|e| ClientError::BadReply {
        path: run_dir.join(SOCKET_FILE),
        why: e.to_string(),
    })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Renders a report as text for people.
pub fn render(report: &StatusReport) -> String {
    use std::fmt::Write;
    let n = &report.node;
    let mut out = String::new();
    let _ = writeln!(out, "Node {} (up {}s)", n.name, n.uptime_secs);
    let _ = writeln!(
        out,
        "  underlay   {}:{}  VNI {}  VTEP MAC {}",
        n.advertise_addr, n.port, n.vni, n.vtep_mac
    );
    match (n.subnet, n.gateway) {
        (Some(subnet), Some(gateway)) => {
            let _ = writeln!(
                out,
                "  subnet     {subnet} (gateway {gateway} on {}, cluster {})",
                n.bridge, n.cluster_cidr
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "  subnet     none yet (cluster {}): waiting for a lease",
                n.cluster_cidr
            );
        }
    }
    let _ = writeln!(out, "  mtu        {} (TUN {})", n.mtu, n.tun);
    out.push_str(&render_leases(report));
    out.push_str(&render_peers(report));
    let d = &report.dataplane;
    let _ = writeln!(out, "\nDataplane");
    let _ = writeln!(
        out,
        "  sent       {} packets, {}",
        d.tx_packets,
        human_bytes(d.tx_bytes)
    );
    let _ = writeln!(
        out,
        "  received   {} packets, {}",
        d.rx_packets,
        human_bytes(d.rx_bytes)
    );
    if d.drops.is_empty() {
        let _ = writeln!(out, "  drops      none");
    } else {
        let _ = writeln!(out, "  drops");
        for (reason, count) in &d.drops {
            let _ = writeln!(out, "    {reason:<20} {count}");
        }
    }
    out
}

/// Renders this node's lease and the cluster's lease usage.
pub fn render_leases(report: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(c) = &report.control {
        let lease = match (c.lease, c.fenced, c.exhausted) {
            (Some(l), false, _) => format!("{l}"),
            (_, true, _) => "fenced: cut off from its witnesses, not using its subnet".to_string(),
            (None, _, true) => "none: the cluster CIDR has no free subnet (retrying)".to_string(),
            (None, _, false) => "none yet: asking the cluster".to_string(),
        };
        let _ = writeln!(out, "  lease      {lease}");
        if let Some(e) = &c.state_error {
            let _ = writeln!(
                out,
                "  state      NOT SAVED: {e}; keeping the saved subnet, lease messages held ({}), retrying",
                c.lease_messages_held
            );
        }
        let _ = writeln!(
            out,
            "  gossip     {} alive, {} suspect, {} dead ({} deaths seen); {} bad datagrams dropped",
            c.alive, c.suspect, c.dead, c.peer_deaths, c.gossip_dropped
        );
        let rejected: u64 = c.gossip_rejected.values().sum();
        let why: Vec<String> = c
            .gossip_rejected
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        let rejected = if rejected == 0 {
            "none rejected".to_string()
        } else {
            format!("{rejected} datagrams rejected ({})", why.join(", "))
        };
        match c.auth_keys.split_first() {
            None => {
                let _ = writeln!(
                    out,
                    "  auth       WARNING: gossip is not authenticated; any host on the underlay can join and claim subnets (set --secret-file; `overlayd genkey` makes a key); {rejected}"
                );
            }
            Some((signing, [])) => {
                let _ = writeln!(out, "  auth       cluster key {signing}; {rejected}");
            }
            Some((signing, also)) => {
                let _ = writeln!(
                    out,
                    "  auth       cluster key {signing}, also accepting {} (rotation); {rejected}",
                    also.join(", ")
                );
            }
        }
        let _ = writeln!(
            out,
            "  traffic    sent {} datagrams ({}), received {} ({})",
            c.gossip_tx_messages,
            human_bytes(c.gossip_tx_bytes),
            c.gossip_rx_messages,
            human_bytes(c.gossip_rx_bytes)
        );
        let _ = writeln!(
            out,
            "  leases     {} of {} subnets in use; witnesses: {}",
            c.leases_used,
            c.leases_total,
            if c.witnesses.is_empty() {
                "none".to_string()
            } else {
                c.witnesses.join(", ")
            }
        );
    } else {
        let _ = writeln!(out, "  lease      none: fixed --subnet");
    }
    out
}

/// Renders the peer table.
pub fn render_peers(report: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "\nPeers ({})", report.peers.len());
    let _ = writeln!(
        out,
        "  {:<20} {:<8} {:<7} {:<18} {:<22} {:>10} {:>12} {:>10} {:>12} {:>9} {:>11}",
        "NAME",
        "STATE",
        "ORIGIN",
        "SUBNET",
        "UNDERLAY",
        "TX PKTS",
        "TX BYTES",
        "RX PKTS",
        "RX BYTES",
        "DROPS",
        "LAST HEARD"
    );
    for p in &report.peers {
        let state = serde_json::to_value(p.state)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let origin = serde_json::to_value(p.origin)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<20} {:<8} {:<7} {:<18} {:<22} {:>10} {:>12} {:>10} {:>12} {:>9} {:>11}",
            p.name,
            state,
            origin,
            p.subnet.to_string(),
            p.underlay.to_string(),
            p.tx_packets,
            human_bytes(p.tx_bytes),
            p.rx_packets,
            human_bytes(p.rx_bytes),
            p.tx_dropped + p.rx_dropped,
            p.last_heard_secs
                .map_or("never".to_string(), |s| format!("{s}s ago"))
        );
    }
    out
}
