//! Links: by name or index, the node bridge, up and MTU, deletes, kinds and counters.

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{LinkBridge, LinkUnspec};

use super::{nl, Netlink};
use crate::dataplane::wire::MacAddr;
use crate::dataplane::Error;

/// A link's counters, as the status reports them for the kernel dataplane's device.
///
/// The device's counters the status reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DeviceCounters {
    /// Frames sent into the overlay.
    pub(crate) tx_packets: u64,
    /// Their bytes (inner Ethernet frames).
    pub(crate) tx_bytes: u64,
    /// Frames received from the overlay.
    pub(crate) rx_packets: u64,
    /// Their bytes.
    pub(crate) rx_bytes: u64,
    /// Errors and drops the kernel reports, by name.
    pub(crate) errors: [(&'static str, u64); 4],
}

impl Netlink {
    /// The link called `name`, if any.
    pub(crate) async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, Error> {
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
    pub(crate) async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>, Error> {
        let mut links = self.handle().link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(nl(format!("get link #{index}"))(e)),
        }
    }

    /// Creates the bridge `name` if it is missing, sets its MTU and brings it up;
    /// returns its index. An existing link of that name that is not a bridge is an
    /// error, not something to delete.
    pub(crate) async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32, Error> {
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
                self.handle()
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
        self.handle()
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(nl(format!("set {name} up with mtu {mtu}")))?;
        Ok(index)
    }

    /// Brings link `index` up with MTU `mtu`.
    pub(crate) async fn set_up(&self, index: u32, mtu: u32) -> Result<(), Error> {
        self.handle()
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(nl(format!("set link #{index} up with mtu {mtu}")))
    }

    /// The MTU of link `index`.
    pub(crate) async fn link_mtu(&self, index: u32) -> Result<Option<u32>, Error> {
        Ok(self.link_by_index(index).await?.and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
        }))
    }

    /// Deletes link `index` (called `name` in errors).
    pub(crate) async fn delete_link(&self, index: u32, name: &str) -> Result<(), Error> {
        self.handle()
            .link()
            .del(index)
            .execute()
            .await
            .map_err(nl(format!("delete link {name}")))
    }

    /// Deletes the link called `name` if it exists and is of `kind`; true if it did.
    pub(crate) async fn delete_link_of_kind(&self, name: &str, kind: &str) -> Result<bool, Error> {
        match self.link_by_name(name).await? {
            Some(link) if is_kind(&link, kind) => {
                self.delete_link(link.header.index, name).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The counters of link `index`.
    pub(crate) async fn device_counters(
        &self,
        index: u32,
    ) -> Result<Option<DeviceCounters>, Error> {
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
}

/// True when the link is administratively up.
pub(crate) fn is_up(link: &LinkMessage) -> bool {
    link.header
        .flags
        .contains(netlink_packet_route::link::LinkFlags::Up)
}

/// Whether `link` is of `kind` (`bridge`, `tun` or `vxlan`).
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

/// A MAC address from its six bytes.
pub(super) fn mac_of(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

/// The link's MAC address.
pub(super) fn link_mac(link: &LinkMessage) -> Option<MacAddr> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => mac_of(b),
        _ => None,
    })
}
