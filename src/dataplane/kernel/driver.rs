//! The kernel dataplane's driver: a task that keeps the vxlan device's entries and
//! the nftables ruleset in step with the forwarding table the daemon feeds it, and
//! copies the kernel's counters into the dataplane's once a second and whenever a
//! reader asks ([`crate::dataplane::DataplaneHandle::refresh_counters`]). The entries come
//! from [`super::plan`], the ruleset from [`super::ruleset`]; this file only runs
//! the requests and the timers.
//!
//! Start-up order matters for anti-spoofing: the device is created down and the
//! ruleset is installed before it goes up (and before its entries are written), so
//! no datagram reaches a pod before the filter is in place. Every 10 s the
//! entries are compared with the kernel's again, so an entry someone deleted by hand
//! comes back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::nft;
use super::plan::{changes, Entries};
use super::ruleset::{self, Member, Ruleset};
use crate::dataplane::fib::{Fib, PeerState};
use crate::dataplane::handle::Feeds;
use crate::dataplane::icmp::Routers;
use crate::dataplane::netlink::VxlanSpec;
use crate::dataplane::netlink::{disable_ipv6, Netlink};
use crate::dataplane::stats::DropReason;
use crate::dataplane::Error;

/// How often the kernel's counters are copied.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the entries are compared with the kernel's even without a change.
const REPAIR_EVERY: Duration = Duration::from_secs(10);

/// What the kernel dataplane needs to know.
#[derive(Debug, Clone)]
pub(crate) struct KernelConfig {
    /// The vxlan device.
    pub(crate) spec: VxlanSpec,
    /// The cluster CIDRs (dual-stack: both): routes inside them on the device are
    /// ours, and the rest of them is unreachable.
    pub(crate) cluster_cidrs: Vec<IpNet>,
}

/// The running kernel dataplane.
pub(crate) struct KernelDriver {
    task: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// Peer ids in the ruleset, stable for a run, so counters follow peers.
#[derive(Debug, Default)]
struct Ids {
    next: u32,
    by_name: HashMap<String, u32>,
}

/// The programmer's state between changes.
struct Programmer {
    netlink: Netlink,
    config: KernelConfig,
    index: u32,
    ids: Ids,
    /// Whether the ruleset of this run is installed (the first one replaces the table).
    installed: bool,
    /// The table whose ruleset is installed (a different one, or none after a
    /// failed install, is installed at the next update).
    ruleset_of: Option<Arc<Fib>>,
    feeds: Feeds,
}

impl KernelDriver {
    /// Creates (or reuses) the vxlan device, installs the filter and the entries for
    /// the forwarding table in `feeds`, brings the device up and starts following
    /// the feeds. Any failure here is returned before the device carries traffic.
    pub(crate) async fn start(
        netlink: Netlink,
        config: KernelConfig,
        feeds: Feeds,
    ) -> Result<KernelDriver, Error> {
        let index = netlink.ensure_vxlan(&config.spec).await?;
        if config.cluster_cidrs.iter().all(|c| c.addr().is_ipv4()) {
            match disable_ipv6(&config.spec.name) {
                Ok(()) => {}
                // An unprivileged container (the DaemonSet) has /proc/sys read-only.
                Err(Error::Sysctl { source, .. }) if source.raw_os_error() == Some(libc::EROFS) => {
                    tracing::warn!(
                        device = %config.spec.name,
                        "cannot turn IPv6 off on {}: /proc/sys is read-only here (an unprivileged container); the device keeps an IPv6 link-local address, whose solicitations it has no flood entry to send",
                        config.spec.name
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let mut p = Programmer {
            netlink,
            config,
            index,
            ids: Ids::default(),
            installed: false,
            ruleset_of: None,
            feeds,
        };
        let fib = p.feeds.fib.borrow_and_update().clone();
        let router = *p.feeds.router.borrow_and_update();
        p.install_ruleset(&fib).await?;
        // Routes through a device need it up; the filter is in place by now.
        p.netlink.set_up(index, p.config.spec.mtu).await?;
        p.reconcile(&fib, router).await?;
        for cidr in &p.config.cluster_cidrs {
            p.netlink.replace_unreachable(*cidr).await?;
        }
        tracing::info!(
            device = %p.config.spec.name, vni = p.config.spec.vni, port = p.config.spec.port,
            "kernel dataplane: the vxlan device carries pod traffic; overlayd programs its neighbour, FDB and route entries and filters VXLAN with nftables table inet overlayd"
        );
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(p.follow(stop_rx));
        Ok(KernelDriver {
            task: Some(task),
            stop,
        })
    }

    /// Waits until the driver's task ends (it only does when stopped).
    pub(crate) async fn wait(&mut self) -> Result<(), Error> {
        match self.task.as_mut() {
            Some(task) => match task.await {
                Ok(()) => {
                    self.task = None;
                    Ok(())
                }
                Err(e) => {
                    self.task = None;
                    Err(Error::TaskEnded {
                        what: "kernel dataplane",
                        source: e,
                    })
                }
            },
            None => std::future::pending().await,
        }
    }

    /// Stops following the feeds. The device, its entries and the filter stay, so
    /// pod traffic keeps flowing while the daemon restarts, as with flannel.
    pub(crate) async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Removes what the kernel dataplane leaves in the kernel: the vxlan device
    /// `device` (and with it its neighbour, FDB and route entries), the `unreachable`
    /// routes of the cluster CIDRs `clusters` and the nftables table. For `overlayd
    /// leave` and for a switch to the userspace dataplane; true if there was
    /// anything to remove.
    pub(crate) async fn remove(
        netlink: &Netlink,
        device: &str,
        clusters: impl IntoIterator<Item = IpNet>,
    ) -> Result<bool, Error> {
        let mut removed = netlink.delete_link_of_kind(device, "vxlan").await?;
        for cluster in clusters {
            if netlink.has_unreachable(cluster).await? {
                netlink.delete_unreachable(cluster).await?;
                removed = true;
            }
        }
        if nft::table_exists() {
            let script = ruleset::remove_script();
            tokio::task::spawn_blocking(move || nft::apply(&script))
                .await
                .map_err(|source| Error::TaskEnded {
                    what: "nft",
                    source,
                })??;
            removed = true;
        }
        Ok(removed)
    }
}

impl Drop for KernelDriver {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Programmer {
    async fn follow(mut self, mut stop: watch::Receiver<bool>) {
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        let mut repair = tokio::time::interval(REPAIR_EVERY);
        repair.tick().await;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                changed = self.feeds.fib.changed() => {
                    if changed.is_err() { return; }
                    self.update().await;
                }
                changed = self.feeds.router.changed() => {
                    if changed.is_err() { return; }
                    self.update().await;
                }
                _ = repair.tick() => self.update().await,
                _ = sample.tick() => self.sample().await,
                Some(done) = self.feeds.refresh.recv() => {
                    self.sample().await;
                    let _ = done.send(());
                }
            }
        }
    }

    /// Brings the ruleset (when the table changed) and the entries in line with the
    /// feeds; a failure is logged and retried at the next repair tick. Whichever
    /// feed woke it, both are read, so the table is compared with the one whose
    /// ruleset is installed rather than trusted to have announced itself.
    async fn update(&mut self) {
        let fib = self.feeds.fib.borrow_and_update().clone();
        let router = *self.feeds.router.borrow_and_update();
        let stale = !self
            .ruleset_of
            .as_ref()
            .is_some_and(|installed| Arc::ptr_eq(installed, &fib));
        if stale {
            if let Err(e) = self.install_ruleset(&fib).await {
                tracing::warn!("kernel dataplane: {e}; retrying in {REPAIR_EVERY:?}");
            }
        }
        if let Err(e) = self.reconcile(&fib, router).await {
            tracing::warn!("kernel dataplane: {e}; retrying in {REPAIR_EVERY:?}");
        }
    }

    /// Makes the device's entries those of `fib`.
    async fn reconcile(&mut self, fib: &Fib, router: Routers) -> Result<(), Error> {
        let (want, warnings) = Entries::for_fib(fib, self.config.spec.local, router);
        for w in warnings {
            tracing::warn!("{w}");
        }
        let have = self
            .netlink
            .vxlan_entries(
                self.index,
                self.config.spec.port,
                &self.config.cluster_cidrs,
            )
            .await?;
        for change in changes(&have, &want) {
            tracing::debug!(?change, "kernel dataplane");
            self.netlink
                .apply_change(self.index, self.config.spec.port, change)
                .await?;
        }
        Ok(())
    }

    /// Installs the ruleset for `fib`'s peers.
    async fn install_ruleset(&mut self, fib: &Arc<Fib>) -> Result<(), Error> {
        let mut members = Vec::new();
        let mut live = HashMap::new();
        for peer in fib.peers() {
            let id = match self.ids.by_name.get(&peer.name) {
                Some(id) => *id,
                None => {
                    let id = self.ids.next;
                    self.ids.next += 1;
                    self.ids.by_name.insert(peer.name.clone(), id);
                    id
                }
            };
            live.insert(peer.name.clone(), id);
            members.push(Member {
                id,
                underlay: peer.underlay.ip(),
                port: peer.underlay.port(),
                subnet: peer.subnet,
                subnet_v6: peer.subnet_v6,
                allow_any_source: peer.allow_any_source,
                dead: peer.state == PeerState::Dead,
            });
        }
        let removed: Vec<u32> = self
            .ids
            .by_name
            .iter()
            .filter(|(name, _)| !live.contains_key(*name))
            .map(|(_, id)| *id)
            .collect();
        let script = Ruleset {
            port: self.config.spec.port,
            members: &members,
            removed: if self.installed { &removed } else { &[] },
            fresh: !self.installed,
        }
        .script();
        tokio::task::spawn_blocking(move || nft::apply(&script))
            .await
            .map_err(|source| Error::TaskEnded {
                what: "nft",
                source,
            })??;
        self.ids.by_name = live;
        self.installed = true;
        self.ruleset_of = Some(fib.clone());
        Ok(())
    }

    /// Copies the device's and the ruleset's counters into the dataplane's.
    async fn sample(&mut self) {
        let stats = self.feeds.stats.worker(0);
        match self.netlink.device_counters(self.index).await {
            Ok(Some(c)) => {
                stats.tx.forwarded.set(c.tx_packets, c.tx_bytes);
                stats.rx.forwarded.set(c.rx_packets, c.rx_bytes);
                if let Ok(mut errors) = self.feeds.device_errors.lock() {
                    for (name, n) in c.errors {
                        errors.insert(name.to_string(), n);
                    }
                }
            }
            Ok(None) => {
                tracing::warn!(device = %self.config.spec.name, "kernel dataplane: the vxlan device is gone")
            }
            Err(e) => tracing::debug!("kernel dataplane: reading device counters: {e}"),
        }
        let counters = match tokio::task::spawn_blocking(nft::counters).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!("kernel dataplane: {e}");
                return;
            }
            Err(_) => return,
        };
        for (name, reason) in [
            ("unknown_sender", DropReason::UnknownSender),
            ("dead_sender", DropReason::DeadSender),
            ("spoofed_source", DropReason::SpoofedSource),
            ("not_ip", DropReason::NotIp),
        ] {
            if let Some(c) = counters.get(name) {
                stats.rx.set_drops(reason, c.packets);
            }
        }
        let fib: Arc<Fib> = self.feeds.fib.borrow().clone();
        for peer in fib.peers() {
            let Some(id) = self.ids.by_name.get(&peer.name) else {
                continue;
            };
            if let Some(c) = counters.get(&Member::rx_counter(*id)) {
                peer.stats.rx.set(c.packets, c.bytes);
            }
            if let Some(c) = counters.get(&Member::tx_counter(*id)) {
                peer.stats.tx.set(c.packets, c.bytes);
            }
        }
    }
}
