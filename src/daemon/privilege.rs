//! Least privilege for the daemon: before the async runtime starts any thread, the
//! process gives up every capability except `CAP_NET_ADMIN` (links, addresses, routes,
//! the TUN device, the forwarding sysctls), plus `CAP_NET_BIND_SERVICE` only when a
//! configured port is below 1024. The bounding and ambient sets are cleared too and
//! `no_new_privs` is set, so nothing the process could exec regains them.
//!
//! It happens first because Linux capabilities belong to threads: a drop made after
//! tokio started its workers would leave them privileged. Threads started later
//! inherit the reduced sets. Files need no `CAP_DAC_OVERRIDE`: the daemon runs as
//! root and its state, runtime and CNI directories are root's own.
//!
//! Left out: switching to an unprivileged user. The TUN and netlink work needs
//! `CAP_NET_ADMIN` either way, and a root-owned 0700 state dir is simpler to keep
//! consistent across restarts than a dedicated user on every host.

use caps::{CapSet, Capability, CapsHashSet};

/// Why the capability sets could not be reduced.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The process lacks `CAP_NET_ADMIN` and cannot set up the node.
    #[error("the daemon needs CAP_NET_ADMIN to create its bridge, TUN device and routes: run it as root, or grant it (systemd AmbientCapabilities=CAP_NET_ADMIN, Kubernetes capabilities.add: [NET_ADMIN])")]
    NoNetAdmin,
    /// A capability call failed.
    #[error("cannot drop capabilities: {0}")]
    Caps(String),
}

/// What the process holds after [`drop_capabilities`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Capabilities left in the effective and permitted sets.
    pub caps: Vec<String>,
    /// Whether the bounding set was reduced too (needs `CAP_SETPCAP`; when missing,
    /// a supervisor such as systemd has usually reduced it already).
    pub bounding_reduced: bool,
}

/// Keeps only `CAP_NET_ADMIN` (and `CAP_NET_BIND_SERVICE` if `bind_low_port`).
/// Call it before any thread is started.
pub fn drop_capabilities(bind_low_port: bool) -> Result<Kept, PrivilegeError> {
    let err = |e: caps::errors::CapsError| PrivilegeError::Caps(e.to_string());
    let permitted = caps::read(None, CapSet::Permitted).map_err(err)?;
    if !permitted.contains(&Capability::CAP_NET_ADMIN) {
        return Err(PrivilegeError::NoNetAdmin);
    }
    let mut keep = CapsHashSet::new();
    keep.insert(Capability::CAP_NET_ADMIN);
    if bind_low_port && permitted.contains(&Capability::CAP_NET_BIND_SERVICE) {
        keep.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes below.
    let mut bounding_reduced = true;
    for cap in caps::read(None, CapSet::Bounding).map_err(err)? {
        if !keep.contains(&cap) && caps::drop(None, CapSet::Bounding, cap).is_err() {
            bounding_reduced = false;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    caps::set(None, CapSet::Effective, &keep).map_err(err)?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err)?;
    rustix::thread::set_no_new_privs(true)
        .map_err(|e| PrivilegeError::Caps(format!("prctl(PR_SET_NO_NEW_PRIVS): {e}")))?;
    let mut caps: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
    caps.sort();
    Ok(Kept {
        caps,
        bounding_reduced,
    })
}

/// Whether any port the daemon binds is privileged (below 1024, not 0).
pub fn needs_low_port(ports: &[u16]) -> bool {
    ports.iter().any(|p| (1..1024).contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_field(status: &str, key: &str) -> u64 {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key} missing"));
        u64::from_str_radix(line[key.len()..].trim(), 16).unwrap()
    }

    /// Runs on its own thread: capabilities are per thread, so the test harness keeps
    /// its own.
    #[test]
    fn keeps_only_net_admin_on_this_thread() {
        std::thread::spawn(|| {
            let root =
                caps::has_cap(None, CapSet::Permitted, Capability::CAP_NET_ADMIN).unwrap_or(false);
            match drop_capabilities(false) {
                Ok(kept) => {
                    assert!(root);
                    assert_eq!(kept.caps, vec!["CAP_NET_ADMIN".to_string()]);
                    let st = std::fs::read_to_string("/proc/thread-self/status").unwrap();
                    let net_admin = 1u64 << 12;
                    assert_eq!(status_field(&st, "CapEff:"), net_admin);
                    assert_eq!(status_field(&st, "CapPrm:"), net_admin);
                    assert_eq!(status_field(&st, "CapAmb:"), 0);
                    if kept.bounding_reduced {
                        assert_eq!(status_field(&st, "CapBnd:"), net_admin);
                    }
                    assert!(st.contains("NoNewPrivs:\t1"), "{st}");
                    // A child thread inherits the reduced sets.
                    let inherited =
                        std::thread::spawn(|| caps::read(None, CapSet::Effective).unwrap().len())
                            .join()
                            .unwrap();
                    assert_eq!(inherited, 1);
                }
                Err(e) => {
                    assert!(!root, "{e}");
                    assert!(matches!(e, PrivilegeError::NoNetAdmin));
                }
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn low_ports() {
        assert!(!needs_low_port(&[4789, 7946, 9469]));
        assert!(!needs_low_port(&[0, 4789]));
        assert!(needs_low_port(&[4789, 53]));
    }
}
