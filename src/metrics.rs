//! Prometheus metrics and `/healthz` on `--metrics-addr` (default 127.0.0.1:9469).
//!
//! A [`Collector`] reads the live counters on each scrape, so nothing on the packet
//! path knows about Prometheus. The text exposition format is prometheus-client's.
//! `/healthz` answers 200 while the dataplane runs and the node has a subnet, which
//! is what a Kubernetes readiness probe needs.

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

use crate::dataplane::stats::{DirectionStats, DropReason, BATCH_BUCKETS};
use crate::dataplane::PeerState;
use crate::status::StatusSource;

/// The collector that turns a node's status into metrics on each scrape.
#[derive(Clone)]
pub struct Exporter {
    source: Arc<StatusSource>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Exporter {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = self.source.report();
        let stats = self.source.dataplane.stats();
        let dirs: [(&str, &DirectionStats); 2] = [("tx", &stats.tx), ("rx", &stats.rx)];

        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        for (dir, s) in &dirs {
            let (p, b) = s.forwarded.get();
            packets.push((dir, p));
            bytes.push((dir, b));
        }
        let labels: Vec<[(&str, &str); 1]> =
            dirs.iter().map(|(d, _)| [("direction", *d)]).collect();
        counter(
            &mut encoder,
            "overlayd_dataplane_packets",
            "Packets forwarded, by direction (tx: TUN to peers, rx: peers to TUN).",
            &[
                (&labels[0][..], packets[0].1),
                (&labels[1][..], packets[1].1),
            ],
        )?;
        counter(
            &mut encoder,
            "overlayd_dataplane_bytes",
            "Inner IP bytes forwarded, by direction.",
            &[(&labels[0][..], bytes[0].1), (&labels[1][..], bytes[1].1)],
        )?;

        let mut drops = encoder.encode_descriptor(
            "overlayd_dataplane_drops",
            "Packets dropped, by direction and reason.",
            None,
            MetricType::Counter,
        )?;
        for (dir, s) in &dirs {
            for reason in DropReason::ALL {
                let n = s.drops(reason);
                let labels = [("direction", *dir), ("reason", reason.as_str())];
                ConstCounter::new(n).encode(drops.encode_family(&labels)?)?;
            }
        }
        drop(drops);

        let mut batch = encoder.encode_descriptor(
            "overlayd_dataplane_batch_size",
            "Packets handled per wake-up of a dataplane task.",
            None,
            MetricType::Histogram,
        )?;
        for (dir, s) in &dirs {
            let (sum, count, cumulative) = s.batches();
            let buckets: Vec<(f64, u64)> = BATCH_BUCKETS
                .iter()
                .zip(cumulative)
                .map(|(b, c)| (*b as f64, c))
                .chain(std::iter::once((f64::INFINITY, count)))
                .collect();
            let labels = [("direction", *dir)];
            batch
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum as f64, count, &buckets, None,
                )?;
        }
        drop(batch);

        let mut peer_packets = encoder.encode_descriptor(
            "overlayd_peer_packets",
            "Packets exchanged with each peer.",
            None,
            MetricType::Counter,
        )?;
        for p in &report.peers {
            ConstCounter::new(p.tx_packets).encode(
                peer_packets.encode_family(&[("peer", p.name.as_str()), ("direction", "tx")])?,
            )?;
            ConstCounter::new(p.rx_packets).encode(
                peer_packets.encode_family(&[("peer", p.name.as_str()), ("direction", "rx")])?,
            )?;
        }
        drop(peer_packets);
        let mut peer_bytes = encoder.encode_descriptor(
            "overlayd_peer_bytes",
            "Inner bytes exchanged with each peer.",
            None,
            MetricType::Counter,
        )?;
        for p in &report.peers {
            ConstCounter::new(p.tx_bytes).encode(
                peer_bytes.encode_family(&[("peer", p.name.as_str()), ("direction", "tx")])?,
            )?;
            ConstCounter::new(p.rx_bytes).encode(
                peer_bytes.encode_family(&[("peer", p.name.as_str()), ("direction", "rx")])?,
            )?;
        }
        drop(peer_bytes);

        let mut peers = encoder.encode_descriptor(
            "overlayd_peers",
            "Peers in the forwarding table, by state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, name) in [
            (PeerState::Alive, "alive"),
            (PeerState::Suspect, "suspect"),
            (PeerState::Dead, "dead"),
        ] {
            let n = report.peers.iter().filter(|p| p.state == state).count() as i64;
            ConstGauge::new(n).encode(peers.encode_family(&[("state", name)])?)?;
        }
        drop(peers);

        let node = &report.node;
        let mut info = encoder.encode_descriptor(
            "overlayd_node",
            "This node: name, subnet, VTEP MAC and underlay address.",
            None,
            MetricType::Info,
        )?;
        let subnet = node.subnet.to_string();
        let mac = node.vtep_mac.to_string();
        let addr = node.advertise_addr.to_string();
        info.encode_info(&[
            ("node", node.name.as_str()),
            ("subnet", subnet.as_str()),
            ("vtep_mac", mac.as_str()),
            ("advertise_addr", addr.as_str()),
        ])?;
        drop(info);
        let uptime = encoder.encode_descriptor(
            "overlayd_uptime_seconds",
            "Seconds since the daemon started.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(node.uptime_secs as i64).encode(uptime)?;
        Ok(())
    }
}

/// Builds the registry for `source`.
pub fn registry(source: Arc<StatusSource>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exporter { source }));
    registry
}

/// Renders the registry in the text exposition format.
pub fn render(registry: &Registry) -> String {
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
) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(&registry),
        ),
        // The daemon serves this only once the node is up with a subnet.
        (&Method::GET, "/healthz") => response(StatusCode::OK, TEXT, "ok\n".into()),
        (&Method::GET, _) => response(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics or /healthz\n".into(),
        ),
        _ => response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into()),
    })
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` and `/healthz` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, registry.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}
