//! The kernel dataplane's rtnetlink requests: the vxlan device, its neighbour and
//! FDB entries, the routes through it, the cluster's `unreachable` route, and the
//! device's counters. Each call does what it is told; what to program comes from
//! [`super::plan`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::plan::{Change, Entries, RouteEntry};
use crate::dataplane::netlink::{is_kind, Netlink};
use crate::dataplane::wire::MacAddr;
use crate::dataplane::Error;

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let op = op.into();
    move |source| Error::Netlink { op, source }
}

/// The vxlan device the kernel dataplane uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name (`--vxlan-device`).
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// The advertise address: the device's `local`.
    pub local: IpAddr,
    /// The VXLAN UDP port.
    pub port: u16,
    /// The overlay MTU.
    pub mtu: u32,
    /// The VTEP MAC: the device's address.
    pub mac: MacAddr,
    /// The underlay interface holding `local`, if known.
    pub underlay_index: Option<u32>,
}

/// What matters to us about an existing vxlan device: VNI, port, local address and
/// whether it learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VxlanParams {
    vni: Option<u32>,
    port: Option<u16>,
    local: Option<IpAddr>,
    learning: bool,
}

/// What the kernel says about an existing vxlan device that matters to us.
fn vxlan_params(link: &LinkMessage) -> Option<VxlanParams> {
    let mut found = None;
    for attr in &link.attributes {
        let LinkAttribute::LinkInfo(infos) = attr else {
            continue;
        };
        for info in infos {
            let LinkInfo::Data(InfoData::Vxlan(data)) = info else {
                continue;
            };
            let (mut id, mut port, mut local, mut learning) = (None, None, None, true);
            for d in data {
                match d {
                    InfoVxlan::Id(v) => id = Some(*v),
                    InfoVxlan::Port(p) => port = Some(*p),
                    InfoVxlan::Local(a) => local = Some(IpAddr::V4(*a)),
                    InfoVxlan::Local6(a) => local = Some(IpAddr::V6(*a)),
                    InfoVxlan::Learning(l) => learning = *l,
                    _ => {}
                }
            }
            found = Some(VxlanParams {
                vni: id,
                port,
                local,
                learning,
            });
        }
    }
    found
}

/// A MAC address from its six bytes.
fn mac_of(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

fn link_mac(link: &LinkMessage) -> Option<MacAddr> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => mac_of(b),
        _ => None,
    })
}

/// The device's counters the status reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Frames sent into the overlay.
    pub tx_packets: u64,
    /// Their bytes (inner Ethernet frames).
    pub tx_bytes: u64,
    /// Frames received from the overlay.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Errors and drops the kernel reports, by name.
    pub errors: [(&'static str, u64); 4],
}

impl Netlink {
    /// Creates the vxlan device, or reuses one that matches `spec` (VNI, port,
    /// local, no learning); a vxlan device that differs is recreated, a link of that
    /// name of another kind is an error. Sets the MAC and MTU and returns the index,
    /// leaving the device down: the caller brings it up once its filter is in place.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<u32, Error> {
        if let Some(link) = self.link_by_name(&spec.name).await? {
            if !is_kind(&link, "vxlan") {
                return Err(Error::WrongLinkKind {
                    flag: "--vxlan-device",
                    name: spec.name.clone(),
                    kind: "vxlan device",
                    hint: "; remove it or pick another name",
                });
            }
            let want = VxlanParams {
                vni: Some(spec.vni),
                port: Some(spec.port),
                local: Some(spec.local),
                learning: false,
            };
            if vxlan_params(&link) == Some(want) {
                tracing::info!(device = %spec.name, "reusing the existing vxlan device");
                self.configure_vxlan(link.header.index, spec).await?;
                return Ok(link.header.index);
            }
            tracing::info!(device = %spec.name, found = ?vxlan_params(&link), "recreating the vxlan device: its VNI, port, local address or learning differ");
            self.delete_link(link.header.index, &spec.name).await?;
        }
        fault_point_vxlan_create()?;
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .learning(false)
            .mtu(spec.mtu);
        b = match spec.local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        };
        if let Some(dev) = spec.underlay_index {
            b = b.dev(dev);
        }
        self.handle()
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(nl(format!("create vxlan device {}", spec.name)))?;
        let link = self
            .link_by_name(&spec.name)
            .await?
            .ok_or_else(|| Error::Vanished {
                what: "vxlan device",
                name: spec.name.clone(),
            })?;
        self.configure_vxlan(link.header.index, spec).await?;
        tracing::info!(device = %spec.name, vni = spec.vni, port = spec.port, local = %spec.local, "created the vxlan device");
        Ok(link.header.index)
    }

    async fn configure_vxlan(&self, index: u32, spec: &VxlanSpec) -> Result<(), Error> {
        let link = self.link_by_index(index).await?;
        if link.as_ref().and_then(link_mac) != Some(spec.mac) {
            self.handle()
                .link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .address(spec.mac.0.to_vec())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl(format!("set the MAC of {} to {}", spec.name, spec.mac)))?;
        }
        self.handle()
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(spec.mtu).build())
            .execute()
            .await
            .map_err(nl(format!("set the MTU of {} to {}", spec.name, spec.mtu)))
    }

    /// Deletes link `index` (called `name` in errors).
    pub async fn delete_link(&self, index: u32, name: &str) -> Result<(), Error> {
        self.handle()
            .link()
            .del(index)
            .execute()
            .await
            .map_err(nl(format!("delete link {name}")))
    }

    /// Deletes the link called `name` if it exists and is of `kind`; true if it did.
    pub async fn delete_link_of_kind(&self, name: &str, kind: &str) -> Result<bool, Error> {
        match self.link_by_name(name).await? {
            Some(link) if is_kind(&link, kind) => {
                self.delete_link(link.header.index, name).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The neighbour, FDB and route entries on vxlan device `index`, whose FDB
    /// entries default to `port`.
    pub async fn vxlan_entries(
        &self,
        index: u32,
        port: u16,
        within: &[IpNet],
    ) -> Result<Entries, Error> {
        let mut out = Entries::default();
        let mut stream = self.handle().neighbours().get().execute();
        while let Some(msg) = stream.try_next().await.map_err(nl("list neighbours"))? {
            if msg.header.ifindex != index {
                continue;
            }
            match msg.header.family {
                AddressFamily::Inet | AddressFamily::Inet6 => {
                    if let Some(ip) = neigh_dst(&msg) {
                        out.neighbours
                            .insert((ip, neigh_mac(&msg).unwrap_or_default()));
                    }
                }
                AddressFamily::Bridge => {
                    if let (Some(mac), Some(ip)) = (neigh_mac(&msg), neigh_dst(&msg)) {
                        out.fdb
                            .insert((mac, SocketAddr::new(ip, neigh_port(&msg).unwrap_or(port))));
                    }
                }
                _ => {}
            }
        }
        let mut stream = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = stream.try_next().await.map_err(nl("list FDB entries"))? {
            if msg.header.ifindex != index {
                continue;
            }
            if let (Some(mac), Some(ip)) = (neigh_mac(&msg), neigh_dst(&msg)) {
                out.fdb
                    .insert((mac, SocketAddr::new(ip, neigh_port(&msg).unwrap_or(port))));
            }
        }
        let mut routes = Vec::new();
        for cidr in within {
            routes.extend(self.routes_within(*cidr).await?);
        }
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
            out.routes.insert(RouteEntry {
                dst,
                via: via.unwrap_or(dst.network()),
                src,
            });
        }
        Ok(out)
    }

    /// Applies one change to vxlan device `index` (whose FDB entries default to
    /// `port`).
    pub async fn apply_change(&self, index: u32, port: u16, change: Change) -> Result<(), Error> {
        let h = self.handle();
        match change {
            Change::AddFdb(mac, at) => {
                let mut req = h
                    .neighbours()
                    .add_bridge(index, &mac.0)
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .destination(at.ip());
                if at.port() != port {
                    req.message_mut()
                        .attributes
                        .push(NeighbourAttribute::Port(at.port()));
                }
                req.execute()
                    .await
                    .map_err(nl(format!("add FDB entry {mac} dst {at}")))
            }
            Change::DelFdb(mac, at) => {
                let mut msg = NeighbourMessage::default();
                msg.header.family = AddressFamily::Bridge;
                msg.header.ifindex = index;
                msg.header.flags = NeighbourFlags::Own;
                msg.header.state = NeighbourState::Permanent;
                msg.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
                msg.attributes
                    .push(NeighbourAttribute::Destination(neigh_addr(at.ip())));
                if at.port() != port {
                    msg.attributes.push(NeighbourAttribute::Port(at.port()));
                }
                ignore_missing(h.neighbours().del(msg).execute().await)
                    .map_err(nl(format!("delete FDB entry {mac} dst {at}")))
            }
            Change::AddNeighbour(ip, mac) => h
                .neighbours()
                .add(index, ip)
                .link_layer_address(&mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("add neighbour {ip} lladdr {mac}"))),
            Change::DelNeighbour(ip, mac) => {
                let mut msg = NeighbourMessage::default();
                msg.header.family = match ip {
                    IpAddr::V4(_) => AddressFamily::Inet,
                    IpAddr::V6(_) => AddressFamily::Inet6,
                };
                msg.header.ifindex = index;
                msg.attributes
                    .push(NeighbourAttribute::Destination(neigh_addr(ip)));
                ignore_missing(h.neighbours().del(msg).execute().await)
                    .map_err(nl(format!("delete neighbour {ip} lladdr {mac}")))
            }
            Change::AddRoute(r) => h
                .route()
                .add(peer_route(index, &r))
                .replace()
                .execute()
                .await
                .map_err(nl(format!(
                    "add route {} via {} dev #{index} onlink",
                    r.dst, r.via
                ))),
            Change::DelRoute(r) => {
                ignore_missing(h.route().del(peer_route(index, &r)).execute().await)
                    .map_err(nl(format!("delete route {} via {}", r.dst, r.via)))
            }
        }
    }

    /// Adds or replaces the route `unreachable <net>`.
    pub async fn replace_unreachable(&self, net: IpNet) -> Result<(), Error> {
        self.handle()
            .route()
            .add(unreachable_route(net))
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add route unreachable {net}")))
    }

    /// Deletes the route `unreachable <net>` if there is one.
    pub async fn delete_unreachable(&self, net: IpNet) -> Result<(), Error> {
        for (dst, _, msg) in self.routes_within(net).await? {
            if dst == net && msg.header.kind == RouteType::Unreachable {
                self.delete_route(msg).await?;
            }
        }
        Ok(())
    }

    /// Whether the route `unreachable <net>` is in the main table.
    pub async fn has_unreachable(&self, net: IpNet) -> Result<bool, Error> {
        Ok(self
            .routes_within(net)
            .await?
            .iter()
            .any(|(dst, _, msg)| *dst == net && msg.header.kind == RouteType::Unreachable))
    }

    /// The counters of link `index`.
    pub async fn device_counters(&self, index: u32) -> Result<Option<DeviceCounters>, Error> {
        let Some(link) = self.link_by_index(index).await? else {
            return Ok(None);
        };
        Ok(link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(DeviceCounters {
                tx_packets: s.tx_packets,
                tx_bytes: s.tx_bytes,
                rx_packets: s.rx_packets,
                rx_bytes: s.rx_bytes,
                errors: [
                    ("rx_dropped", s.rx_dropped),
                    ("rx_errors", s.rx_errors),
                    ("tx_dropped", s.tx_dropped),
                    ("tx_errors", s.tx_errors),
                ],
            }),
            _ => None,
        }))
    }

    /// The neighbour, FDB entry and route of one peer on vxlan device `index`, for
    /// `diagnose`: which of them are missing or differ.
    pub async fn check_peer_entries(
        &self,
        index: u32,
        port: u16,
        within: &[IpNet],
        want: &Entries,
    ) -> Result<Vec<String>, Error> {
        let have = self.vxlan_entries(index, port, within).await?;
        let mut problems = Vec::new();
        for (ip, mac) in &want.neighbours {
            if !have.neighbours.contains(&(*ip, *mac)) {
                problems.push(format!("no neighbour entry {ip} lladdr {mac}"));
            }
        }
        for (mac, at) in &want.fdb {
            if !have.fdb.contains(&(*mac, *at)) {
                problems.push(format!("no FDB entry {mac} dst {at}"));
            }
        }
        let routes: BTreeMap<IpNet, IpAddr> = have.routes.iter().map(|r| (r.dst, r.via)).collect();
        for r in &want.routes {
            if routes.get(&r.dst) != Some(&r.via) {
                problems.push(format!("no route {} via {} onlink", r.dst, r.via));
            }
        }
        Ok(problems)
    }
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

fn neigh_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

/// The entry's destination; in an FDB entry (family bridge) the crate leaves the
/// address as raw bytes, 4 or 16 of them.
fn neigh_dst(msg: &NeighbourMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

fn neigh_mac(msg: &NeighbourMessage) -> Option<MacAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => mac_of(b),
        _ => None,
    })
}

fn neigh_port(msg: &NeighbourMessage) -> Option<u16> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Port(p) => Some(*p),
        _ => None,
    })
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

/// The variable that makes a test fail a step of the daemon (`netns-tests` only).
pub const TEST_FAIL_VAR: &str = "OVERLAYD_TEST_FAIL";

/// With the `netns-tests` feature and `OVERLAYD_TEST_FAIL=vxlan_create`, fails the
/// vxlan device's creation as a kernel without the vxlan module does (EOPNOTSUPP),
/// before any request is sent. Without the feature it does nothing.
fn fault_point_vxlan_create() -> Result<(), Error> {
    #[cfg(feature = "netns-tests")]
    if std::env::var(TEST_FAIL_VAR).is_ok_and(|v| v == "vxlan_create") {
        return Err(Error::TestFault {
            what: "create vxlan device",
            source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            var: TEST_FAIL_VAR,
            value: "vxlan_create",
        });
    }
    Ok(())
}
