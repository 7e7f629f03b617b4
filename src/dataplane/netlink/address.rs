//! Addresses: those on a link, the one address of ours inside the cluster, and the
//! link that holds an address.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};

use super::{nl, Netlink};
use crate::dataplane::Error;

impl Netlink {
    /// Addresses on link `index` of the given family, with their prefix lengths.
    pub(crate) async fn addresses(
        &self,
        index: u32,
    ) -> Result<Vec<(IpNet, AddressMessage)>, Error> {
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
    pub(crate) async fn ensure_address(
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
                self.handle()
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(nl(format!("delete stale address {net}")))?;
            }
        }
        if let (Some(want), false) = (want, present) {
            self.handle()
                .address()
                .add(index, want.addr(), want.prefix_len())
                .execute()
                .await
                .map_err(nl(format!("add address {want}")))?;
        }
        Ok(())
    }

    /// The index and MTU of the interface that holds `addr`.
    pub(crate) async fn link_of_addr(&self, addr: IpAddr) -> Result<Option<(u32, u32)>, Error> {
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
}
