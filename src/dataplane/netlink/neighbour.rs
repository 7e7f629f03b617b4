//! Neighbour and FDB entries (both are `neighbour` objects to rtnetlink: families
//! inet/inet6 and bridge).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;

use super::link::mac_of;
use super::{ignore_missing, nl, Netlink};
use crate::dataplane::wire::MacAddr;
use crate::dataplane::Error;

/// The neighbour and FDB entries on one link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NeighbourEntries {
    /// Neighbour entries: address to MAC.
    pub(crate) neighbours: BTreeSet<(IpAddr, MacAddr)>,
    /// FDB entries: MAC to underlay address and port.
    pub(crate) fdb: BTreeSet<(MacAddr, SocketAddr)>,
}

impl Netlink {
    /// The neighbour and FDB entries on link `index`, whose FDB entries default to
    /// `port`.
    pub(crate) async fn neighbours_on(
        &self,
        index: u32,
        port: u16,
    ) -> Result<NeighbourEntries, Error> {
        let mut out = NeighbourEntries::default();
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
        Ok(out)
    }

    /// Adds the permanent FDB entry `mac dst at` on link `index` (whose default
    /// port is `port`).
    pub(crate) async fn add_fdb(
        &self,
        index: u32,
        port: u16,
        mac: MacAddr,
        at: SocketAddr,
    ) -> Result<(), Error> {
        let mut req = self
            .handle()
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

    /// Deletes the FDB entry `mac dst at` on link `index`; one already gone is not
    /// an error.
    pub(crate) async fn delete_fdb(
        &self,
        index: u32,
        port: u16,
        mac: MacAddr,
        at: SocketAddr,
    ) -> Result<(), Error> {
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
        ignore_missing(self.handle().neighbours().del(msg).execute().await)
            .map_err(nl(format!("delete FDB entry {mac} dst {at}")))
    }

    /// Adds or replaces the permanent neighbour entry `ip lladdr mac` on link `index`.
    pub(crate) async fn replace_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> Result<(), Error> {
        self.handle()
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add neighbour {ip} lladdr {mac}")))
    }

    /// Deletes the neighbour entry of `ip` on link `index` (`mac` names it in
    /// errors); one already gone is not an error.
    pub(crate) async fn delete_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> Result<(), Error> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(neigh_addr(ip)));
        ignore_missing(self.handle().neighbours().del(msg).execute().await)
            .map_err(nl(format!("delete neighbour {ip} lladdr {mac}")))
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
