//! A small synchronous rtnetlink client: just the requests the plugin makes.
//!
//! Messages are built with `netlink-packet-route` and sent on a blocking `netlink-sys`
//! socket; no async runtime is involved, which keeps the plugin's exec time low. Each
//! request waits for its ACK (or `NLMSG_DONE` for dumps) and returns the kernel's error
//! as an `io::Error`, so callers can match `ENODEV`/`EEXIST`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A main-table route as read back: destination, gateway, output link index.
pub type RouteEntry = (IpNet, Option<IpAddr>, Option<u32>);

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A route-netlink socket bound to the namespace it was created in.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    rbuf: Vec<u8>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("seq", &self.seq).finish()
    }
}

/// True if `e` is the kernel saying the device does not exist.
pub fn is_no_device(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT))
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn new() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            sock,
            seq: 0,
            rbuf: Vec::with_capacity(64 * 1024),
        })
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;

        let mut out = Vec::new();
        loop {
            self.rbuf.clear();
            let n = self.sock.recv(&mut self.rbuf, 0)?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.rbuf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, flags | NLM_F_ACK).map(drop)
    }

    /// The link called `name`, or `None`.
    pub fn link(&mut self, name: &str) -> io::Result<Option<LinkMessage>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK) {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if is_no_device(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> io::Result<Vec<LinkMessage>> {
        let msgs = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// Creates a veth pair: `host` here, and `peer` (with `mac`) directly in the namespace `peer_ns`.
    pub fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns: RawFd,
        mtu: u32,
        mac: [u8; 6],
    ) -> io::Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes = vec![
            LinkAttribute::IfName(peer.to_owned()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::Address(mac.to_vec()),
            LinkAttribute::NetNsFd(peer_ns),
        ];
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(host.to_owned()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
            ]),
        ];
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Sets a link up, optionally enslaving it to `controller` and setting its alias.
    pub fn set_up(
        &mut self,
        index: u32,
        controller: Option<u32>,
        alias: Option<&str>,
    ) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if let Some(c) = controller {
            msg.attributes.push(LinkAttribute::Controller(c));
        }
        if let Some(a) = alias {
            msg.attributes.push(LinkAttribute::IfAlias(a.to_owned()));
        }
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Turns on hairpin mode for a bridge port.
    pub fn set_hairpin(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), 0)
    }

    /// Deletes a link by index.
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack(RouteNetlinkMessage::DelLink(msg), 0)
    }

    /// Deletes the link called `name`; `Ok(false)` if there is none.
    pub fn delete_link_by_name(&mut self, name: &str) -> io::Result<bool> {
        match self.link(name)? {
            Some(l) => match self.delete_link(l.header.index) {
                Ok(()) => Ok(true),
                Err(e) if is_no_device(&e) => Ok(false),
                Err(e) => Err(e),
            },
            None => Ok(false),
        }
    }

    /// Adds `addr` to link `index`. An IPv6 address skips duplicate address
    /// detection (`nodad`), so it is usable at once.
    pub fn add_address(&mut self, index: u32, addr: IpNet) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(addr.addr());
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        let ip = addr.addr();
        msg.attributes = match addr {
            IpNet::V4(v4) => vec![
                AddressAttribute::Local(ip),
                AddressAttribute::Address(ip),
                AddressAttribute::Broadcast(v4.broadcast()),
            ],
            IpNet::V6(_) => vec![
                AddressAttribute::Address(ip),
                AddressAttribute::Flags(AddressFlags::Nodad),
            ],
        };
        self.ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The addresses of link `index`, both families (IPv6 link-local ones left out).
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<IpNet>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = AddressMessage::default();
            req.header.family = family;
            let msgs = self.request(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP)?;
            for m in msgs {
                let RouteNetlinkMessage::NewAddress(a) = m else {
                    continue;
                };
                if a.header.index != index {
                    continue;
                }
                // IPv4 reports the local address as IFA_LOCAL, IPv6 as IFA_ADDRESS.
                let ip = a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Local(ip @ IpAddr::V4(_)) => Some(*ip),
                    AddressAttribute::Address(ip @ IpAddr::V6(v6))
                        if (v6.segments()[0] & 0xffc0) != 0xfe80 =>
                    {
                        Some(*ip)
                    }
                    _ => None,
                });
                if let Some(net) = ip.and_then(|ip| IpNet::new(ip, a.header.prefix_len).ok()) {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// Adds a main-table route to `dst` via `gw` (of the same family) out of link `oif`.
    pub fn add_route(&mut self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(dst.addr());
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.header.kind = RouteType::Unicast;
        if dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    dst.network(),
                )));
        }
        if let Some(gw) = gw {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(oif));
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The main-table routes of both families as `(dst, gateway, oif)`.
    pub fn routes(&mut self) -> io::Result<Vec<RouteEntry>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            let msgs = self.request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)?;
            for m in msgs {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                if r.header.table != RouteHeader::RT_TABLE_MAIN {
                    continue;
                }
                let mut dst = if family == AddressFamily::Inet {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                };
                let mut gw = None;
                let mut oif = None;
                for attr in &r.attributes {
                    match attr {
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = IpAddr::V4(*d),
                        RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = IpAddr::V6(*d),
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(IpAddr::V4(*g)),
                        RouteAttribute::Gateway(RouteAddress::Inet6(g)) => {
                            gw = Some(IpAddr::V6(*g))
                        }
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        _ => {}
                    }
                }
                if let Ok(net) = IpNet::new(dst, r.header.destination_prefix_length) {
                    out.push((net, gw, oif));
                }
            }
        }
        Ok(out)
    }
}

/// The name of a link message.
pub fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The alias (`IFLA_IFALIAS`) of a link message.
pub fn link_alias(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The hardware address of a link message.
pub fn link_mac(l: &LinkMessage) -> Option<&[u8]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

/// The MTU of a link message.
pub fn link_mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// The controller (bridge) index of a link message.
pub fn link_controller(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(c) => Some(*c),
        _ => None,
    })
}

/// True if the link message describes a veth.
pub fn is_veth(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}
