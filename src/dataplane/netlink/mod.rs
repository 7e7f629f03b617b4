//! Netlink: one connection to the current network namespace ([`Netlink`]) and
//! its requests, a file per kind of object as rtnetlink has them. Each call does what
//! it is told and reports failures as [`Error::Netlink`] with the operation named;
//! what to program is decided elsewhere (the daemon's phases, [`crate::dataplane::kernel::plan`]).
//!
//! - [`link`]: links by name or index, the bridge, up/MTU, deletes, counters.
//! - [`address`]: addresses on a link and the link holding an address.
//! - [`route`]: routes (the cluster route, routes to peers through the vxlan device,
//!   `unreachable`), route lookups and the default route.
//! - [`neighbour`]: neighbour and FDB entries.
//! - [`vxlan`]: the kernel dataplane's vxlan device and its entries as a whole.
//! - [`sysctl`]: the per-interface and forwarding switches under `/proc/sys` the same
//!   set-up needs (not netlink, but the same host-settings layer).
//!
//! Every step is idempotent: a restart reuses what exists, repairs what differs and
//! removes what is left over.

pub(crate) mod address;
pub(crate) mod link;
pub(crate) mod neighbour;
pub(crate) mod route;
pub(crate) mod sysctl;
pub(crate) mod vxlan;

use rtnetlink::Handle;

use super::error::Error;

pub(crate) use link::is_up;
pub(crate) use sysctl::{accept_local, disable_ipv6, enable_forwarding};
pub(crate) use vxlan::VxlanSpec;

/// The error of netlink operation `op`.
fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let op = op.into();
    move |source| Error::Netlink { op, source }
}

/// A delete that finds nothing to delete is done.
fn ignore_missing(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -libc::ENOENT || e.raw_code() == -libc::ESRCH =>
        {
            Ok(())
        }
        other => other,
    }
}

/// A netlink connection to the current network namespace.
#[derive(Clone)]
pub(crate) struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket and spawns its connection task on the current runtime.
    pub(crate) fn connect() -> Result<Netlink, Error> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The rtnetlink handle.
    fn handle(&self) -> &Handle {
        &self.handle
    }
}
