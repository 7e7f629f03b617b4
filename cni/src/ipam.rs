//! Built-in IPAM: allocation over the node subnet, stored under `dataDir`.
//!
//! The store is `<dataDir>/<network>/`: one file per reserved address (named by the
//! address, holding its [`Owner`]: `containerID\nifname\n`, then `KEY=VALUE` lines with
//! the host veth, the creation time and the pod's identity; the format is
//! `overlayd_node_info::pods`, which the daemon reads too), a `last_reserved` cursor and
//! a `lock` file. Every operation holds an exclusive `flock(2)` on `lock`, so concurrent plugin
//! processes serialize; the kernel drops the lock when a process dies, even if killed.
//! The network, gateway and (IPv4) broadcast addresses are never handed out. A
//! dual-stack attachment holds one address of each family; each family has its own
//! cursor (`last_reserved`, `last_reserved_v6`).
//!
//! Files are written whole or not at all, so a plugin killed at any point leaves no
//! reservation without an owner (which no DEL would release): content goes to a
//! `.<name>.tmp` file first, which is then hard-linked (reservations: fails if taken) or
//! renamed (the cursor) into place. A temporary file left by a killed plugin is removed
//! by the next one to take the lock.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use overlayd_node_info::pods::{self, RecordError};
pub use overlayd_node_info::pods::{Owner, PodIdentity};

use crate::error::{Error, Result};
use crate::faultpoint;

/// Why `ip` cannot be handed out from `subnet` with gateway `gateway`, if it cannot.
pub fn unusable_reason(subnet: IpNet, gateway: IpAddr, ip: IpAddr) -> Option<&'static str> {
    if !subnet.contains(&ip) {
        Some("is outside the node subnet")
    } else if ip == subnet.network() {
        Some("is the network address")
    } else if subnet.addr().is_ipv4() && ip == subnet.broadcast() {
        Some("is the broadcast address")
    } else if ip == gateway {
        Some("is the gateway address")
    } else {
        None
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::V4((n as u32).into())
    } else {
        IpAddr::V6(n.into())
    }
}

/// The next free host address after `last` (wrapping), or `None` if the subnet is full.
/// At most `tries` + 2 candidates are looked at: with `tries` the number of
/// addresses taken, a free one is always found if there is one (an IPv6 /64 is never
/// scanned whole).
pub fn next_free(
    subnet: IpNet,
    gateway: IpAddr,
    last: Option<IpAddr>,
    tries: u128,
    mut taken: impl FnMut(IpAddr) -> bool,
) -> Option<IpAddr> {
    let v4 = subnet.addr().is_ipv4();
    let first = to_u128(subnet.network()).wrapping_add(1);
    // Exclusive: the broadcast address (IPv4), the all-ones address (IPv6).
    let end = to_u128(subnet.broadcast());
    if end <= first {
        return None;
    }
    let count = end - first;
    let start = match last.filter(|l| l.is_ipv4() == v4).map(to_u128) {
        Some(l) if (first..end).contains(&l) => l + 1 - first,
        _ => 0,
    };
    (0..count.min(tries.saturating_add(2)))
        .map(|i| from_u128(v4, first + (start + i) % count))
        .find(|&ip| ip != gateway && !taken(ip))
}

/// The on-disk store, locked for as long as this value lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    // Held for its flock; dropping it releases the lock.
    _lock: pods::StoreLock,
}

impl Store {
    /// Opens (creating it if needed) the store of `network` and takes the exclusive lock.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self> {
        let dir = pods::store_dir(data_dir, network);
        fs::create_dir_all(&dir).map_err(|e| Error::store(&dir, e))?;
        Self::lock(dir)
    }

    /// Like [`Store::open`], but `None` if the store does not exist: a DEL of an
    /// attachment this node never saw creates nothing.
    pub fn open_existing(data_dir: &Path, network: &str) -> Result<Option<Self>> {
        let dir = pods::store_dir(data_dir, network);
        match fs::metadata(&dir) {
            Ok(_) => Self::lock(dir).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::store(dir, e)),
        }
    }

    fn lock(dir: PathBuf) -> Result<Self> {
        let lock = pods::StoreLock::take(&dir).map_err(|(path, e)| Error::store(path, e))?;
        let store = Store { dir, _lock: lock };
        store.remove_temps()?;
        Ok(store)
    }

    /// Removes temporary files of killed plugins. Every writer holds the lock, so with
    /// the lock held none is in flight.
    fn remove_temps(&self) -> Result<()> {
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::store(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::store(&self.dir, e))?;
            let name = entry.file_name();
            let name = name.as_bytes();
            if name.starts_with(b".") && name.ends_with(b".tmp") {
                let path = entry.path();
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::store(path, e)),
                }
            }
        }
        Ok(())
    }

    /// Writes `data` to a temporary file next to `name` and returns its path.
    fn write_temp(&self, name: &str, data: &[u8]) -> Result<PathBuf> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_data()));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::store(tmp, e));
        }
        Ok(tmp)
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// The owner of `ip`, if reserved; a reservation file that does not parse is an
    /// error (code 104).
    pub fn owner(&self, ip: IpAddr) -> Result<Option<Owner>> {
        let path = self.ip_path(ip);
        match pods::read_owner(&path) {
            Ok(owner) => Ok(Some(owner)),
            Err(RecordError::Io(io::ErrorKind::NotFound)) => Ok(None),
            Err(source) => Err(Error::StoreRecord { path, source }),
        }
    }

    /// Every reservation whose file parses, and the number of files named like an
    /// address (parsed or not): a malformed file keeps its address taken, with no known
    /// owner, so no DEL or GC releases it and no ADD reuses it.
    fn listing(&self) -> Result<(Vec<(IpAddr, Owner)>, usize)> {
        let l = pods::list_dir(&self.dir).map_err(|e| Error::store(&self.dir, e))?;
        let files = l.records.len() + l.malformed.len();
        Ok((
            l.records.into_iter().map(|r| (r.ip, r.owner)).collect(),
            files,
        ))
    }

    /// Every reservation whose file parses (see [`pods::list`]).
    pub fn list(&self) -> Result<Vec<(IpAddr, Owner)>> {
        self.listing().map(|(records, _)| records)
    }

    /// The address reserved for this attachment in `subnet`, if any.
    pub fn find(&self, container_id: &str, ifname: &str, subnet: IpNet) -> Result<Option<IpAddr>> {
        Ok(self
            .list()?
            .into_iter()
            .find(|(ip, o)| {
                o.container_id == container_id && o.ifname == ifname && subnet.contains(ip)
            })
            .map(|(ip, _)| ip))
    }

    fn cursor_name(v4: bool) -> &'static str {
        if v4 {
            "last_reserved"
        } else {
            "last_reserved_v6"
        }
    }

    /// Reserves `ip` for `owner`; `Ok(false)` if it is already reserved. The
    /// reservation appears with its owner in it, or not at all.
    pub fn reserve(&self, ip: IpAddr, owner: &Owner) -> Result<bool> {
        let path = self.ip_path(ip);
        if path.exists() {
            return Ok(false);
        }
        let content = owner.emit().map_err(|source| Error::StoreRecord {
            path: path.clone(),
            source,
        })?;
        let name = ip.to_string();
        let tmp = self.write_temp(&name, content.as_bytes())?;
        faultpoint::stall("ipam-before-link");
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::store(path, e)),
        }
        let cursor_name = Self::cursor_name(ip.is_ipv4());
        let cursor = self.dir.join(cursor_name);
        let tmp = self.write_temp(cursor_name, name.as_bytes())?;
        if let Err(e) = fs::rename(&tmp, &cursor) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::store(cursor, e));
        }
        Ok(true)
    }

    /// The last reserved address of the IPv4 (`v4`) or IPv6 family (its allocation
    /// cursor).
    pub fn last_reserved(&self, v4: bool) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(Self::cursor_name(v4)))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Releases `ip`. Releasing a free address is not an error.
    pub fn release(&self, ip: IpAddr) -> Result<()> {
        let path = self.ip_path(ip);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::store(path, e)),
        }
    }

    /// Releases whatever the attachment holds; returns the released addresses.
    pub fn release_owner(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut released = Vec::new();
        for (ip, o) in self.list()? {
            if o.container_id == container_id && o.ifname == ifname {
                self.release(ip)?;
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// Allocates an address of `subnet` for `owner` (the attachment is its container ID
    /// and interface): `requested` if given (validated), otherwise the next free one. A
    /// retried ADD gets the address it already holds in `subnet`, with its first record.
    pub fn allocate(
        &self,
        subnet: IpNet,
        gateway: IpAddr,
        requested: Option<IpAddr>,
        owner: &Owner,
    ) -> Result<IpAddr> {
        let (container_id, ifname) = (owner.container_id.as_str(), owner.ifname.as_str());
        if let Some(ip) = requested {
            if let Some(reason) = unusable_reason(subnet, gateway, ip) {
                return Err(Error::AddressNotUsable {
                    ip: ip.to_string(),
                    subnet,
                    reason,
                });
            }
            if self.reserve(ip, owner)? {
                return Ok(ip);
            }
            let holder = self.owner(ip)?.map(|o| o.container_id).unwrap_or_default();
            if holder == container_id {
                return Ok(ip);
            }
            return Err(Error::AddressTaken { ip, owner: holder });
        }
        if let Some(ip) = self.find(container_id, ifname, subnet)? {
            return Ok(ip);
        }
        let mut last = self.last_reserved(subnet.addr().is_ipv4());
        let held = self.listing()?.1 as u128;
        loop {
            let ip = next_free(subnet, gateway, last, held, |ip| self.ip_path(ip).exists())
                .ok_or(Error::SubnetFull { subnet })?;
            if self.reserve(ip, owner)? {
                return Ok(ip);
            }
            last = Some(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// Container `c` on `eth0`, nothing else known.
    fn o(c: &str) -> Owner {
        Owner::new(c, "eth0")
    }

    fn net() -> (IpNet, IpAddr) {
        ("10.244.1.0/29".parse().unwrap(), v4(1))
    }

    /// 10.244.1.`d`.
    fn v4(d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 244, 1, d))
    }

    #[test]
    fn never_network_gateway_broadcast() {
        let (subnet, gw) = net();
        let mut handed = Vec::new();
        let mut last = None;
        while let Some(ip) = next_free(subnet, gw, last, handed.len() as u128, |ip| {
            handed.contains(&ip)
        }) {
            handed.push(ip);
            last = Some(ip);
        }
        let expect: Vec<IpAddr> = (2..=6).map(v4).collect();
        assert_eq!(handed, expect);
        assert_eq!(
            unusable_reason(subnet, gw, v4(0)),
            Some("is the network address")
        );
        assert_eq!(
            unusable_reason(subnet, gw, v4(7)),
            Some("is the broadcast address")
        );
        assert_eq!(
            unusable_reason(subnet, gw, gw),
            Some("is the gateway address")
        );
        assert_eq!(
            unusable_reason(subnet, gw, "10.244.2.3".parse().unwrap()),
            Some("is outside the node subnet")
        );
    }

    #[test]
    fn cursor_wraps() {
        let (subnet, gw) = net();
        let ip = next_free(subnet, gw, Some(v4(6)), 0, |_| false);
        assert_eq!(ip, Some(v4(2)));
    }

    #[test]
    fn store_allocate_release() {
        let dir = std::env::temp_dir().join(format!("ovl-cni-ipam-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (subnet, gw) = net();
        let store = Store::open(&dir, "net").unwrap();
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                store
                    .allocate(subnet, gw, None, &o(&format!("c{i}")))
                    .unwrap(),
            );
        }
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 5);
        // Retried ADD keeps its address.
        assert_eq!(
            store.allocate(subnet, gw, None, &o("c0")).unwrap(),
            store.find("c0", "eth0", subnet).unwrap().unwrap()
        );
        let e = store.allocate(subnet, gw, None, &o("c9")).unwrap_err();
        assert_eq!(e.code(), 103);
        assert!(e.to_string().contains("10.244.1.0/29"), "{e}");
        let held = store.find("c2", "eth0", subnet).unwrap().unwrap();
        let e = store
            .allocate(subnet, gw, Some(held), &o("c9"))
            .unwrap_err();
        assert!(
            e.to_string().contains("c2") && e.to_string().contains(&held.to_string()),
            "{e}"
        );
        let e = store
            .allocate(subnet, gw, Some("10.9.9.9".parse().unwrap()), &o("c9"))
            .unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        assert_eq!(store.release_owner("c2", "eth0").unwrap(), vec![held]);
        assert_eq!(
            store.allocate(subnet, gw, Some(held), &o("c9")).unwrap(),
            held
        );
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dual_stack_attachment_holds_one_address_per_family_with_a_cursor_each() {
        let dir = std::env::temp_dir().join(format!("ovl-cni-ipam-v6-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (subnet, gw) = net();
        let v6: IpNet = "fd00:10:244:1::/64".parse().unwrap();
        let gw6: IpAddr = "fd00:10:244:1::1".parse().unwrap();
        let store = Store::open(&dir, "net").unwrap();
        let a4 = store.allocate(subnet, gw, None, &o("c1")).unwrap();
        let a6 = store.allocate(v6, gw6, None, &o("c1")).unwrap();
        assert_eq!(a4, v4(2));
        assert_eq!(a6, "fd00:10:244:1::2".parse::<IpAddr>().unwrap());
        // A retried ADD gets both again; the next attachment the next of each.
        assert_eq!(store.allocate(v6, gw6, None, &o("c1")).unwrap(), a6);
        assert_eq!(store.allocate(subnet, gw, None, &o("c1")).unwrap(), a4);
        assert_eq!(
            store.allocate(v6, gw6, None, &o("c2")).unwrap(),
            "fd00:10:244:1::3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(store.last_reserved(true), Some(a4));
        let e = store
            .allocate(v6, gw6, Some("fd00:10:244:1::".parse().unwrap()), &o("c3"))
            .unwrap_err();
        assert!(e.to_string().contains("network address"), "{e}");
        let mut released = store.release_owner("c1", "eth0").unwrap();
        released.sort();
        assert_eq!(released, vec![a4, a6]);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_keep_the_pod_and_old_files_still_count() {
        let dir = std::env::temp_dir().join(format!("ovl-cni-ipam-rec-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (subnet, gw) = net();
        let store = Store::open(&dir, "net").unwrap();
        // A file an older plugin wrote, and one no plugin wrote.
        fs::write(dir.join("net/10.244.1.2"), "old\neth0\n").unwrap();
        fs::write(dir.join("net/10.244.1.3"), "garbage").unwrap();
        let mut owner = o("c1");
        owner.host_veth = Some("ovlv0123456789a".into());
        owner.created = Some(1_718_000_000);
        owner.pod = PodIdentity {
            namespace: Some("default".into()),
            name: Some("web-0".into()),
            uid: Some("u-1".into()),
            infra_container_id: Some("c1".into()),
        };
        // Neither taken address is handed out again; the malformed one is no one's.
        let ip = store.allocate(subnet, gw, None, &owner).unwrap();
        assert_eq!(ip, v4(4));
        assert_eq!(store.owner(ip).unwrap(), Some(owner.clone()));
        assert_eq!(store.owner(v4(2)).unwrap(), Some(o("old")));
        let e = store.owner(v4(3)).unwrap_err();
        assert_eq!(e.code(), 104);
        assert!(e.to_string().contains("10.244.1.3"), "{e}");
        let listed: Vec<IpAddr> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|(ip, _)| ip)
            .collect();
        assert_eq!(listed.len(), 2);
        assert!(listed.contains(&v4(2)) && listed.contains(&ip));
        // The daemon's reader sees the same.
        let l = pods::list(&dir, "net").unwrap();
        assert_eq!(l.records.len(), 2);
        assert_eq!(l.records[1].owner, owner);
        assert_eq!(l.malformed.len(), 1);
        // A retried ADD keeps the first record; the old owner's DEL releases its address.
        let mut retry = owner.clone();
        retry.created = Some(1_718_000_099);
        assert_eq!(store.allocate(subnet, gw, None, &retry).unwrap(), ip);
        assert_eq!(store.owner(ip).unwrap(), Some(owner));
        assert_eq!(store.release_owner("old", "eth0").unwrap(), vec![v4(2)]);
        // An owner the format cannot hold is refused before anything is written.
        let mut bad = o("c2");
        bad.pod.name = Some("a\nb".into());
        assert_eq!(
            store.allocate(subnet, gw, None, &bad).unwrap_err().code(),
            104
        );
        assert!(store.find("c2", "eth0", subnet).unwrap().is_none());
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_del_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("ovl-cni-ipam-del-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // No store yet: DEL opens nothing and creates nothing.
        assert!(Store::open_existing(&dir, "net").unwrap().is_none());
        assert!(!dir.exists());
        let (subnet, gw) = net();
        let store = Store::open(&dir, "net").unwrap();
        let a = store.allocate(subnet, gw, None, &o("a")).unwrap();
        let b = store.allocate(subnet, gw, None, &o("b")).unwrap();
        drop(store);
        let snapshot = || {
            let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir.join("net"))
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().into_string().unwrap(),
                        fs::read(e.path()).unwrap(),
                    )
                })
                .collect();
            files.sort();
            files
        };
        // First DEL (StopPodSandbox) frees a's address and record.
        let store = Store::open_existing(&dir, "net").unwrap().unwrap();
        assert_eq!(store.release_owner("a", "eth0").unwrap(), vec![a]);
        drop(store);
        // Its address goes to a new pod before the second DEL (RemovePodSandbox) arrives.
        let store = Store::open(&dir, "net").unwrap();
        assert_eq!(store.allocate(subnet, gw, Some(a), &o("c")).unwrap(), a);
        drop(store);
        let before = snapshot();
        let store = Store::open_existing(&dir, "net").unwrap().unwrap();
        assert_eq!(
            store.release_owner("a", "eth0").unwrap(),
            Vec::<IpAddr>::new()
        );
        drop(store);
        assert_eq!(snapshot(), before);
        let store = Store::open(&dir, "net").unwrap();
        assert_eq!(store.owner(a).unwrap(), Some(o("c")));
        assert_eq!(store.owner(b).unwrap(), Some(o("b")));
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_files_of_killed_plugins_are_removed_on_open() {
        let dir = std::env::temp_dir().join(format!("ovl-cni-ipam-tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (subnet, gw) = net();
        let store = Store::open(&dir, "net").unwrap();
        let ip = store.allocate(subnet, gw, None, &o("c1")).unwrap();
        drop(store);
        // What a plugin killed between writing and linking leaves behind.
        fs::write(dir.join("net/.10.244.1.3.tmp"), "c2\neth0\n").unwrap();
        fs::write(dir.join("net/.last_reserved.tmp"), "10.244.1.3").unwrap();
        let store = Store::open(&dir, "net").unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.join("net"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [ip.to_string(), "last_reserved".into(), "lock".into()]
        );
        assert_eq!(store.owner(ip).unwrap(), Some(o("c1")));
        assert!(!store.reserve(ip, &o("c3")).unwrap());
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }
}
