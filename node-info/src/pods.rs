//! The plugin's IPAM store as the daemon reads it: which pod holds which address.
//!
//! The built-in IPAM of overlayd-cni keeps one file per reserved address in
//! `<dataDir>/<network>/` ([`store_dir`]), named by the address in its canonical text
//! form (`10.244.1.5`, `fd00:10:244:1::5`). A file holds one [`Owner`]:
//!
//! ```text
//! 3f1c9a7e6b2d                       container ID       (line 1, always)
//! eth0                               interface name     (line 2, always)
//! host_veth=ovlv0123456789a          KEY=VALUE lines, each optional, in this order
//! created=1718000000                 unix seconds
//! k8s_pod_namespace=default
//! k8s_pod_name=web-0
//! k8s_pod_uid=6f1d0c2e-8a43-4c1e-9f53-2a8d4b7c1e90
//! k8s_pod_infra_container_id=3f1c9a7e6b2d
//! netns=/var/run/netns/cni-1b2c...      CNI_NETNS of the ADD
//! ```
//!
//! Plugins before this format wrote only the first two lines, and read only those: old
//! files read here with every optional field unknown (`None`), and an old plugin reads
//! new files. Readers ignore `KEY=VALUE` lines with keys they do not know, so a field may
//! be added without breaking either side. Values never contain control characters
//! (newline included): [`Owner::emit`] refuses them, and the plugin refuses such
//! `CNI_ARGS` with CNI code 4 before it writes anything.
//!
//! The plugin writes a file whole or not at all (a temporary file, then a hard link) and
//! holds an exclusive `flock(2)` on `<store>/`[`LOCK_FILE`] while it changes the store. A
//! reader that only lists needs no lock: it sees each file whole or not at all. One that
//! frees addresses (removes files) must take that lock, as ADD and DEL do.
//!
//! [`list`] never panics on any content: a file that does not parse is reported in
//! [`Listing::malformed`] with its [`RecordError`], and the other files are still read.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The lock file inside a network's store; ADD, DEL, GC and the daemon's reclaim take an
/// exclusive `flock(2)` on it.
pub const LOCK_FILE: &str = "lock";

/// The largest reservation file a reader accepts (bytes); larger files are malformed.
pub const MAX_RECORD_LEN: usize = 64 * 1024;

/// The longest value of an optional field (bytes), e.g. a pod name.
pub const MAX_VALUE_LEN: usize = 1024;

const HOST_VETH: &str = "host_veth";
const CREATED: &str = "created";
const NAMESPACE: &str = "k8s_pod_namespace";
const NAME: &str = "k8s_pod_name";
const UID: &str = "k8s_pod_uid";
const INFRA: &str = "k8s_pod_infra_container_id";
const NETNS: &str = "netns";
const KEYS: [&str; 7] = [HOST_VETH, CREATED, NAMESPACE, NAME, UID, INFRA, NETNS];

/// The store of `network` under the plugin's `dataDir`.
pub fn store_dir(data_dir: &Path, network: &str) -> PathBuf {
    data_dir.join(network)
}

/// The Kubernetes identity of a pod, from `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
/// `K8S_POD_UID`, `K8S_POD_INFRA_CONTAINER_ID`); `None` where the runtime did not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIdentity {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub name: Option<String>,
    /// `K8S_POD_UID`.
    pub uid: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`: the sandbox (pause) container.
    pub infra_container_id: Option<String>,
}

impl PodIdentity {
    /// `namespace/name` when both are known.
    pub fn qualified_name(&self) -> Option<String> {
        Some(format!(
            "{}/{}",
            self.namespace.as_ref()?,
            self.name.as_ref()?
        ))
    }
}

/// Who holds an address: the content of one reservation file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// `CNI_CONTAINERID` of the ADD.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface inside the container.
    pub ifname: String,
    /// The host end of the pod's veth pair (unknown in files of older plugins).
    pub host_veth: Option<String>,
    /// When the address was reserved, in seconds since the Unix epoch.
    pub created: Option<u64>,
    /// The pod's Kubernetes identity (all unknown outside Kubernetes).
    pub pod: PodIdentity,
    /// `CNI_NETNS` of the ADD: the pod's network namespace as the runtime named it
    /// (unknown in files of older plugins).
    pub netns: Option<String>,
}

/// One reservation: an address and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// The reserved address (the file's name).
    pub ip: IpAddr,
    /// Who holds it.
    pub owner: Owner,
}

/// Why a reservation file, or a value for one, is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The file is larger than [`MAX_RECORD_LEN`].
    TooLarge,
    /// The file is not UTF-8.
    NotUtf8,
    /// The first line (container ID) is missing or empty.
    NoContainerId,
    /// The second line (interface name) is missing or empty.
    NoIfname,
    /// A line after the second is not `KEY=VALUE`; `line` counts from 1.
    NotKeyValue {
        /// The line number.
        line: usize,
    },
    /// A known key appears twice.
    DuplicateKey(&'static str),
    /// A value has a control character, is too long, or (`created`) is not a number.
    BadValue {
        /// The field.
        key: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The file name is an address, but not in its canonical form.
    NonCanonicalName,
    /// The entry is not a regular file.
    NotAFile,
    /// The file could not be read.
    Io(io::ErrorKind),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::TooLarge => write!(f, "larger than {MAX_RECORD_LEN} bytes"),
            RecordError::NotUtf8 => f.write_str("not UTF-8"),
            RecordError::NoContainerId => f.write_str("no container ID on line 1"),
            RecordError::NoIfname => f.write_str("no interface name on line 2"),
            RecordError::NotKeyValue { line } => write!(f, "line {line} is not KEY=VALUE"),
            RecordError::DuplicateKey(k) => write!(f, "{k} appears twice"),
            RecordError::BadValue { key, reason } => write!(f, "{key}: {reason}"),
            RecordError::NonCanonicalName => {
                f.write_str("file name is not the address's canonical form")
            }
            RecordError::NotAFile => f.write_str("not a regular file"),
            RecordError::Io(kind) => write!(f, "cannot read: {kind}"),
        }
    }
}

impl std::error::Error for RecordError {}

/// Checks a value for an optional field: at most [`MAX_VALUE_LEN`] bytes and no control
/// character (a newline would end the line). Empty values are allowed here; the plugin
/// stores an empty `CNI_ARGS` value as unknown.
pub fn check_value(key: &'static str, value: &str) -> Result<(), RecordError> {
    if value.len() > MAX_VALUE_LEN {
        Err(RecordError::BadValue {
            key,
            reason: "longer than 1024 bytes",
        })
    } else if value.chars().any(char::is_control) {
        Err(RecordError::BadValue {
            key,
            reason: "contains a control character",
        })
    } else {
        Ok(())
    }
}

/// Checks line 1 or 2: non-empty, no control character.
fn check_line(value: &str, missing: RecordError) -> Result<(), RecordError> {
    if value.is_empty() {
        Err(missing)
    } else if value.chars().any(char::is_control) {
        let key = if missing == RecordError::NoContainerId {
            "container ID"
        } else {
            "interface name"
        };
        Err(RecordError::BadValue {
            key,
            reason: "contains a control character",
        })
    } else {
        Ok(())
    }
}

impl Owner {
    /// An owner with every optional field unknown (what an old plugin's file says).
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Owner {
        Owner {
            container_id: container_id.into(),
            ifname: ifname.into(),
            host_veth: None,
            created: None,
            pod: PodIdentity::default(),
            netns: None,
        }
    }

    /// The optional fields with their keys, in file order.
    fn fields(&self) -> [(&'static str, Option<String>); KEYS.len()] {
        [
            (HOST_VETH, self.host_veth.clone()),
            (CREATED, self.created.map(|c| c.to_string())),
            (NAMESPACE, self.pod.namespace.clone()),
            (NAME, self.pod.name.clone()),
            (UID, self.pod.uid.clone()),
            (INFRA, self.pod.infra_container_id.clone()),
            (NETNS, self.netns.clone()),
        ]
    }

    /// The file content. Refuses a value [`check_value`] refuses, an empty or
    /// control-character container ID or interface name, and a result longer than
    /// [`MAX_RECORD_LEN`]: whatever this returns, [`Owner::parse`] reads back as `self`.
    pub fn emit(&self) -> Result<String, RecordError> {
        check_line(&self.container_id, RecordError::NoContainerId)?;
        check_line(&self.ifname, RecordError::NoIfname)?;
        let mut out = format!("{}\n{}\n", self.container_id, self.ifname);
        for (key, value) in self.fields() {
            if let Some(v) = value {
                check_value(key, &v)?;
                out.push_str(key);
                out.push('=');
                out.push_str(&v);
                out.push('\n');
            }
        }
        if out.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLarge);
        }
        Ok(out)
    }

    /// Reads a file's content: two lines (container ID, interface name), then optional
    /// `KEY=VALUE` lines; unknown keys are skipped, the final newline is optional.
    pub fn parse(data: &[u8]) -> Result<Owner, RecordError> {
        if data.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLarge);
        }
        let text = std::str::from_utf8(data).map_err(|_| RecordError::NotUtf8)?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let mut lines = text.split('\n');
        let container_id = lines.next().unwrap_or_default();
        check_line(container_id, RecordError::NoContainerId)?;
        let ifname = lines.next().unwrap_or_default();
        check_line(ifname, RecordError::NoIfname)?;
        let mut owner = Owner::new(container_id, ifname);
        let mut seen = [false; KEYS.len()];
        for (i, line) in lines.enumerate() {
            let Some((key, value)) = line.split_once('=') else {
                return Err(RecordError::NotKeyValue { line: i + 3 });
            };
            let Some(pos) = KEYS.iter().position(|k| *k == key) else {
                continue;
            };
            let key = KEYS[pos];
            if std::mem::replace(&mut seen[pos], true) {
                return Err(RecordError::DuplicateKey(key));
            }
            check_value(key, value)?;
            let value = value.to_owned();
            match key {
                HOST_VETH => owner.host_veth = Some(value),
                CREATED => {
                    // Only the digits `u64::to_string` writes: no sign, no leading zero.
                    let canonical = value.parse::<u64>().ok().filter(|n| n.to_string() == value);
                    owner.created = Some(canonical.ok_or(RecordError::BadValue {
                        key,
                        reason: "not a number of seconds",
                    })?);
                }
                NAMESPACE => owner.pod.namespace = Some(value),
                NAME => owner.pod.name = Some(value),
                UID => owner.pod.uid = Some(value),
                INFRA => owner.pod.infra_container_id = Some(value),
                _ => owner.netns = Some(value),
            }
        }
        Ok(owner)
    }
}

/// A file of the store that is not a usable reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub error: RecordError,
}

/// Everything [`list`] found in a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The reservations, sorted by address.
    pub records: Vec<PodRecord>,
    /// Files named like an address that do not hold a reservation; each address stays
    /// taken for the plugin (the file exists) but has no known owner.
    pub malformed: Vec<Malformed>,
}

/// Reads one reservation file: a regular file of at most [`MAX_RECORD_LEN`] bytes.
pub fn read_owner(path: &Path) -> Result<Owner, RecordError> {
    let meta = fs::symlink_metadata(path).map_err(|e| RecordError::Io(e.kind()))?;
    if !meta.file_type().is_file() {
        return Err(RecordError::NotAFile);
    }
    let file = fs::File::open(path).map_err(|e| RecordError::Io(e.kind()))?;
    let mut data = Vec::new();
    file.take(MAX_RECORD_LEN as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| RecordError::Io(e.kind()))?;
    Owner::parse(&data)
}

/// Every reservation in the store of `network` under `data_dir`. A store that does not
/// exist yet is empty. Only a directory that cannot be listed is an error; each file
/// named like an address that does not parse is put in [`Listing::malformed`]. Other
/// files (the lock, the allocation cursors, temporary files) are not reservations.
pub fn list(data_dir: &Path, network: &str) -> io::Result<Listing> {
    list_dir(&store_dir(data_dir, network))
}

/// [`list`] over a store directory.
pub fn list_dir(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(listing),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
            continue;
        };
        let path = entry.path();
        let owner = if name.to_str() != Some(ip.to_string().as_str()) {
            Err(RecordError::NonCanonicalName)
        } else {
            read_owner(&path)
        };
        match owner {
            Ok(owner) => listing.records.push(PodRecord { ip, owner }),
            // Released between listing and reading: not a reservation any more.
            Err(RecordError::Io(io::ErrorKind::NotFound)) => {}
            Err(error) => listing.malformed.push(Malformed { path, error }),
        }
    }
    listing.records.sort_by_key(|r| r.ip);
    listing.malformed.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(listing)
}

/// An exclusive `flock(2)` on a store's [`LOCK_FILE`], held until dropped (the kernel
/// drops it too when the process dies, even killed). ADD, DEL and GC of the plugin and
/// the daemon's reclaim all take it, so no two of them change a store at once.
#[derive(Debug)]
pub struct StoreLock {
    dir: PathBuf,
    // Held for its flock; closing the file releases the lock.
    _file: fs::File,
}

impl StoreLock {
    /// Takes the lock of the store at `dir` (which must exist), waiting for the holder.
    /// Creates the lock file if it is missing. The error names the lock file.
    pub fn take(dir: &Path) -> Result<StoreLock, (PathBuf, io::Error)> {
        let path = dir.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| (path.clone(), e))?;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err((path, e.into())),
            }
        }
        Ok(StoreLock {
            dir: dir.to_path_buf(),
            _file: file,
        })
    }

    /// The store this lock is for.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Frees `record`'s address if its file still holds exactly `record.owner`;
    /// `Ok(false)` if the file is gone or holds anything else (a DEL freed it, or an ADD
    /// reserved it again, since the caller looked without the lock).
    pub fn release_if_unchanged(&self, record: &PodRecord) -> io::Result<bool> {
        let path = self.dir.join(record.ip.to_string());
        match read_owner(&path) {
            Ok(owner) if owner == record.owner => match fs::remove_file(&path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            },
            Ok(_) | Err(RecordError::Io(io::ErrorKind::NotFound)) => Ok(false),
            Err(RecordError::Io(kind)) => Err(kind.into()),
            Err(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What overlayd-cni before pod identity wrote, byte for byte.
    const OLD: &[u8] = b"3f1c9a7e6b2d\neth0\n";

    fn k8s() -> Owner {
        Owner {
            container_id: "3f1c9a7e6b2d".into(),
            ifname: "eth0".into(),
            host_veth: Some("ovlv0123456789a".into()),
            created: Some(1_718_000_000),
            pod: PodIdentity {
                namespace: Some("default".into()),
                name: Some("web-0".into()),
                uid: Some("6f1d0c2e-8a43-4c1e-9f53-2a8d4b7c1e90".into()),
                infra_container_id: Some("3f1c9a7e6b2d".into()),
            },
            netns: Some("/var/run/netns/cni-1b2c3d4e".into()),
        }
    }

    #[test]
    fn old_two_line_files_read_with_unknown_fields() {
        let o = Owner::parse(OLD).unwrap();
        assert_eq!(o, Owner::new("3f1c9a7e6b2d", "eth0"));
        assert_eq!(o.emit().unwrap().as_bytes(), OLD);
        // Without the final newline, as a hand-written file may be.
        assert_eq!(Owner::parse(b"c1\neth0").unwrap(), Owner::new("c1", "eth0"));
    }

    #[test]
    fn new_files_keep_the_first_two_lines_for_old_readers() {
        let text = k8s().emit().unwrap();
        assert_eq!(
            text,
            "3f1c9a7e6b2d\neth0\nhost_veth=ovlv0123456789a\ncreated=1718000000\n\
             k8s_pod_namespace=default\nk8s_pod_name=web-0\n\
             k8s_pod_uid=6f1d0c2e-8a43-4c1e-9f53-2a8d4b7c1e90\n\
             k8s_pod_infra_container_id=3f1c9a7e6b2d\n\
             netns=/var/run/netns/cni-1b2c3d4e\n"
        );
        // The old plugin's reader: the first two lines.
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("3f1c9a7e6b2d"));
        assert_eq!(lines.next(), Some("eth0"));
        assert_eq!(Owner::parse(text.as_bytes()).unwrap(), k8s());
        assert_eq!(k8s().pod.qualified_name().as_deref(), Some("default/web-0"));
    }

    #[test]
    fn unknown_keys_are_skipped_and_values_may_hold_equals() {
        let o = Owner::parse(b"c1\neth0\nfuture=1\nk8s_pod_name=a=b\n").unwrap();
        assert_eq!(o.pod.name.as_deref(), Some("a=b"));
        assert_eq!(o.host_veth, None);
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let cases: &[(&[u8], RecordError)] = &[
            (b"", RecordError::NoContainerId),
            (b"\n", RecordError::NoContainerId),
            (b"c1\n", RecordError::NoIfname),
            (b"c1\n\n", RecordError::NoIfname),
            (b"\xff\xfe\neth0\n", RecordError::NotUtf8),
            (
                b"c1\neth0\nnonsense\n",
                RecordError::NotKeyValue { line: 3 },
            ),
            (b"c1\neth0\n\n", RecordError::NotKeyValue { line: 3 }),
            (
                b"c1\neth0\ncreated=soon\n",
                RecordError::BadValue {
                    key: CREATED,
                    reason: "not a number of seconds",
                },
            ),
            (
                b"c1\neth0\ncreated=-1\n",
                RecordError::BadValue {
                    key: CREATED,
                    reason: "not a number of seconds",
                },
            ),
            (
                b"c1\neth0\ncreated=01\n",
                RecordError::BadValue {
                    key: CREATED,
                    reason: "not a number of seconds",
                },
            ),
            (
                b"c1\neth0\nk8s_pod_name=a\nk8s_pod_name=b\n",
                RecordError::DuplicateKey(NAME),
            ),
            (
                b"c1\neth0\nk8s_pod_name=a\rb\n",
                RecordError::BadValue {
                    key: NAME,
                    reason: "contains a control character",
                },
            ),
            (
                b"c\x001\neth0\n",
                RecordError::BadValue {
                    key: "container ID",
                    reason: "contains a control character",
                },
            ),
        ];
        for (data, want) in cases {
            assert_eq!(
                Owner::parse(data).as_ref(),
                Err(want),
                "{}",
                String::from_utf8_lossy(data)
            );
        }
        let big = vec![b'a'; MAX_RECORD_LEN + 1];
        assert_eq!(Owner::parse(&big), Err(RecordError::TooLarge));
    }

    #[test]
    fn emit_refuses_what_would_not_read_back() {
        let mut o = k8s();
        o.pod.name = Some("web\n0".into());
        assert!(matches!(
            o.emit(),
            Err(RecordError::BadValue { key: NAME, .. })
        ));
        o.pod.name = Some("x".repeat(MAX_VALUE_LEN + 1));
        assert!(matches!(
            o.emit(),
            Err(RecordError::BadValue { key: NAME, .. })
        ));
        assert_eq!(
            Owner::new("", "eth0").emit(),
            Err(RecordError::NoContainerId)
        );
        assert_eq!(Owner::new("c", "").emit(), Err(RecordError::NoIfname));
        assert_eq!(
            Owner::new("c".repeat(MAX_RECORD_LEN), "eth0").emit(),
            Err(RecordError::TooLarge)
        );
    }

    #[test]
    fn list_reads_records_and_reports_malformed_files() {
        let dir = std::env::temp_dir().join(format!("ovl-node-info-pods-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(list(&dir, "net").unwrap(), Listing::default());
        let store = store_dir(&dir, "net");
        fs::create_dir_all(&store).unwrap();
        fs::write(store.join("10.244.1.3"), k8s().emit().unwrap()).unwrap();
        fs::write(store.join("10.244.1.2"), OLD).unwrap();
        fs::write(store.join("fd00::5"), b"c9\n").unwrap();
        fs::write(store.join("FD00::6"), OLD).unwrap();
        fs::create_dir(store.join("10.244.1.4")).unwrap();
        for other in [LOCK_FILE, "last_reserved", ".10.244.1.7.tmp"] {
            fs::write(store.join(other), "10.244.1.3").unwrap();
        }
        let l = list(&dir, "net").unwrap();
        assert_eq!(
            l.records,
            vec![
                PodRecord {
                    ip: "10.244.1.2".parse().unwrap(),
                    owner: Owner::new("3f1c9a7e6b2d", "eth0"),
                },
                PodRecord {
                    ip: "10.244.1.3".parse().unwrap(),
                    owner: k8s(),
                },
            ]
        );
        let bad: Vec<(String, RecordError)> = l
            .malformed
            .iter()
            .map(|m| {
                let name = m.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, m.error.clone())
            })
            .collect();
        assert_eq!(
            bad,
            vec![
                ("10.244.1.4".into(), RecordError::NotAFile),
                ("FD00::6".into(), RecordError::NonCanonicalName),
                ("fd00::5".into(), RecordError::NoIfname),
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn release_if_unchanged_frees_only_the_record_it_judged() {
        let dir = std::env::temp_dir().join(format!("ovl-ni-release-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let ip: IpAddr = "10.244.1.5".parse().unwrap();
        let record = PodRecord { ip, owner: k8s() };
        fs::write(dir.join("10.244.1.5"), k8s().emit().unwrap()).unwrap();
        let lock = StoreLock::take(&dir).unwrap();
        // Reserved again by another pod since: kept.
        let mut other = k8s();
        other.container_id = "another".into();
        fs::write(dir.join("10.244.1.5"), other.emit().unwrap()).unwrap();
        assert!(!lock.release_if_unchanged(&record).unwrap());
        assert!(dir.join("10.244.1.5").exists());
        // The same owner: freed; a second time: nothing to free.
        fs::write(dir.join("10.244.1.5"), k8s().emit().unwrap()).unwrap();
        assert!(lock.release_if_unchanged(&record).unwrap());
        assert!(!dir.join("10.244.1.5").exists());
        assert!(!lock.release_if_unchanged(&record).unwrap());
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn value() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[^\\p{Cc}]{0,40}")
    }

    proptest! {
        /// Whatever `emit` accepts reads back as the same owner, and its first two lines
        /// are what an old plugin reads.
        #[test]
        fn round_trip(
            container_id in "[A-Za-z0-9][A-Za-z0-9_.-]{0,70}",
            ifname in "[^\\p{Cc}/:\\s]{1,15}",
            host_veth in value(),
            created in proptest::option::of(any::<u64>()),
            namespace in value(),
            name in value(),
            uid in value(),
            infra in value(),
            netns in value(),
        ) {
            let owner = Owner {
                container_id, ifname, host_veth, created,
                pod: PodIdentity { namespace, name, uid, infra_container_id: infra },
                netns,
            };
            let text = owner.emit().unwrap();
            prop_assert_eq!(Owner::parse(text.as_bytes()).unwrap(), owner.clone());
            let mut lines = text.lines();
            prop_assert_eq!(lines.next(), Some(owner.container_id.as_str()));
            prop_assert_eq!(lines.next(), Some(owner.ifname.as_str()));
        }

        /// Any bytes: a typed error or an owner that emits and reads back the same.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(owner) = Owner::parse(&data) {
                let text = owner.emit().unwrap();
                prop_assert_eq!(Owner::parse(text.as_bytes()).unwrap(), owner);
            }
        }
    }
}
