//! [`DataplaneHandle`]: the one front end of a running dataplane, whichever mode
//! carries the traffic. The daemon's peer table feeds it forwarding tables and the
//! node's gateway; status and metrics read its counters. The userspace workers and
//! the kernel programmer each take the receiving ends ([`Feeds`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::fib::Fib;
use super::icmp::Routers;
use super::mode::PathInfo;
use super::stats::NodeStats;
use super::wg::WgControl;

/// The front end of a running dataplane: counters, the path in use and the
/// forwarding-table feed.
#[derive(Clone)]
pub(crate) struct DataplaneHandle {
    stats: Arc<NodeStats>,
    fib: watch::Sender<Arc<Fib>>,
    router: watch::Sender<Routers>,
    path: Arc<PathInfo>,
    device_errors: Arc<Mutex<BTreeMap<String, u64>>>,
    encryption: Option<WgControl>,
    refresh: mpsc::Sender<oneshot::Sender<()>>,
}

/// How long a reader waits for counters read on request (kernel mode).
const REFRESH_WAIT: Duration = Duration::from_secs(1);

/// The receiving ends of a handle's feeds, for the dataplane that forwards.
pub(crate) struct Feeds {
    /// The forwarding table in force.
    pub(crate) fib: watch::Receiver<Arc<Fib>>,
    /// The node's gateway (the source of ICMP replies and of local traffic).
    pub(crate) router: watch::Receiver<Routers>,
    /// The counters the dataplane writes.
    pub(crate) stats: Arc<NodeStats>,
    /// Error and drop counters of the kernel device, by name (kernel mode).
    pub(crate) device_errors: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Requests to copy the kernel's counters now and answer when done (kernel
    /// mode). A dataplane that counts as it forwards drops this end, and
    /// [`DataplaneHandle::refresh_counters`] then returns at once.
    pub(crate) refresh: mpsc::Receiver<oneshot::Sender<()>>,
}

impl DataplaneHandle {
    /// The handle of an encrypted dataplane, which rotates its key.
    pub(crate) fn with_encryption(mut self, control: WgControl) -> DataplaneHandle {
        self.encryption = Some(control);
        self
    }

    /// The encrypted dataplane's key control, if the dataplane encrypts.
    pub(crate) fn encryption(&self) -> Option<&WgControl> {
        self.encryption.as_ref()
    }

    /// A handle over `workers` sets of counters, starting with `fib`, for the
    /// dataplane described by `path`; the feeds go to the dataplane.
    pub(crate) fn new(fib: Arc<Fib>, workers: usize, path: PathInfo) -> (DataplaneHandle, Feeds) {
        let stats = Arc::new(NodeStats::new(workers));
        let (fib_tx, fib_rx) = watch::channel(fib);
        let (router_tx, router_rx) = watch::channel(Routers::default());
        let device_errors = Arc::new(Mutex::new(BTreeMap::new()));
        let (refresh_tx, refresh_rx) = mpsc::channel(4);
        let handle = DataplaneHandle {
            stats: stats.clone(),
            fib: fib_tx,
            router: router_tx,
            path: Arc::new(path),
            device_errors: device_errors.clone(),
            encryption: None,
            refresh: refresh_tx,
        };
        let feeds = Feeds {
            fib: fib_rx,
            router: router_rx,
            stats,
            device_errors,
            refresh: refresh_rx,
        };
        (handle, feeds)
    }

    /// Brings the counters up to date before a reader (`overlayd status`,
    /// `diagnose`) looks at them: the kernel dataplane, which copies the kernel's
    /// counters once a second, copies them now; a dataplane that counts as it
    /// forwards has nothing to do. Waits at most a second.
    pub(crate) async fn refresh_counters(&self) {
        let (done, copied) = oneshot::channel();
        if self.refresh.try_send(done).is_ok() {
            let _ = tokio::time::timeout(REFRESH_WAIT, copied).await;
        }
    }

    /// The live counters of every worker.
    pub(crate) fn stats(&self) -> &Arc<NodeStats> {
        &self.stats
    }

    /// Which dataplane runs, on which device, and why.
    pub(crate) fn path(&self) -> &PathInfo {
        &self.path
    }

    /// The kernel device's error and drop counters, by name (empty in userspace
    /// mode, where every drop is counted by reason instead).
    pub(crate) fn device_errors(&self) -> BTreeMap<String, u64> {
        self.device_errors
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Installs a new forwarding table; the dataplane uses it from its next round.
    pub(crate) fn set_fib(&self, fib: Arc<Fib>) {
        self.fib.send_replace(fib);
    }

    /// Sets the node's gateway (the address ICMP unreachable replies and local
    /// traffic come from); `None` while the node has no subnet.
    pub(crate) fn set_router(&self, router: Routers) {
        self.router.send_replace(router);
    }

    /// The forwarding table in use.
    pub(crate) fn fib(&self) -> Arc<Fib> {
        self.fib.borrow().clone()
    }
}
