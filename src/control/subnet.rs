//! How the cluster CIDR is numbered: `/subnet_len` subnets, counted from 0.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::error::Error;

/// Dual-stack: the second cluster CIDR (IPv6) and the prefix length of each node's
/// subnet in it (`--subnet-len-v6`). The primary is `--cluster-cidr`'s first CIDR with
/// `--subnet-len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecondCidr {
    /// The IPv6 cluster CIDR.
    pub(crate) cidr: IpNet,
    /// The prefix length of a node's subnet in it.
    pub(crate) subnet_len: u8,
}

/// Number of `/subnet_len` subnets in `cidr`, capped at 2^20.
pub(crate) fn subnet_count(cidr: IpNet, subnet_len: u8) -> Result<u32, Error> {
    let bits = cidr.max_prefix_len();
    if subnet_len < cidr.prefix_len() || subnet_len > bits {
        return Err(Error::BadSubnetLen { cidr, subnet_len });
    }
    let shift = u32::from(subnet_len - cidr.prefix_len());
    Ok(1u32 << shift.min(20))
}

/// The `idx`-th `/subnet_len` subnet of `cidr`; `None` past the last one.
pub(crate) fn subnet_of(cidr: IpNet, subnet_len: u8, idx: u32) -> Option<IpNet> {
    // `checked_shl` only checks the shift amount, not the bits shifted out: an index
    // past the count would give a subnet outside `cidr` (or wrap onto another one).
    if idx >= subnet_count(cidr, subnet_len).ok()? {
        return None;
    }
    let host_bits = u32::from(cidr.max_prefix_len().checked_sub(subnet_len)?);
    match cidr.trunc() {
        IpNet::V4(n) => {
            let off = u32::checked_shl(idx, host_bits).filter(|_| host_bits < 32)?;
            let base = u32::from(n.network()).checked_add(off)?;
            Ipv4Net::new(Ipv4Addr::from(base), subnet_len)
                .ok()
                .map(IpNet::V4)
        }
        IpNet::V6(n) => {
            let off = u128::checked_shl(u128::from(idx), host_bits).filter(|_| host_bits < 128)?;
            let base = u128::from(n.network()).checked_add(off)?;
            Ipv6Net::new(Ipv6Addr::from(base), subnet_len)
                .ok()
                .map(IpNet::V6)
        }
    }
}

/// The index of `subnet` among the `/subnet.prefix_len()` subnets of `cidr`.
pub(crate) fn index_of(cidr: IpNet, subnet: IpNet) -> Option<u32> {
    if !cidr.contains(&subnet.network()) || subnet.prefix_len() < cidr.prefix_len() {
        return None;
    }
    let host_bits = u32::from(subnet.max_prefix_len() - subnet.prefix_len());
    let off = match (cidr.trunc(), subnet) {
        (IpNet::V4(c), IpNet::V4(s)) => u128::from(u32::from(s.network()) - u32::from(c.network())),
        (IpNet::V6(c), IpNet::V6(s)) => u128::from(s.network()) - u128::from(c.network()),
        _ => return None,
    };
    u32::try_from(off.checked_shr(host_bits).unwrap_or(0)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_numbered_from_the_cidr() {
        let cidr: IpNet = "10.244.0.0/16".parse().unwrap();
        assert_eq!(subnet_count(cidr, 24).unwrap(), 256);
        assert_eq!(
            subnet_of(cidr, 24, 3),
            Some("10.244.3.0/24".parse().unwrap())
        );
        assert_eq!(
            subnet_of(cidr, 24, 255),
            Some("10.244.255.0/24".parse().unwrap())
        );
        assert!(subnet_count(cidr, 8).is_err());
        let v6: IpNet = "fd00::/48".parse().unwrap();
        assert_eq!(
            subnet_of(v6, 64, 1),
            Some("fd00:0:0:1::/64".parse().unwrap())
        );
        assert_eq!(index_of(cidr, "10.244.3.0/24".parse().unwrap()), Some(3));
        assert_eq!(index_of(v6, "fd00:0:0:7::/64".parse().unwrap()), Some(7));
        assert_eq!(index_of(cidr, "10.245.3.0/24".parse().unwrap()), None);
        assert_eq!(index_of(cidr, v6), None);
    }

    #[test]
    fn an_index_past_the_count_is_no_subnet() {
        let cidr: IpNet = "10.244.0.0/16".parse().unwrap();
        // 256 is the first index outside the /16; 2^24 + 3 would alias index 3.
        assert_eq!(subnet_of(cidr, 24, 256), None);
        assert_eq!(subnet_of(cidr, 24, (1 << 24) + 3), None);
        assert_eq!(subnet_of(cidr, 24, u32::MAX), None);
        let top: IpNet = "255.255.0.0/16".parse().unwrap();
        assert_eq!(subnet_of(top, 24, 256), None);
        let v6: IpNet = "fd00::/48".parse().unwrap();
        assert_eq!(subnet_of(v6, 64, 1 << 16), None);
        assert_eq!(
            subnet_of(v6, 64, (1 << 16) - 1),
            Some("fd00:0:0:ffff::/64".parse().unwrap())
        );
    }
}
