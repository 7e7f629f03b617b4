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
}

/// The whole status reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// This node.
    pub node: NodeReport,
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
                }
            })
            .collect();
        StatusReport {
            node,
            peers,
            dataplane: self.dataplane.stats().snapshot(),
        }
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
    let reply = match line.trim() {
        "status" => {
            serde_json::to_string(&source.report()).unwrap_or_else(|e| error_json(&e.to_string()))
        }
        other => error_json(&format!("unknown request '{other}'")),
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
    /// The daemon's reply could not be read.
    #[error("bad reply from overlayd on {path}: {why}")]
    BadReply {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// Asks the daemon whose run dir is `run_dir` for its status.
pub async fn request(run_dir: &Path) -> Result<StatusReport, ClientError> {
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
        .write_all(b"status\n")
        .await
        .map_err(|e| bad(e.to_string()))?;
    let mut reply = String::new();
    let read = stream.read_to_string(&mut reply);
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| bad("timed out".into()))?
        .map_err(|e| bad(e.to_string()))?;
    serde_json::from_str(&reply).map_err(|e| bad(format!("{e}: {}", reply.trim())))
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
    let _ = writeln!(out, "\nPeers ({})", report.peers.len());
    let _ = writeln!(
        out,
        "  {:<20} {:<8} {:<7} {:<18} {:<22} {:>10} {:>12} {:>10} {:>12}",
        "NAME",
        "STATE",
        "ORIGIN",
        "SUBNET",
        "UNDERLAY",
        "TX PKTS",
        "TX BYTES",
        "RX PKTS",
        "RX BYTES"
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
            "  {:<20} {:<8} {:<7} {:<18} {:<22} {:>10} {:>12} {:>10} {:>12}",
            p.name,
            state,
            origin,
            p.subnet.to_string(),
            p.underlay.to_string(),
            p.tx_packets,
            human_bytes(p.tx_bytes),
            p.rx_packets,
            human_bytes(p.rx_bytes)
        );
    }
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
