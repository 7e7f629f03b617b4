//! Host switches under `/proc/sys` the node's set-up needs: IP forwarding, IPv6 off
//! on an IPv4-only device, and accepting packets from our own addresses on the TUN.

use std::path::Path;

use ipnet::IpNet;

use crate::dataplane::Error;

/// Turns on IP forwarding for the family of `net` in this network namespace.
pub(crate) fn enable_forwarding(net: &IpNet) -> Result<(), Error> {
    let path = match net {
        IpNet::V4(_) => Path::new("/proc/sys/net/ipv4/ip_forward"),
        IpNet::V6(_) => Path::new("/proc/sys/net/ipv6/conf/all/forwarding"),
    };
    let current = std::fs::read_to_string(path).unwrap_or_default();
    if current.trim() == "1" {
        return Ok(());
    }
    std::fs::write(path, b"1").map_err(|source| Error::Sysctl {
        path: path.into(),
        source,
    })?;
    tracing::info!(sysctl = %path.display(), "enabled IP forwarding");
    Ok(())
}

/// Turns IPv6 off on interface `ifname`, so an IPv4-only TUN does not emit router
/// solicitations into the overlay. A kernel without IPv6 is not an error.
pub(crate) fn disable_ipv6(ifname: &str) -> Result<(), Error> {
    let path = Path::new("/proc/sys/net/ipv6/conf")
        .join(ifname)
        .join("disable_ipv6");
    match std::fs::write(&path, b"1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Sysctl { path, source }),
    }
}

/// Lets the kernel accept packets on `ifname` whose source is one of its own
/// addresses: the dataplane answers unreachable destinations with ICMP from the
/// node's gateway, written into the TUN, and without this the kernel drops them as
/// martians.
pub(crate) fn accept_local(ifname: &str) -> Result<(), Error> {
    let path = Path::new("/proc/sys/net/ipv4/conf")
        .join(ifname)
        .join("accept_local");
    std::fs::write(&path, b"1").map_err(|source| Error::Sysctl { path, source })
}
