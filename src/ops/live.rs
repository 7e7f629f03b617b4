//! The daemon's live state behind `overlayd status`, `diagnose` and the metrics: the
//! node report it keeps current, the dataplane and control handles, and when each
//! peer was last heard from. [`StatusSource::report`] turns it into a
//! [`StatusReport`].
//!
//! Left out: the report types and their text ([`crate::ops::status`]), the admin socket
//! ([`crate::ops::admin`]) and the metrics exposition ([`crate::ops::metrics`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::watch;

use crate::control::driver::ControlHandle;
use crate::dataplane::netlink::Netlink;
use crate::dataplane::DataplaneHandle;
use crate::ops::status::{ControlReport, NodeReport, PeerReport, StatusReport};

/// The live state status, diagnose and metrics read: the daemon fills it in and
/// keeps it current.
pub(crate) struct StatusSource {
    /// The node report; the daemon updates it when the subnet changes (uptime is
    /// filled in per request).
    pub(crate) node: watch::Sender<NodeReport>,
    /// When the daemon started.
    pub(crate) started: Instant,
    /// The running dataplane.
    pub(crate) dataplane: DataplaneHandle,
    /// The control plane, when leases are in use.
    pub(crate) control: Option<ControlSource>,
    /// Asks the daemon to stop (after `overlayd leave`).
    pub(crate) stop: watch::Sender<bool>,
    /// Per peer name: when its receive counter last grew.
    pub(crate) heard: Mutex<HashMap<String, Heard>>,
    /// Netlink, for `diagnose`.
    pub(crate) netlink: Option<Netlink>,
    /// `--state-dir`, where `rotate-key` keeps the new WireGuard key.
    pub(crate) state_dir: std::path::PathBuf,
    /// The CNI plugin's pods and the reclaim of their leaked addresses, when the
    /// daemon knows the plugin's store (`--install-cni` or `--cni-data-dir`).
    pub(crate) pods: Option<std::sync::Arc<crate::daemon::pods::PodWatch>>,
}

/// The control plane as status reads it.
#[derive(Clone)]
pub(crate) struct ControlSource {
    /// Asks the control task directly (`overlayd status`, `leave`, `rmpeer`).
    pub(crate) handle: ControlHandle,
    /// The control report refreshed once a second (metrics read this copy).
    pub(crate) report: watch::Receiver<ControlReport>,
}

/// When a peer was last heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Heard {
    /// Its receive packet counter at the last sample.
    pub(crate) rx_packets: u64,
    /// When that counter last grew.
    pub(crate) at: Instant,
}

impl StatusSource {
    /// Builds a report from the live counters.
    pub(crate) fn report(&self) -> StatusReport {
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
                    subnet_v6: p.subnet_v6,
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
                    wg: p.wg_key.map(|k| crate::ops::status::WgPeerReport {
                        public_key: crate::dataplane::wg::key::encode(&k),
                        session: p.stats.wg.snapshot(),
                    }),
                }
            })
            .collect();
        let control = self.control.as_ref().map(|c| c.report.borrow().clone());
        StatusReport {
            node,
            control,
            peers,
            dataplane: self.dataplane.stats().snapshot(),
            path: {
                let p = self.dataplane.path();
                crate::ops::status::PathReport {
                    mode: p.mode,
                    device: p.device.clone(),
                    reason: p.reason.clone(),
                    device_errors: self.dataplane.device_errors(),
                    wg: self
                        .dataplane
                        .encryption()
                        .map(|w| crate::ops::status::WgNodeReport {
                            port: w.port(),
                            public_key: crate::dataplane::wg::key::encode(&w.public()),
                        }),
                }
            },
        }
    }
}

impl StatusSource {
    /// Notes which peers' receive counters grew since the last call; the daemon calls
    /// it once a second, so "last heard" is accurate to a second and the packet path
    /// never reads a clock.
    pub(crate) fn sample_heard(&self) {
        let now = Instant::now();
        let fib = self.dataplane.fib();
        let Ok(mut heard) = self.heard.lock() else {
            return;
        };
        for p in fib.peers() {
            let rx = p.stats.rx.get().0;
            match heard.get_mut(&p.name) {
                Some(h) if rx != h.rx_packets => {
                    *h = Heard {
                        rx_packets: rx,
                        at: now,
                    };
                }
                Some(_) => {}
                None if rx > 0 => {
                    let h = Heard {
                        rx_packets: rx,
                        at: now,
                    };
                    heard.insert(p.name.clone(), h);
                }
                None => {}
            }
        }
    }

    fn last_heard(&self, name: &str) -> Option<u64> {
        let heard = self.heard.lock().ok()?;
        heard.get(name).map(|h| h.at.elapsed().as_secs())
    }

    /// Like [`StatusSource::report`], with the control plane asked now rather than
    /// the once-a-second copy that metrics use.
    pub(crate) async fn fresh_report(&self) -> StatusReport {
        // The kernel dataplane's counters as of now, not of its last once-a-second
        // copy; traffic since the last tick counts as heard now, not "never".
        self.dataplane.refresh_counters().await;
        self.sample_heard();
        let mut report = self.report();
        if let Some(c) = &self.control {
            let total = c.report.borrow().leases_total;
            if let Ok(st) = c.handle.status().await {
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
