//! The kernel dataplane's vxlan device: created or reused to match a spec, and its
//! neighbour, FDB and route entries read and changed as one [`Entries`].

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{LinkUnspec, LinkVxlan};

use super::link::{is_kind, link_mac};
use super::{nl, Netlink};
use crate::dataplane::kernel::plan::{Change, Entries};
use crate::dataplane::wire::MacAddr;
use crate::dataplane::Error;

/// The vxlan device the kernel dataplane uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VxlanSpec {
    /// Device name (`--vxlan-device`).
    pub(crate) name: String,
    /// VNI.
    pub(crate) vni: u32,
    /// The advertise address: the device's `local`.
    pub(crate) local: IpAddr,
    /// The VXLAN UDP port.
    pub(crate) port: u16,
    /// The overlay MTU.
    pub(crate) mtu: u32,
    /// The VTEP MAC: the device's address.
    pub(crate) mac: MacAddr,
    /// The underlay interface holding `local`, if known.
    pub(crate) underlay_index: Option<u32>,
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

impl Netlink {
    /// Creates the vxlan device, or reuses one that matches `spec` (VNI, port,
    /// local, no learning); a vxlan device that differs is recreated, a link of that
    /// name of another kind is an error. Sets the MAC and MTU and returns the index,
    /// leaving the device down: the caller brings it up once its filter is in place.
    pub(crate) async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<u32, Error> {
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

    /// The neighbour, FDB and route entries on vxlan device `index`, whose FDB
    /// entries default to `port`; routes are those to destinations inside `within`.
    pub(crate) async fn vxlan_entries(
        &self,
        index: u32,
        port: u16,
        within: &[IpNet],
    ) -> Result<Entries, Error> {
        let n = self.neighbours_on(index, port).await?;
        Ok(Entries {
            neighbours: n.neighbours,
            fdb: n.fdb,
            routes: self.routes_on(index, within).await?,
        })
    }

    /// Applies one change to vxlan device `index` (whose FDB entries default to
    /// `port`).
    pub(crate) async fn apply_change(
        &self,
        index: u32,
        port: u16,
        change: Change,
    ) -> Result<(), Error> {
        match change {
            Change::AddFdb(mac, at) => self.add_fdb(index, port, mac, at).await,
            Change::DelFdb(mac, at) => self.delete_fdb(index, port, mac, at).await,
            Change::AddNeighbour(ip, mac) => self.replace_neighbour(index, ip, mac).await,
            Change::DelNeighbour(ip, mac) => self.delete_neighbour(index, ip, mac).await,
            Change::AddRoute(r) => self.replace_peer_route(index, &r).await,
            Change::DelRoute(r) => self.delete_peer_route(index, &r).await,
        }
    }
}

/// With the `netns-tests` feature and `OVERLAYD_TEST_FAIL=vxlan_create`, fails the
/// vxlan device's creation as a kernel without the vxlan module does (EOPNOTSUPP),
/// before any request is sent. Without the feature it does nothing.
fn fault_point_vxlan_create() -> Result<(), Error> {
    /// The variable that makes a test fail a step of the daemon.
    #[cfg(feature = "netns-tests")]
    const TEST_FAIL_VAR: &str = "OVERLAYD_TEST_FAIL";
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
