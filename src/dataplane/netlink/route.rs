//! Routes: the cluster route, routes to peers `onlink` through the vxlan device,
//! `unreachable` routes, route lookups and the default route.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use super::{ignore_missing, nl, Netlink};
use crate::dataplane::kernel::plan::RouteEntry;
use crate::dataplane::Error;

impl Netlink {
    /// Adds or replaces the route `dst dev <index> [src <src>]`.
    pub(crate) async fn replace_route(
        &self,
        dst: IpNet,
        index: u32,
        src: Option<IpAddr>,
    ) -> Result<(), Error> {
        let msg = route_message(dst, Some(index), src)?;
        self.handle()
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("replace route {dst} dev #{index}")))
    }

    /// Routes of the main table whose destination lies inside `within`, as
    /// (destination, output interface).
    pub(crate) async fn routes_within(
        &self,
        within: IpNet,
    ) -> Result<Vec<(IpNet, Option<u32>, RouteMessage)>, Error> {
        let mut out = Vec::new();
        let query = match within {
            IpNet::V4(_) => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpNet::V6(_) => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        let mut stream = self.handle().route().get(query).execute();
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
    pub(crate) async fn delete_route(&self, msg: RouteMessage) -> Result<(), Error> {
        self.handle()
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(nl("delete route"))
    }

    /// The address and MTU of the interface holding the default route of `family`, if
    /// there is one.
    pub(crate) async fn default_route_addr(
        &self,
        v6: bool,
    ) -> Result<Option<(IpAddr, u32)>, Error> {
        let query = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        let mut stream = self.handle().route().get(query).execute();
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

    /// The output interface the kernel picks for `dst` (`ip route get`), if any.
    pub(crate) async fn route_get(&self, dst: IpAddr) -> Result<Option<u32>, Error> {
        let msg = match dst {
            IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        let mut stream = self.handle().route().get(msg).execute();
        match stream.try_next().await {
            Ok(Some(route)) => Ok(route_dst_oif(&route).1),
            Ok(None) => Ok(None),
            // No route at all (ENETUNREACH) is an answer, not a failure.
            Err(rtnetlink::Error::NetlinkError(_)) => Ok(None),
            Err(e) => Err(nl(format!("route get {dst}"))(e)),
        }
    }

    /// Adds or replaces the route `unreachable <net>`.
    pub(crate) async fn replace_unreachable(&self, net: IpNet) -> Result<(), Error> {
        self.handle()
            .route()
            .add(unreachable_route(net))
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add route unreachable {net}")))
    }

    /// Deletes the route `unreachable <net>` if there is one.
    pub(crate) async fn delete_unreachable(&self, net: IpNet) -> Result<(), Error> {
        for (dst, _, msg) in self.routes_within(net).await? {
            if dst == net && msg.header.kind == RouteType::Unreachable {
                self.delete_route(msg).await?;
            }
        }
        Ok(())
    }

    /// Whether the route `unreachable <net>` is in the main table.
    pub(crate) async fn has_unreachable(&self, net: IpNet) -> Result<bool, Error> {
        Ok(self
            .routes_within(net)
            .await?
            .iter()
            .any(|(dst, _, msg)| *dst == net && msg.header.kind == RouteType::Unreachable))
    }

    /// The routes through link `index` to destinations inside `within`, as entries
    /// (destination, gateway, preferred source).
    pub(crate) async fn routes_on(
        &self,
        index: u32,
        within: &[IpNet],
    ) -> Result<BTreeSet<RouteEntry>, Error> {
        let mut routes = Vec::new();
        for cidr in within {
            routes.extend(self.routes_within(*cidr).await?);
        }
        let mut out = BTreeSet::new();
        for (dst, oif, msg) in routes {
            if oif != Some(index) {
                continue;
            }
            let (mut via, mut src) = (None, None);
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(v4)) => via = Some(IpAddr::V4(*v4)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => via = Some(IpAddr::V6(*v6)),
                    RouteAttribute::PrefSource(RouteAddress::Inet(v4)) => {
                        src = Some(IpAddr::V4(*v4))
                    }
                    RouteAttribute::PrefSource(RouteAddress::Inet6(v6)) => {
                        src = Some(IpAddr::V6(*v6))
                    }
                    _ => {}
                }
            }
            // A route without a gateway is not ours; deleting it needs only its
            // destination, so it is recorded with the network address as `via`.
            out.insert(RouteEntry {
                dst,
                via: via.unwrap_or(dst.network()),
                src,
            });
        }
        Ok(out)
    }

    /// Adds or replaces the route `r` through link `index`, `onlink`.
    pub(crate) async fn replace_peer_route(&self, index: u32, r: &RouteEntry) -> Result<(), Error> {
        self.handle()
            .route()
            .add(peer_route(index, r))
            .replace()
            .execute()
            .await
            .map_err(nl(format!(
                "add route {} via {} dev #{index} onlink",
                r.dst, r.via
            )))
    }

    /// Deletes the route `r` through link `index`; one already gone is not an error.
    pub(crate) async fn delete_peer_route(&self, index: u32, r: &RouteEntry) -> Result<(), Error> {
        ignore_missing(
            self.handle()
                .route()
                .del(peer_route(index, r))
                .execute()
                .await,
        )
        .map_err(nl(format!("delete route {} via {}", r.dst, r.via)))
    }
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn route_dst_oif(msg: &RouteMessage) -> (Option<IpAddr>, Option<u32>) {
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

/// `<dst> via <via> dev <index> onlink [src <src>]`.
fn peer_route(index: u32, r: &RouteEntry) -> RouteMessage {
    let mut msg = match (r.dst, r.via) {
        (IpNet::V4(d), IpAddr::V4(via)) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(d.network(), d.prefix_len())
                .gateway(via)
                .output_interface(index);
            if let Some(IpAddr::V4(s)) = r.src {
                b = b.pref_source(s);
            }
            b.build()
        }
        (IpNet::V6(d), via) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(d.network(), d.prefix_len())
                .output_interface(index);
            if let IpAddr::V6(via) = via {
                b = b.gateway(via);
            }
            if let Some(IpAddr::V6(s)) = r.src {
                b = b.pref_source(s);
            }
            b.build()
        }
        (IpNet::V4(d), IpAddr::V6(_)) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix_len())
            .output_interface(index)
            .build(),
    };
    msg.header.flags.insert(RouteFlags::Onlink);
    msg
}

fn unreachable_route(net: IpNet) -> RouteMessage {
    let mut msg = match net {
        IpNet::V4(d) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix_len())
            .build(),
        IpNet::V6(d) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(d.network(), d.prefix_len())
            .build(),
    };
    msg.header.kind = RouteType::Unreachable;
    msg.header.scope = netlink_packet_route::route::RouteScope::Universe;
    msg
}
