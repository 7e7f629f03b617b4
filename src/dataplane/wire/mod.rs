//! Typed views over packet buffers, in the style of smoltcp's `wire` module.
//!
//! Each header has a `Packet<T: AsRef<[u8]>>` view with `new_unchecked`, `new_checked`
//! and `check_len`. Once `check_len` (or `new_checked`) has returned `Ok`, no accessor
//! of that view panics, whatever the bytes say: every field it reads lies inside the
//! length that `check_len` verified. Setters exist only where the dataplane emits a
//! header (VXLAN and inner Ethernet); they panic only if the buffer is shorter than
//! the header, which the emitting code rules out by construction.
//!
//! [`checksum`] is the one Internet checksum (RFC 1071) of the dataplane.
//!
//! What is left out: outer IP and UDP headers (the kernel's UDP socket builds and checks
//! them), VLAN tags and IPv6 extension headers (the inner packet is handed to the
//! kernel as is).

pub mod checksum;
pub mod ethernet;
pub mod ipv4;
pub mod ipv6;
pub mod vxlan;

pub use ethernet::{EtherType, EthernetFrame, MacAddr};
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use vxlan::VxlanPacket;

/// Why a buffer does not hold the header a view expects. Tiny and `Copy`, so the
/// packet path can count it without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the header, or than a length field inside it says.
    Truncated,
    /// A field holds a value the format does not allow (version, header length, ...).
    Malformed,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Truncated => f.write_str("buffer shorter than the header says"),
            Error::Malformed => f.write_str("malformed header field"),
        }
    }
}

impl std::error::Error for Error {}

/// A byte range inside a header.
pub(crate) type Field = core::ops::Range<usize>;

/// The inner IP packet of a frame, IPv4 or IPv6, told apart by its version nibble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    /// Source address.
    pub src: std::net::IpAddr,
    /// Destination address.
    pub dst: std::net::IpAddr,
    /// Length of the whole IP packet as its header states it (header + payload).
    pub total_len: usize,
}

impl IpHeader {
    /// Parses and checks the IP header at the start of `buf`: version, header length,
    /// the IPv4 header checksum, and a total length that fits inside `buf`. Trailing
    /// bytes past `total_len` (Ethernet padding) are allowed.
    #[inline]
    pub fn parse(buf: &[u8]) -> Result<IpHeader, Error> {
        match buf.first().map(|b| b >> 4) {
            Some(4) => {
                let p = Ipv4Packet::new_checked(buf)?;
                if !p.verify_checksum() {
                    return Err(Error::Malformed);
                }
                Ok(IpHeader {
                    src: p.src_addr().into(),
                    dst: p.dst_addr().into(),
                    total_len: usize::from(p.total_len()),
                })
            }
            Some(6) => {
                let p = Ipv6Packet::new_checked(buf)?;
                Ok(IpHeader {
                    src: p.src_addr().into(),
                    dst: p.dst_addr().into(),
                    total_len: p.total_len(),
                })
            }
            Some(_) => Err(Error::Malformed),
            None => Err(Error::Truncated),
        }
    }
}
