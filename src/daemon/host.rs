//! The host side of the node: the underlay address and MTU it takes from the kernel,
//! the bridge pods attach to and its gateway address, forwarding, the route that
//! carries the rest of the cluster CIDR (through the TUN, or `unreachable` past the
//! kernel dataplane's per-peer routes), and `node.json`.
//!
//! Left out: the packets themselves ([`crate::dataplane`]); the netlink calls live in
//! [`crate::dataplane::netlink`].

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::error::{file_err, DaemonError};
use crate::config::{ConfigError, DaemonArgs};
use crate::daemon::node::{NodeInfo, NODE_FILE};
use crate::dataplane::encap::{OVERHEAD_V4, OVERHEAD_V6};
use crate::dataplane::netlink::{enable_forwarding, Netlink};
use crate::dataplane::wg::{WG_OVERHEAD_V4, WG_OVERHEAD_V6};
use crate::fsutil::write_atomic;

pub(crate) use crate::dataplane::fib::gateway_of;

/// The node's name when no `--node-name` is given: the kernel hostname.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Where the node meets the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Underlay {
    /// The address peers send VXLAN to (`--advertise-addr`, or the default route's).
    pub(crate) advertise_addr: IpAddr,
    /// The overlay MTU: `--mtu`, or the underlay's less the VXLAN overhead.
    pub(crate) mtu: u32,
}

/// Finds the advertise address and its interface's MTU, and picks the overlay MTU.
pub(crate) async fn underlay(
    netlink: &Netlink,
    args: &DaemonArgs,
) -> Result<Underlay, DaemonError> {
    let (advertise_addr, underlay_mtu) = match args.advertise_addr {
        Some(addr) => {
            let (_, mtu) = netlink.link_of_addr(addr).await?.ok_or_else(|| ConfigError::Invalid {
                flag: "--advertise-addr",
                value: addr.to_string(),
                why: "is not an address of any interface on this host".into(),
            })?;
            (addr, mtu)
        }
        None => match netlink.default_route_addr(false).await? {
            Some(found) => found,
            None => netlink.default_route_addr(true).await?.ok_or(ConfigError::Missing {
                flag: "--advertise-addr",
                why: "no default route to take the underlay address from; pass the address peers should send VXLAN to",
            })?,
        },
    };
    // WireGuard adds 32 bytes (type, index, counter, tag) to an IP packet where
    // VXLAN adds 22 (VXLAN and inner Ethernet headers): 60 or 80 bytes in all.
    let overhead = match (advertise_addr.is_ipv4(), args.encrypt) {
        (true, false) => OVERHEAD_V4,
        (false, false) => OVERHEAD_V6,
        (true, true) => WG_OVERHEAD_V4,
        (false, true) => WG_OVERHEAD_V6,
    };
    let mtu = match args.mtu {
        Some(mtu) => {
            if mtu + overhead > underlay_mtu {
                tracing::warn!(mtu, underlay_mtu, overhead, "--mtu plus the encapsulation overhead exceeds the underlay MTU: large packets will be fragmented or lost");
            }
            mtu
        }
        None => underlay_mtu.saturating_sub(overhead).max(576),
    };
    Ok(Underlay {
        advertise_addr,
        mtu,
    })
}

/// What carries the cluster CIDR beyond the node's own subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClusterRoute {
    /// The route `<cluster cidr> dev <TUN> src <gateway>` (userspace dataplane).
    Tun(u32),
    /// Per-peer routes and an `unreachable` cluster route, both kept by the kernel
    /// dataplane itself.
    KernelRoutes,
}

/// The node's devices, and what it applies when its subnet changes.
pub(crate) struct Host {
    netlink: Netlink,
    bridge_index: u32,
    cluster_route: ClusterRoute,
    cluster_cidr: IpNet,
    /// Dual-stack: the IPv6 cluster CIDR and `--subnet-len-v6`.
    second: Option<crate::control::SecondCidr>,
    node_path: PathBuf,
    node_name: String,
    bridge: String,
    mtu: u32,
    /// The subnet last applied (`Some(None)`: "no subnet" was applied).
    applied: Option<Option<IpNet>>,
}

impl Host {
    /// Sets up the bridge pods attach to and forwarding; `cluster_route` says what
    /// carries the rest of the cluster CIDR.
    pub(crate) async fn set_up(
        netlink: Netlink,
        args: &DaemonArgs,
        node_name: &str,
        mtu: u32,
        cluster_route: ClusterRoute,
    ) -> Result<Host, DaemonError> {
        let bridge_index = netlink.ensure_bridge(&args.bridge, mtu).await?;
        for cidr in args.cluster_cidr.all() {
            enable_forwarding(&cidr)?;
        }
        if args.cluster_cidr.all().any(|c| c.addr().is_ipv6()) {
            // The gateway must answer at once, not after duplicate address detection.
            no_dad(&args.bridge)?;
        }
        Ok(Host {
            netlink,
            bridge_index,
            cluster_route,
            cluster_cidr: args.cluster_cidr.primary,
            second: args.second(),
            node_path: args.run_dir.join(NODE_FILE),
            node_name: node_name.to_string(),
            bridge: args.bridge.clone(),
            mtu,
            applied: None,
        })
    }

    /// Makes the host match `subnet`: the gateway address on the bridge, the cluster
    /// route's source, and node.json; dual-stack, the same for the IPv6 subnet that
    /// goes with it. Without a subnet, the cluster addresses go and node.json is
    /// removed, so the CNI plugin answers "try again later".
    pub(crate) async fn apply(&mut self, subnet: Option<IpNet>) -> Result<(), DaemonError> {
        if self.applied == Some(subnet) {
            return Ok(());
        }
        let subnet_v6 = subnet.and_then(|s| self.subnet_v6_of(s));
        self.apply_family(self.cluster_cidr, subnet).await?;
        if let Some(crate::control::SecondCidr { cidr, .. }) = self.second {
            self.apply_family(cidr, subnet_v6).await?;
        }
        match subnet {
            Some(subnet) => {
                let info = NodeInfo {
                    node_name: self.node_name.clone(),
                    subnet,
                    gateway: gateway_of(&subnet),
                    bridge: self.bridge.clone(),
                    mtu: self.mtu,
                    cluster_cidr: self.cluster_cidr,
                    subnet_v6,
                    gateway_v6: subnet_v6.map(|s| gateway_of(&s)),
                    cluster_cidr_v6: self.second.map(|s| s.cidr),
                };
                let json = serde_json::to_vec_pretty(&info).expect("NodeInfo serializes");
                write_atomic(&self.node_path, &json, 0o600, 0o700)
                    .map_err(file_err("node file", &self.node_path))?;
                match subnet_v6 {
                    Some(v6) => tracing::info!(%subnet, subnet_v6 = %v6, "node subnets in use"),
                    None => {
                        tracing::info!(%subnet, gateway = %gateway_of(&subnet), "node subnet in use")
                    }
                }
            }
            None => {
                match std::fs::remove_file(&self.node_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(file_err("node file", &self.node_path)(e)),
                }
                tracing::warn!("no subnet for this node: pods cannot be added until it has one");
            }
        }
        self.applied = Some(subnet);
        Ok(())
    }

    /// Dual-stack: the IPv6 subnet that goes with `subnet` (the same lease index in
    /// the IPv6 cluster CIDR, see [`crate::control::NodeMeta::subnets`]).
    pub(crate) fn subnet_v6_of(&self, subnet: IpNet) -> Option<IpNet> {
        let second = self.second?;
        let idx = crate::control::subnet::index_of(self.cluster_cidr, subnet)?;
        crate::control::subnet_of(second.cidr, second.subnet_len, idx)
    }

    /// One family: the gateway of `subnet` (inside `cluster`) on the bridge, stale
    /// routes gone, and the route that carries the rest of `cluster`.
    async fn apply_family(&self, cluster: IpNet, subnet: Option<IpNet>) -> Result<(), DaemonError> {
        let gateway = subnet.map(|s| gateway_of(&s));
        let gateway_net = subnet
            .zip(gateway)
            .and_then(|(s, g)| IpNet::new(g, s.prefix_len()).ok());
        self.netlink
            .ensure_address(self.bridge_index, gateway_net, cluster)
            .await?;
        for (dst, oif, msg) in self.netlink.routes_within(cluster).await? {
            let tun_route = match self.cluster_route {
                ClusterRoute::Tun(tun) => oif == Some(tun) && dst != cluster,
                ClusterRoute::KernelRoutes => false,
            };
            let stale = (oif == Some(self.bridge_index)
                && Some(dst) != subnet
                && dst.prefix_len() != dst.max_prefix_len())
                || tun_route;
            if stale {
                tracing::info!(route = %dst, "removing stale route");
                self.netlink.delete_route(msg).await?;
            }
        }
        if let ClusterRoute::Tun(tun) = self.cluster_route {
            // IPv6 takes no `src` here: the kernel refuses a source address that is
            // still tentative (the gateway, briefly, on a bridge that just came up),
            // and its source selection (RFC 6724: matching label, longest prefix)
            // picks the gateway for cluster destinations anyway.
            let src = gateway.filter(|g| g.is_ipv4());
            self.netlink.replace_route(cluster, tun, src).await?;
        }
        Ok(())
    }
}

/// Turns duplicate address detection off on `ifname`, so an IPv6 gateway address is
/// usable as soon as it is added.
fn no_dad(ifname: &str) -> Result<(), DaemonError> {
    let path = std::path::Path::new("/proc/sys/net/ipv6/conf")
        .join(ifname)
        .join("accept_dad");
    match std::fs::write(&path, b"0") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(crate::dataplane::Error::Sysctl { path, source }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_first_host() {
        assert_eq!(
            gateway_of(&"10.244.3.0/24".parse().unwrap()),
            "10.244.3.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            gateway_of(&"fd00:1::/64".parse().unwrap()),
            "fd00:1::1".parse::<IpAddr>().unwrap()
        );
    }
}
