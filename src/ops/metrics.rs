//! Prometheus metrics and `/healthz` on `--metrics-addr` (default 127.0.0.1:9469).
//!
//! A [`Collector`] reads the live counters on each scrape, so nothing on the packet
//! path knows about Prometheus. The text exposition format is prometheus-client's.
//! `/healthz` answers 200 while the dataplane runs and the node has a subnet, which
//! is what a Kubernetes readiness probe needs; otherwise 503 with what the node waits
//! for, in the words of the status lease line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::daemon::pods::PodWatch;
use crate::dataplane::stats::{DirectionTotals, DropReason, BATCH_BUCKETS};
use crate::dataplane::PeerState;
use crate::ops::live::StatusSource;
use crate::ops::status::{ControlReport, NodeReport, StatusReport};

/// The collector that turns a node's status into metrics on each scrape.
#[derive(Clone)]
pub(crate) struct Exporter {
    source: Arc<StatusSource>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

/// Encodes one counter family: `samples` are (label set, value).
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Vec<(&str, &str)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes one counter without labels.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

impl Collector for Exporter {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = self.source.report();
        let stats = self.source.dataplane.stats();
        let dirs: [(&str, DirectionTotals); 2] = [("tx", stats.tx()), ("rx", stats.rx())];

        dataplane(&mut encoder, &report, &dirs)?;
        peers(&mut encoder, &report)?;
        if let Some(c) = &report.control {
            members(&mut encoder, c)?;
            leases(&mut encoder, c)?;
        }
        if let Some(p) = &self.source.pods {
            pods(&mut encoder, p)?;
        }
        node(&mut encoder, &report.node)
    }
}

/// The dataplane's totals, batch sizes, mode and (kernel mode) device errors.
fn dataplane(
    encoder: &mut DescriptorEncoder<'_>,
    report: &StatusReport,
    dirs: &[(&str, DirectionTotals); 2],
) -> Result<(), std::fmt::Error> {
    let packets: Vec<_> = dirs
        .iter()
        .map(|(d, s)| (vec![("direction", *d)], s.forwarded.0))
        .collect();
    counters(
        encoder,
        "overlayd_dataplane_packets",
        "Packets forwarded, by direction (tx: TUN to peers, rx: peers to TUN).",
        &packets,
    )?;
    let bytes: Vec<_> = dirs
        .iter()
        .map(|(d, s)| (vec![("direction", *d)], s.forwarded.1))
        .collect();
    counters(
        encoder,
        "overlayd_dataplane_bytes",
        "Inner IP bytes forwarded, by direction.",
        &bytes,
    )?;
    let drops: Vec<_> = dirs
        .iter()
        .flat_map(|(d, s)| {
            DropReason::ALL
                .iter()
                .map(move |r| (vec![("direction", *d), ("reason", r.as_str())], s.drops(*r)))
        })
        .collect();
    counters(
        encoder,
        "overlayd_dataplane_drops",
        "Packets dropped, by direction and reason.",
        &drops,
    )?;

    {
        let mut batch = encoder.encode_descriptor(
            "overlayd_dataplane_batch_size",
            "Packets handled per round of a dataplane worker.",
            None,
            MetricType::Histogram,
        )?;
        for (dir, s) in dirs {
            let (sum, count, cumulative) = s.batches();
            // prometheus-client adds the buckets up itself: give it each bucket's
            // own count, the +Inf one last.
            let mut below = 0;
            let mut buckets: Vec<(f64, u64)> = BATCH_BUCKETS
                .iter()
                .zip(cumulative)
                .map(|(b, c)| (*b as f64, c - std::mem::replace(&mut below, c)))
                .collect();
            // Read while a worker counts, the buckets may be one round ahead of
            // `count`: the count is then the buckets' total.
            let count = count.max(below);
            buckets.push((f64::INFINITY, count - below));
            batch
                .encode_family(&[("direction", *dir)])?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum as f64, count, &buckets, None,
                )?;
        }
    }

    {
        let mut mode = encoder.encode_descriptor(
            "overlayd_dataplane_mode",
            "1 for the dataplane that carries this node's pod traffic (kernel: a programmed vxlan device; userspace: the TUN dataplane), labelled with why.",
            None,
            MetricType::Gauge,
        )?;
        for m in crate::dataplane::DataplaneMode::ALL {
            let on = i64::from(report.path.mode == m);
            let reason = if on == 1 {
                report.path.reason.as_str()
            } else {
                ""
            };
            ConstGauge::new(on)
                .encode(mode.encode_family(&[("mode", m.as_str()), ("reason", reason)])?)?;
        }
    }
    if !report.path.device_errors.is_empty() {
        let errors: Vec<_> = report
            .path
            .device_errors
            .iter()
            .map(|(k, v)| (vec![("counter", k.as_str())], *v))
            .collect();
        counters(
            encoder,
            "overlayd_kernel_device_errors",
            "Drops and errors the kernel counts on the vxlan device (kernel dataplane).",
            &errors,
        )?;
    }
    Ok(())
}

/// Per-peer traffic and drops, the WireGuard sessions, peers by state.
fn peers(
    encoder: &mut DescriptorEncoder<'_>,
    report: &StatusReport,
) -> Result<(), std::fmt::Error> {
    let per_peer =
        |f: fn(&crate::ops::status::PeerReport) -> (u64, u64)| -> Vec<(Vec<(&str, &str)>, u64)> {
            report
                .peers
                .iter()
                .flat_map(|p| {
                    let (tx, rx) = f(p);
                    [
                        (vec![("peer", p.name.as_str()), ("direction", "tx")], tx),
                        (vec![("peer", p.name.as_str()), ("direction", "rx")], rx),
                    ]
                })
                .collect()
        };
    counters(
        encoder,
        "overlayd_peer_packets",
        "Packets exchanged with each peer.",
        &per_peer(|p| (p.tx_packets, p.rx_packets)),
    )?;
    counters(
        encoder,
        "overlayd_peer_bytes",
        "Inner bytes exchanged with each peer.",
        &per_peer(|p| (p.tx_bytes, p.rx_bytes)),
    )?;

    wireguard(encoder, report)?;

    counters(
        encoder,
        "overlayd_peer_drops",
        "Packets to or from each peer that were dropped (tx: peer dead; rx: bad frame from it).",
        &per_peer(|p| (p.tx_dropped, p.rx_dropped)),
    )?;

    {
        let mut peers = encoder.encode_descriptor(
            "overlayd_peers",
            "Peers in the forwarding table, by state.",
            None,
            MetricType::Gauge,
        )?;
        for state in PeerState::ALL {
            let n = report.peers.iter().filter(|p| p.state == state).count() as i64;
            ConstGauge::new(n).encode(peers.encode_family(&[("state", state.as_str())])?)?;
        }
    }
    Ok(())
}

/// `--encrypt`: each peer's WireGuard session, handshake age and failures.
fn wireguard(
    encoder: &mut DescriptorEncoder<'_>,
    report: &StatusReport,
) -> Result<(), std::fmt::Error> {
    let wg: Vec<_> = report
        .peers
        .iter()
        .filter_map(|p| p.wg.as_ref().map(|w| (p.name.as_str(), w)))
        .collect();
    if !wg.is_empty() {
        {
            let mut up = encoder.encode_descriptor(
                "overlayd_wg_session_established",
                "1 while a WireGuard session with the peer is established (encrypted dataplane).",
                None,
                MetricType::Gauge,
            )?;
            for (peer, w) in &wg {
                let v = i64::from(w.session.session == "established");
                ConstGauge::new(v).encode(up.encode_family(&[("peer", *peer)])?)?;
            }
        }
        {
            let mut age = encoder.encode_descriptor(
                "overlayd_wg_handshake_age_seconds",
                "Seconds since the last completed WireGuard handshake with the peer (absent: none).",
                None,
                MetricType::Gauge,
            )?;
            for (peer, w) in &wg {
                if let Some(ms) = w.session.handshake_age_ms {
                    ConstGauge::new(ms as f64 / 1000.0)
                        .encode(age.encode_family(&[("peer", *peer)])?)?;
                }
            }
        }
        let failures: Vec<_> = wg
            .iter()
            .flat_map(|(peer, w)| {
                [
                    "bad_tag",
                    "replay",
                    "unknown_key",
                    "no_session",
                    "bad_handshake",
                ]
                .into_iter()
                .map(move |r| {
                    let n = w.session.failures.get(r).copied().unwrap_or(0);
                    (vec![("peer", *peer), ("reason", r)], n)
                })
            })
            .collect();
        counters(
            encoder,
            "overlayd_wg_failures",
            "WireGuard messages from each peer that failed, by reason (bad_tag, replay, unknown_key, no_session, bad_handshake).",
            &failures,
        )?;
    }
    Ok(())
}

/// Gossip members by state, each member, and what a node without a subnet waits for.
fn members(encoder: &mut DescriptorEncoder<'_>, c: &ControlReport) -> Result<(), std::fmt::Error> {
    {
        let mut members = encoder.encode_descriptor(
            "overlayd_gossip_members",
            "Members gossip knows, by state, with or without a lease.",
            None,
            MetricType::Gauge,
        )?;
        for state in PeerState::ALL {
            let n = c.members.iter().filter(|m| m.state == state).count() as i64;
            ConstGauge::new(n).encode(members.encode_family(&[("state", state.as_str())])?)?;
        }
    }
    {
        let mut member = encoder.encode_descriptor(
            "overlayd_gossip_member",
            "1 for each member gossip knows, with its state and lease (\"none yet\" before it has one).",
            None,
            MetricType::Gauge,
        )?;
        for m in &c.members {
            let state = m.state.as_str();
            let lease = m.subnet.map_or("none yet".to_string(), |s| s.to_string());
            ConstGauge::new(1i64).encode(member.encode_family(&[
                ("name", m.name.as_str()),
                ("state", state),
                ("lease", lease.as_str()),
            ])?)?;
        }
    }
    if let Some(w) = &c.waiting {
        let mut waiting = encoder.encode_descriptor(
            "overlayd_lease_waiting",
            "1 while this node uses no subnet, labelled with what it waits for.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(waiting.encode_family(&[("reason", w.as_str())])?)?;
    }
    Ok(())
}

/// The lease space, this node's lease flags, gossip traffic and rejections.
fn leases(encoder: &mut DescriptorEncoder<'_>, c: &ControlReport) -> Result<(), std::fmt::Error> {
    let used = i64::try_from(c.leases_used).unwrap_or(i64::MAX);
    let total = i64::try_from(c.leases_total).unwrap_or(i64::MAX);
    for (name, help, value) in [
        (
            "overlayd_leases_used",
            "Subnets of the cluster CIDR in use, ours included.",
            used,
        ),
        (
            "overlayd_leases_total",
            "Subnets in the cluster CIDR.",
            total,
        ),
        (
            "overlayd_leases_free",
            "Subnets of the cluster CIDR not in use.",
            total.saturating_sub(used),
        ),
        (
            "overlayd_lease_fenced",
            "1 while this node holds a lease it may not use (cut off from its witnesses).",
            i64::from(c.fenced),
        ),
        (
            "overlayd_lease_exhausted",
            "1 while the cluster CIDR has no free subnet for this node.",
            i64::from(c.exhausted),
        ),
        (
            "overlayd_lease_state_unsaved",
            "1 while the lease state cannot be saved to the state dir (see overlayd status).",
            i64::from(c.state_error.is_some()),
        ),
        (
            "overlayd_gossip_auth_keys",
            "Cluster keys accepted for gossip (0: gossip is not authenticated).",
            c.auth_keys.len() as i64,
        ),
    ] {
        let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value).encode(m)?;
    }
    counters(
        encoder,
        "overlayd_gossip_messages",
        "Gossip datagrams, by direction.",
        &[
            (vec![("direction", "tx")], c.gossip_tx_messages),
            (vec![("direction", "rx")], c.gossip_rx_messages),
        ],
    )?;
    counters(
        encoder,
        "overlayd_gossip_bytes",
        "Gossip bytes (UDP payload), by direction.",
        &[
            (vec![("direction", "tx")], c.gossip_tx_bytes),
            (vec![("direction", "rx")], c.gossip_rx_bytes),
        ],
    )?;
    counter(
        encoder,
        "overlayd_gossip_dropped",
        "Gossip datagrams dropped as malformed, oversized, from another cluster, or lease messages from a non-member.",
        c.gossip_dropped,
    )?;
    counter(
        encoder,
        "overlayd_gossip_peer_deaths",
        "Peers this node saw declared dead (failed probes or a leave).",
        c.peer_deaths,
    )?;
    counter(
        encoder,
        "overlayd_lease_messages_held",
        "Lease messages not sent because the lease state could not be saved.",
        c.lease_messages_held,
    )?;
    let rejected: Vec<_> = c
        .gossip_rejected
        .iter()
        .map(|(r, n)| (vec![("reason", r.as_str())], *n))
        .collect();
    counters(
        encoder,
        "overlayd_gossip_rejected",
        "Gossip datagrams rejected by the cluster-key check, by reason (unsigned, signed_without_key, malformed_auth, unknown_key, bad_tag, stale, replay).",
        &rejected,
    )?;
    Ok(())
}

/// This node's identity and uptime.
fn node(encoder: &mut DescriptorEncoder<'_>, node: &NodeReport) -> Result<(), std::fmt::Error> {
    {
        let mut info = encoder.encode_descriptor(
            "overlayd_node",
            "This node: name, subnet (and dual-stack its IPv6 subnet), VTEP MAC and underlay address.",
            None,
            MetricType::Info,
        )?;
        let subnet = node.subnet.map(|s| s.to_string()).unwrap_or_default();
        let subnet_v6 = node.subnet_v6.map(|s| s.to_string()).unwrap_or_default();
        let mac = node.vtep_mac.to_string();
        let addr = node.advertise_addr.to_string();
        let mut labels = vec![
            ("node", node.name.as_str()),
            ("subnet", subnet.as_str()),
            ("vtep_mac", mac.as_str()),
            ("advertise_addr", addr.as_str()),
        ];
        if node.cluster_cidr_v6.is_some() {
            labels.push(("subnet_v6", subnet_v6.as_str()));
        }
        info.encode_info(&labels)?;
    }
    let uptime = encoder.encode_descriptor(
        "overlayd_uptime_seconds",
        "Seconds since the daemon started.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(node.uptime_secs as i64).encode(uptime)
}

/// The CNI plugin's pods and the reclaim of their addresses.
fn pods(encoder: &mut DescriptorEncoder<'_>, pods: &PodWatch) -> Result<(), std::fmt::Error> {
    let gauge = encoder.encode_descriptor(
        "overlayd_pods",
        "Pods on this node with an address from the CNI plugin, at the last scan of its store.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(pods.pods() as i64).encode(gauge)?;
    counter(
        encoder,
        "overlayd_pods_reclaimed",
        "Pod addresses freed because the pod's netns and host veth were gone for --reclaim-pod-after (a DEL that never came).",
        pods.reclaimed(),
    )?;
    Ok(())
}

/// Builds the registry for `source`.
pub(crate) fn registry(source: Arc<StatusSource>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exporter { source }));
    registry
}

/// Renders the registry in the text exposition format.
pub(crate) fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; a collector error leaves a partial page.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    registry: Arc<Registry>,
    source: Arc<StatusSource>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(&registry),
        ),
        // Ready once the dataplane runs (it does while this server does) and the
        // node has a subnet for its pods.
        (&Method::GET, "/healthz") => match source.node.borrow().subnet {
            Some(subnet) => response(StatusCode::OK, TEXT, format!("ok: subnet {subnet}\n")),
            None => {
                // The same reason as the status lease line and the log.
                let why = source
                    .control
                    .as_ref()
                    .and_then(|c| c.report.borrow().waiting.clone())
                    .unwrap_or_else(|| "no subnet yet".to_string());
                response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("not ready: {why}\n"),
                )
            }
        },
        (&Method::GET, _) => response(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics or /healthz\n".into(),
        ),
        _ => response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into()),
    })
}

/// Binds `addr`.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` and `/healthz` for `source` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, source: Arc<StatusSource>) {
    let registry = Arc::new(registry(source.clone()));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: retrying at once would spin a core.
                tracing::warn!("metrics: cannot accept a connection: {e}");
                tokio::time::sleep(crate::ops::admin::ACCEPT_RETRY).await;
                continue;
            }
        };
        let registry = registry.clone();
        let source = source.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, registry.clone(), source.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}
