//! The driver of the pod listing and the reclaim of leaked addresses: it reads the CNI
//! plugin's stores under `--cni-data-dir`, looks for each pod's netns and host veth,
//! hands that to the judgement ([`crate::pods::reclaim`]), and frees what it says to
//! free, holding the store's lock (the one ADD and DEL take) and after a second look.
//!
//! A scan runs every quarter of `--reclaim-pod-after` (1 s to 15 s), and on each
//! `overlayd pods`. Everything here that touches files or devices runs on a blocking
//! thread: the lock may wait for a plugin.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use overlayd_node_info::pods::{self as store, Owner, StoreLock};

use crate::pods::reclaim::{group, Judged, Observation, Presence, Reclaimer};
use crate::pods::{MalformedReport, PodReport, PodsReport};

/// The pods of this node and the reclaim of their leaked addresses.
pub(crate) struct PodWatch {
    data_dir: PathBuf,
    reclaimer: tokio::sync::Mutex<Reclaimer>,
    reclaimed: AtomicU64,
    pods: AtomicU64,
}

/// What one scan gathered from the disk and the kernel.
struct Gathered {
    observations: Vec<Observation>,
    malformed: Vec<MalformedReport>,
    error: Option<String>,
}

impl PodWatch {
    /// Watches the stores under `data_dir`, freeing after `grace` (zero: never).
    pub(crate) fn new(data_dir: PathBuf, grace: Duration) -> PodWatch {
        PodWatch {
            data_dir,
            reclaimer: tokio::sync::Mutex::new(Reclaimer::new(grace)),
            reclaimed: AtomicU64::new(0),
            pods: AtomicU64::new(0),
        }
    }

    /// Addresses freed since the daemon started.
    pub(crate) fn reclaimed(&self) -> u64 {
        self.reclaimed.load(Ordering::Relaxed)
    }

    /// Pods at the last scan.
    pub(crate) fn pods(&self) -> u64 {
        self.pods.load(Ordering::Relaxed)
    }

    /// How often the background scan runs: a quarter of the grace, 1 s to 15 s.
    pub(crate) fn interval(grace: Duration) -> Duration {
        if grace.is_zero() {
            return Duration::from_secs(15);
        }
        (grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
    }

    /// Scans every [`PodWatch::interval`] until the task is dropped.
    pub(crate) async fn run(self: Arc<Self>) {
        let grace = self.reclaimer.lock().await.grace();
        tracing::info!(
            data_dir = %self.data_dir.display(),
            reclaim_pod_after = ?grace,
            "watching the CNI plugin's pods{}",
            if grace.is_zero() { " (reclaim off)" } else { "; a pod's addresses are freed once its netns and host veth are gone this long" }
        );
        let mut tick = tokio::time::interval(Self::interval(grace));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.scan().await;
        }
    }

    /// Scans now: lists the pods, judges them, frees what is gone for the grace.
    pub(crate) async fn scan(&self) -> PodsReport {
        // One scan at a time: the judgement remembers since when each pod is gone.
        let mut reclaimer = self.reclaimer.lock().await;
        let dir = self.data_dir.clone();
        let gathered = tokio::task::spawn_blocking(move || gather(&dir))
            .await
            .unwrap_or_else(|e| Gathered {
                observations: Vec::new(),
                malformed: Vec::new(),
                error: Some(format!("the scan's thread failed: {e}")),
            });
        let judged = reclaimer.observe(Instant::now(), gathered.observations);
        let now_unix = unix_now();
        let mut pods = Vec::new();
        for j in judged {
            if j.reclaim {
                let dir = self.data_dir.clone();
                let obs = j.observation.clone();
                let freed = tokio::task::spawn_blocking(move || free(&dir, &obs))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                match freed {
                    Ok(freed) if !freed.is_empty() => {
                        reclaimer.forget(&j.observation.key());
                        self.reclaimed
                            .fetch_add(freed.len() as u64, Ordering::Relaxed);
                        log_reclaim(&j, &freed, reclaimer.grace());
                        continue;
                    }
                    Ok(_) => {
                        // Back, freed by a DEL, or reserved again since the scan:
                        // listed as it is at the next scan.
                        reclaimer.forget(&j.observation.key());
                        continue;
                    }
                    Err(e) => tracing::warn!(
                        "cannot free the addresses of a gone pod in {}: {e}; trying again at the next scan",
                        self.data_dir.display()
                    ),
                }
            }
            pods.push(report(&j, now_unix));
        }
        self.pods.store(pods.len() as u64, Ordering::Relaxed);
        PodsReport {
            data_dir: self.data_dir.clone(),
            reclaim_after_secs: reclaimer.grace().as_secs(),
            reclaimed: self.reclaimed(),
            pods,
            malformed: gathered.malformed,
            error: gathered.error,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn report(j: &Judged, now_unix: u64) -> PodReport {
    let records = &j.observation.records;
    let owner = records.first().map(|r| &r.owner);
    let field = |f: fn(&Owner) -> &Option<String>| owner.and_then(|o| f(o).clone());
    PodReport {
        ips: records.iter().map(|r| r.ip).collect(),
        namespace: field(|o| &o.pod.namespace),
        name: field(|o| &o.pod.name),
        uid: field(|o| &o.pod.uid),
        container_id: owner.map(|o| o.container_id.clone()).unwrap_or_default(),
        ifname: owner.map(|o| o.ifname.clone()).unwrap_or_default(),
        host_veth: field(|o| &o.host_veth),
        netns: field(|o| &o.netns),
        age_secs: owner
            .and_then(|o| o.created)
            .map(|c| now_unix.saturating_sub(c)),
        network: j.observation.network.clone(),
        state: j.state,
    }
}

fn log_reclaim(j: &Judged, freed: &[std::net::IpAddr], grace: Duration) {
    let owner = &j.observation.records[0].owner;
    let pod = owner
        .pod
        .qualified_name()
        .unwrap_or_else(|| "(no Kubernetes name)".into());
    tracing::warn!(
        pod = %pod,
        uid = owner.pod.uid.as_deref().unwrap_or("-"),
        container_id = %owner.container_id,
        ifname = %owner.ifname,
        host_veth = owner.host_veth.as_deref().unwrap_or("-"),
        netns = owner.netns.as_deref().unwrap_or("-"),
        addresses = ?freed,
        network = %j.observation.network,
        "reclaimed the addresses of a pod whose DEL never came: its netns and host veth have been gone for {grace:?}"
    );
}

/// Lists every store under `data_dir` and looks for each pod's netns and veth.
fn gather(data_dir: &Path) -> Gathered {
    let mut g = Gathered {
        observations: Vec::new(),
        malformed: Vec::new(),
        error: None,
    };
    let entries = match std::fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return g,
        Err(e) => {
            g.error = Some(format!("{}: {e}", data_dir.display()));
            return g;
        }
    };
    let links = Links::open();
    let mut networks: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    networks.sort();
    for (network, dir) in networks {
        let listing = match store::list_dir(&dir) {
            Ok(l) => l,
            Err(e) => {
                g.error = Some(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        g.malformed
            .extend(listing.malformed.into_iter().map(|m| MalformedReport {
                path: m.path,
                error: m.error.to_string(),
            }));
        for records in group(listing.records) {
            let owner = &records[0].owner;
            g.observations.push(Observation {
                netns: netns_presence(owner.netns.as_deref()),
                veth: links.presence(owner.host_veth.as_deref()),
                network: network.clone(),
                records,
            });
        }
    }
    g
}

/// Frees `obs`'s reservations under the store's lock if, looked at again with the lock
/// held, its netns and veth are still gone and each file still holds what was judged.
/// Returns the addresses freed.
fn free(data_dir: &Path, obs: &Observation) -> io::Result<Vec<std::net::IpAddr>> {
    let dir = store::store_dir(data_dir, &obs.network);
    let lock = StoreLock::take(&dir)
        .map_err(|(path, e)| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let owner = &obs.records[0].owner;
    let links = Links::open();
    if netns_presence(owner.netns.as_deref()) != Presence::Gone
        || links.presence(owner.host_veth.as_deref()) != Presence::Gone
    {
        return Ok(Vec::new());
    }
    let mut freed = Vec::new();
    for record in &obs.records {
        if lock.release_if_unchanged(record)? {
            freed.push(record.ip);
        }
    }
    Ok(freed)
}

/// A pod's netns: present if its path exists; gone if it does not and the directory
/// it was in does (the daemon can see where it would be). Paths under `/proc` (a
/// process's own netns) are unknown: in a container with its own pid namespace the
/// daemon cannot see the host's processes.
fn netns_presence(path: Option<&str>) -> Presence {
    let Some(path) = path.filter(|p| p.starts_with('/')) else {
        return Presence::Unknown;
    };
    let path = Path::new(path);
    if path.starts_with("/proc") {
        return Presence::Unknown;
    }
    match std::fs::symlink_metadata(path) {
        Ok(_) => Presence::Present,
        Err(e) if e.kind() == io::ErrorKind::NotFound => match path.parent() {
            Some(parent) if parent.is_dir() => Presence::Gone,
            _ => Presence::Unknown,
        },
        Err(_) => Presence::Unknown,
    }
}

/// Looks up interfaces by name in the daemon's network namespace (the node's).
struct Links {
    socket: Option<OwnedFd>,
}

impl Links {
    fn open() -> Links {
        let socket = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::DGRAM,
            None,
        )
        .ok();
        Links { socket }
    }

    fn presence(&self, name: Option<&str>) -> Presence {
        let (Some(socket), Some(name)) = (&self.socket, name) else {
            return Presence::Unknown;
        };
        if name.is_empty() || name.len() > 15 {
            return Presence::Unknown;
        }
        match rustix::net::netdevice::name_to_index(socket, name) {
            Ok(_) => Presence::Present,
            Err(rustix::io::Errno::NODEV) => Presence::Gone,
            Err(_) => Presence::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_presence_needs_a_visible_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cni-1");
        std::fs::write(&file, b"").unwrap();
        let s = |p: &Path| p.display().to_string();
        assert_eq!(netns_presence(Some(&s(&file))), Presence::Present);
        assert_eq!(
            netns_presence(Some(&s(&dir.path().join("cni-2")))),
            Presence::Gone
        );
        assert_eq!(
            netns_presence(Some(&s(&dir.path().join("nodir/cni-2")))),
            Presence::Unknown
        );
        assert_eq!(
            netns_presence(Some("/proc/999999999/ns/net")),
            Presence::Unknown
        );
        assert_eq!(netns_presence(Some("relative")), Presence::Unknown);
        assert_eq!(netns_presence(None), Presence::Unknown);
    }

    #[test]
    fn veth_presence_by_name() {
        let links = Links::open();
        assert_eq!(links.presence(Some("lo")), Presence::Present);
        assert_eq!(links.presence(Some("ovlvnosuchveth")), Presence::Gone);
        assert_eq!(
            links.presence(Some("a-name-longer-than-15")),
            Presence::Unknown
        );
        assert_eq!(links.presence(None), Presence::Unknown);
    }

    #[tokio::test]
    async fn a_gone_pod_is_freed_after_the_grace_and_a_live_one_kept() {
        let data = tempfile::tempdir().unwrap();
        let netns_dir = tempfile::tempdir().unwrap();
        let store_dir = data.path().join("overlayd");
        std::fs::create_dir_all(&store_dir).unwrap();
        let write = |ip: &str, id: &str, veth: &str| {
            let mut o = Owner::new(id, "eth0");
            o.host_veth = Some(veth.into());
            o.netns = Some(netns_dir.path().join(id).display().to_string());
            o.pod.namespace = Some("default".into());
            o.pod.name = Some(id.into());
            std::fs::write(store_dir.join(ip), o.emit().unwrap()).unwrap();
        };
        // "live": its netns file exists (and "lo" stands for a veth that exists).
        write("10.244.1.2", "live", "lo");
        std::fs::write(netns_dir.path().join("live"), b"").unwrap();
        // "gone": neither exists.
        write("10.244.1.3", "gone", "ovlvgone0000000");
        write("fd00:10:244:1::3", "gone", "ovlvgone0000000");
        let w = PodWatch::new(data.path().to_path_buf(), Duration::from_secs(1));
        let r = w.scan().await;
        assert_eq!(r.pods.len(), 2, "{r:?}");
        assert_eq!(
            r.find("default", "live")[0].state,
            crate::pods::PodState::Running
        );
        assert!(matches!(
            r.find("default", "gone")[0].state,
            crate::pods::PodState::Gone { .. }
        ));
        assert!(store_dir.join("10.244.1.3").exists());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = w.scan().await;
        assert_eq!(r.pods.len(), 1, "{r:?}");
        assert_eq!(r.reclaimed, 2);
        assert!(!store_dir.join("10.244.1.3").exists());
        assert!(!store_dir.join("fd00:10:244:1::3").exists());
        assert!(store_dir.join("10.244.1.2").exists());
        assert_eq!(w.pods(), 1);
    }
}
