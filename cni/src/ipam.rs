//! Built-in IPAM: allocation over the node subnet, stored under `dataDir`.
//!
//! The store is `<dataDir>/<network>/`: one file per reserved address (named by the
//! address, holding `containerID\nifname\n`), a `last_reserved` cursor and a `lock`
//! file. Every operation holds an exclusive `flock(2)` on `lock`, so concurrent plugin
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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use rustix::fs::FlockOperation;

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

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The container ID.
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// The on-disk store, locked for as long as this value lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    // Held for its flock; closing the file releases the lock.
    _lock: File,
}

impl Store {
    /// Opens (creating it if needed) the store of `network` and takes the exclusive lock.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| Error::store(&dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::store(&lock_path, e))?;
        loop {
            match rustix::fs::flock(&lock, FlockOperation::LockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::store(&lock_path, e.into())),
            }
        }
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

    /// The owner of `ip`, if reserved.
    pub fn owner(&self, ip: IpAddr) -> Result<Option<Owner>> {
        let path = self.ip_path(ip);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(parse_owner(&s))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::store(path, e)),
        }
    }

    /// Every reservation.
    pub fn list(&self) -> Result<Vec<(IpAddr, Owner)>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::store(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::store(&self.dir, e))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if let Some(owner) = self.owner(ip)? {
                out.push((ip, owner));
            }
        }
        Ok(out)
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

    /// Reserves `ip` for the attachment; `Ok(false)` if it is already reserved. The
    /// reservation appears with its owner in it, or not at all.
    pub fn reserve(&self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<bool> {
        let path = self.ip_path(ip);
        if path.exists() {
            return Ok(false);
        }
        let name = ip.to_string();
        let tmp = self.write_temp(&name, format!("{container_id}\n{ifname}\n").as_bytes())?;
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

    /// Allocates an address of `subnet` for the attachment: `requested` if given
    /// (validated), otherwise the next free one. A retried ADD gets the address it
    /// already holds in `subnet`.
    pub fn allocate(
        &self,
        subnet: IpNet,
        gateway: IpAddr,
        requested: Option<IpAddr>,
        container_id: &str,
        ifname: &str,
    ) -> Result<IpAddr> {
        if let Some(ip) = requested {
            if let Some(reason) = unusable_reason(subnet, gateway, ip) {
                return Err(Error::AddressNotUsable {
                    ip: ip.to_string(),
                    subnet,
                    reason,
                });
            }
            if self.reserve(ip, container_id, ifname)? {
                return Ok(ip);
            }
            let owner = self.owner(ip)?.map(|o| o.container_id).unwrap_or_default();
            if owner == container_id {
                return Ok(ip);
            }
            return Err(Error::AddressTaken { ip, owner });
        }
        if let Some(ip) = self.find(container_id, ifname, subnet)? {
            return Ok(ip);
        }
        let mut last = self.last_reserved(subnet.addr().is_ipv4());
        let held = self.list()?.len() as u128;
        loop {
            let ip = next_free(subnet, gateway, last, held, |ip| self.ip_path(ip).exists())
                .ok_or(Error::SubnetFull { subnet })?;
            if self.reserve(ip, container_id, ifname)? {
                return Ok(ip);
            }
            last = Some(ip);
        }
    }
}

fn parse_owner(s: &str) -> Owner {
    let mut lines = s.lines();
    Owner {
        container_id: lines.next().unwrap_or_default().to_owned(),
        ifname: lines.next().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

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
                    .allocate(subnet, gw, None, &format!("c{i}"), "eth0")
                    .unwrap(),
            );
        }
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 5);
        // Retried ADD keeps its address.
        assert_eq!(
            store.allocate(subnet, gw, None, "c0", "eth0").unwrap(),
            store.find("c0", "eth0", subnet).unwrap().unwrap()
        );
        let e = store.allocate(subnet, gw, None, "c9", "eth0").unwrap_err();
        assert_eq!(e.code(), 103);
        assert!(e.to_string().contains("10.244.1.0/29"), "{e}");
        let held = store.find("c2", "eth0", subnet).unwrap().unwrap();
        let e = store
            .allocate(subnet, gw, Some(held), "c9", "eth0")
            .unwrap_err();
        assert!(
            e.to_string().contains("c2") && e.to_string().contains(&held.to_string()),
            "{e}"
        );
        let e = store
            .allocate(subnet, gw, Some("10.9.9.9".parse().unwrap()), "c9", "eth0")
            .unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        assert_eq!(store.release_owner("c2", "eth0").unwrap(), vec![held]);
        assert_eq!(
            store
                .allocate(subnet, gw, Some(held), "c9", "eth0")
                .unwrap(),
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
        let a4 = store.allocate(subnet, gw, None, "c1", "eth0").unwrap();
        let a6 = store.allocate(v6, gw6, None, "c1", "eth0").unwrap();
        assert_eq!(a4, v4(2));
        assert_eq!(a6, "fd00:10:244:1::2".parse::<IpAddr>().unwrap());
        // A retried ADD gets both again; the next attachment the next of each.
        assert_eq!(store.allocate(v6, gw6, None, "c1", "eth0").unwrap(), a6);
        assert_eq!(store.allocate(subnet, gw, None, "c1", "eth0").unwrap(), a4);
        assert_eq!(
            store.allocate(v6, gw6, None, "c2", "eth0").unwrap(),
            "fd00:10:244:1::3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(store.last_reserved(true), Some(a4));
        let e = store
            .allocate(
                v6,
                gw6,
                Some("fd00:10:244:1::".parse().unwrap()),
                "c3",
                "eth0",
            )
            .unwrap_err();
        assert!(e.to_string().contains("network address"), "{e}");
        let mut released = store.release_owner("c1", "eth0").unwrap();
        released.sort();
        assert_eq!(released, vec![a4, a6]);
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_files_of_killed_plugins_are_removed_on_open() {
        let dir = std::env::temp_dir().join(format!("ovl-cni-ipam-tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (subnet, gw) = net();
        let store = Store::open(&dir, "net").unwrap();
        let ip = store.allocate(subnet, gw, None, "c1", "eth0").unwrap();
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
        assert_eq!(
            store.owner(ip).unwrap(),
            Some(Owner {
                container_id: "c1".into(),
                ifname: "eth0".into()
            })
        );
        assert!(!store.reserve(ip, "c3", "eth0").unwrap());
        drop(store);
        fs::remove_dir_all(&dir).unwrap();
    }
}
