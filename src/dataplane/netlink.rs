//! Node device setup over rtnetlink: the bridge and its gateway address, the route of
//! the cluster CIDR through the TUN, and the default-route lookups the daemon needs.
//!
//! Every step is idempotent: a restart reuses what exists, repairs what differs and
//! removes addresses left over from a different subnet.

use std::net::IpAddr;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};

use super::error::Error;

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let op = op.into();
    move |source| Error::Netlink { op, source }
}

/// A netlink connection to the current network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket and spawns its connection task on the current runtime.
    pub fn connect() -> Result<Netlink, Error> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The rtnetlink handle, for the kernel dataplane's requests.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The link called `name`, if any.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, Error> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            // ENODEV: no such device.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(nl(format!("get link {name}"))(e)),
        }
    }

    /// The link with index `index`.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>, Error> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(nl(format!("get link #{index}"))(e)),
        }
    }

    /// Creates the bridge `name` if it is missing, sets its MTU and brings it up;
    /// returns its index. An existing link of that name that is not a bridge is an
    /// error, not something to delete.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32, Error> {
        let link = match self.link_by_name(name).await? {
            Some(link) => {
                if !is_kind(&link, "bridge") {
                    return Err(Error::WrongLinkKind {
                        flag: "--bridge",
                        name: name.to_string(),
                        kind: "bridge",
                        hint: "",
                    });
                }
                link
            }
            None => {
                self.handle
                    .link()
                    .add(LinkBridge::new(name).mtu(mtu).build())
                    .execute()
                    .await
                    .map_err(nl(format!("create bridge {name}")))?;
                self.link_by_name(name)
                    .await?
                    .ok_or_else(|| Error::Vanished {
                        what: "bridge",
                        name: name.to_string(),
                    })?
            }
        };
        let index = link.header.index;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(nl(format!("set {name} up with mtu {mtu}")))?;
        Ok(index)
    }

    /// Brings link `index` up with MTU `mtu`.
    pub async fn set_up(&self, index: u32, mtu: u32) -> Result<(), Error> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(nl(format!("set link #{index} up with mtu {mtu}")))
    }

    /// Addresses on link `index` of the given family, with their prefix lengths.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpNet, AddressMessage)>, Error> {
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(nl(format!("list addresses of link #{index}")))?
        {
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                if let Ok(net) = IpNet::new(ip, msg.header.prefix_len) {
                    out.push((net, msg));
                }
            }
        }
        Ok(out)
    }

    /// Makes `want` the only address inside `cluster` on link `index`: adds it if
    /// missing and deletes other addresses inside the cluster CIDR (left over from a
    /// different subnet). With `want = None` every cluster address goes. Addresses
    /// outside the cluster CIDR are left alone.
    pub async fn ensure_address(
        &self,
        index: u32,
        want: Option<IpNet>,
        cluster: IpNet,
    ) -> Result<(), Error> {
        let mut present = false;
        for (net, msg) in self.addresses(index).await? {
            if Some(net) == want {
                present = true;
            } else if cluster.contains(&net.addr()) {
                tracing::info!(address = %net, "removing address of a subnet this node no longer uses");
                self.handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(nl(format!("delete stale address {net}")))?;
            }
        }
        if let (Some(want), false) = (want, present) {
            self.handle
                .address()
                .add(index, want.addr(), want.prefix_len())
                .execute()
                .await
                .map_err(nl(format!("add address {want}")))?;
        }
        Ok(())
    }

    /// Adds or replaces the route `dst dev <index> [src <src>]`.
    pub async fn replace_route(
        &self,
        dst: IpNet,
        index: u32,
        src: Option<IpAddr>,
    ) -> Result<(), Error> {
        let msg = route_message(dst, Some(index), src)?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("replace route {dst} dev #{index}")))
    }

    /// Routes of the main table whose destination lies inside `within`, as
    /// (destination, output interface).
    pub async fn routes_within(
        &self,
        within: IpNet,
    ) -> Result<Vec<(IpNet, Option<u32>, RouteMessage)>, Error> {
        let mut out = Vec::new();
        let query = match within {
            IpNet::V4(_) => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpNet::V6(_) => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        let mut stream = self.handle.route().get(query).execute();
        while let Some(msg) = stream.try_next().await.map_err(nl("list routes"))? {
            if msg.header.table != libc::RT_TABLE_MAIN {
                continue;
            }
            let (dst, oif) = route_dst_oif(&msg);
            let Some(dst) =
                dst.and_then(|d| IpNet::new(d, msg.header.destination_prefix_length).ok())
            else {
                continue;
            };
            if within.contains(&dst) {
                out.push((dst, oif, msg));
            }
        }
        Ok(out)
    }

    /// Deletes a route.
    pub async fn delete_route(&self, msg: RouteMessage) -> Result<(), Error> {
        self.handle
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(nl("delete route"))
    }

    /// The address and MTU of the interface holding the default route of `family`, if
    /// there is one.
    pub async fn default_route_addr(&self, v6: bool) -> Result<Option<(IpAddr, u32)>, Error> {
        let query = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        let mut stream = self.handle.route().get(query).execute();
        let mut oif = None;
        while let Some(msg) = stream.try_next().await.map_err(nl("list routes"))? {
            if msg.header.table == libc::RT_TABLE_MAIN && msg.header.destination_prefix_length == 0
            {
                oif = route_dst_oif(&msg).1;
                if oif.is_some() {
                    break;
                }
            }
        }
        let Some(oif) = oif else { return Ok(None) };
        let addr = self
            .addresses(oif)
            .await?
            .into_iter()
            .map(|(net, _)| net.addr())
            .find(|a| a.is_ipv6() == v6 && !is_link_local(a));
        let Some(addr) = addr else { return Ok(None) };
        Ok(self.link_mtu(oif).await?.map(|mtu| (addr, mtu)))
    }

    /// The index and MTU of the interface that holds `addr`.
    pub async fn link_of_addr(&self, addr: IpAddr) -> Result<Option<(u32, u32)>, Error> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_address_filter(addr)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(nl(format!("find address {addr}")))?
        {
            let index = msg.header.index;
            if let Some(mtu) = self.link_mtu(index).await? {
                return Ok(Some((index, mtu)));
            }
        }
        Ok(None)
    }

    /// The MTU of link `index`.
    pub async fn link_mtu(&self, index: u32) -> Result<Option<u32>, Error> {
        Ok(self.link_by_index(index).await?.and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
        }))
    }
}

/// True when the link is administratively up.
pub fn is_up(link: &LinkMessage) -> bool {
    link.header
        .flags
        .contains(netlink_packet_route::link::LinkFlags::Up)
}

impl Netlink {
    /// The output interface the kernel picks for `dst` (`ip route get`), if any.
    pub async fn route_get(&self, dst: IpAddr) -> Result<Option<u32>, Error> {
        let msg = match dst {
            IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        let mut stream = self.handle.route().get(msg).execute();
        match stream.try_next().await {
            Ok(Some(route)) => Ok(route_dst_oif(&route).1),
            Ok(None) => Ok(None),
            // No route at all (ENETUNREACH) is an answer, not a failure.
            Err(rtnetlink::Error::NetlinkError(_)) => Ok(None),
            Err(e) => Err(nl(format!("route get {dst}"))(e)),
        }
    }
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

pub(crate) fn is_kind(link: &LinkMessage, kind: &str) -> bool {
    use netlink_packet_route::link::{InfoKind, LinkInfo};
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| match i {
            LinkInfo::Kind(InfoKind::Bridge) => kind == "bridge",
            LinkInfo::Kind(InfoKind::Tun) => kind == "tun",
            LinkInfo::Kind(InfoKind::Vxlan) => kind == "vxlan",
            _ => false,
        }),
        _ => false,
    })
}

fn route_dst_oif(msg: &RouteMessage) -> (Option<IpAddr>, Option<u32>) {
    use netlink_packet_route::route::RouteAddress;
    let mut dst = None;
    let mut oif = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => dst = Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => dst = Some(IpAddr::V6(*v6)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if dst.is_none() && msg.header.destination_prefix_length == 0 {
        dst = Some(match msg.header.address_family {
            AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        });
    }
    (dst, oif)
}

fn route_message(dst: IpNet, oif: Option<u32>, src: Option<IpAddr>) -> Result<RouteMessage, Error> {
    let msg = match (dst, src) {
        (IpNet::V4(d), src) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(d.network(), d.prefix_len());
            if let Some(oif) = oif {
                b = b.output_interface(oif);
            }
            if let Some(IpAddr::V4(s)) = src {
                b = b.pref_source(s);
            }
            b.build()
        }
        (IpNet::V6(d), src) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(d.network(), d.prefix_len());
            if let Some(oif) = oif {
                b = b.output_interface(oif);
            }
            if let Some(IpAddr::V6(s)) = src {
                b = b.pref_source(s);
            }
            b.build()
        }
    };
    Ok(msg)
}

/// Turns on IP forwarding for the family of `net` in this network namespace.
pub fn enable_forwarding(net: &IpNet) -> Result<(), Error> {
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
pub fn disable_ipv6(ifname: &str) -> Result<(), Error> {
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
pub fn accept_local(ifname: &str) -> Result<(), Error> {
    let path = Path::new("/proc/sys/net/ipv4/conf")
        .join(ifname)
        .join("accept_local");
    std::fs::write(&path, b"1").map_err(|source| Error::Sysctl { path, source })
}
