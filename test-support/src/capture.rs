//! An AF_PACKET capture of the IPv4 VXLAN datagrams (to port 4789) on one interface,
//! which reads every segment of a GSO super-packet.
//!
//! On veth, AF_PACKET sees a UDP GSO super-packet (several datagrams sent with one
//! `UDP_SEGMENT` sendmsg) as one frame: one outer header, then the segments' payloads
//! back to back. The capture asks for a virtio-net header in front of each frame
//! (`PACKET_VNET_HDR`), whose `gso_size` says where each segment's payload ends, and
//! reads the inner headers of every segment.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// `PACKET_VNET_HDR` from `linux/if_packet.h`.
const PACKET_VNET_HDR: libc::c_int = 15;
/// Length of `struct virtio_net_hdr` (no `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_GSO_NONE`.
const GSO_NONE: u8 = 0;
/// The VXLAN port (RFC 7348).
const VXLAN_PORT: u16 = 4789;

/// One captured VXLAN datagram (one GSO segment counts as one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanDatagram {
    /// The outer UDP source port.
    pub outer_sport: u16,
    /// The inner UDP/TCP source port.
    pub inner_sport: u16,
}

/// An open capture: an AF_PACKET socket bound to one interface, so nothing is filtered
/// out before us. Frames queue in the socket from [`VxlanCapture::open`] on, so a test
/// opens it, sends, then reads: no race with a capture thread starting late.
pub struct VxlanCapture {
    fd: OwnedFd,
}

impl VxlanCapture {
    /// Opens a capture on `ifname` in the caller's namespace (the socket stays in that
    /// namespace when it is read from another thread).
    pub fn open(ifname: &str) -> VxlanCapture {
        VxlanCapture {
            fd: packet_socket(ifname, true),
        }
    }

    /// Reads the VXLAN datagrams captured so far and in the next `time`.
    pub fn read_for(&self, time: Duration) -> Vec<VxlanDatagram> {
        let raw = self.fd.as_raw_fd();
        let end = Instant::now() + time;
        let mut out = Vec::new();
        let (mut frames, mut gso_frames) = (0, 0);
        let mut buf = vec![0u8; VNET_HDR_LEN + 65536];
        while Instant::now() < end {
            // SAFETY: buf is valid for writes of its length; the fd is open while self is.
            let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                let datagrams = parse_frame(&buf[..n as usize]);
                frames += usize::from(!datagrams.is_empty());
                gso_frames += usize::from(datagrams.len() > 1);
                out.extend(datagrams);
            }
        }
        println!(
            "capture: {} VXLAN datagrams in {frames} frames, {gso_frames} of them GSO \
             super-packets of several datagrams",
            out.len()
        );
        out
    }
}

/// The VXLAN datagrams in one captured frame, `vnet` header first: one for a plain
/// frame, one per segment for a GSO super-packet. Anything else gives none.
pub fn parse_frame(vnet_and_frame: &[u8]) -> Vec<VxlanDatagram> {
    let Some((vnet, f)) = vnet_and_frame.split_at_checked(VNET_HDR_LEN) else {
        return Vec::new();
    };
    let gso_type = vnet[1];
    let gso_size = usize::from(u16::from_le_bytes([vnet[4], vnet[5]]));
    // Ethernet, IPv4, UDP to 4789.
    if f.len() < 14 + 20 + 8 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 17 {
        return Vec::new();
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let Some(udp) = f.get(14 + ihl..).filter(|u| u.len() >= 8) else {
        return Vec::new();
    };
    if udp[2..4] != VXLAN_PORT.to_be_bytes() {
        return Vec::new();
    }
    let outer_sport = u16::from_be_bytes([udp[0], udp[1]]);
    let payload = &udp[8..];
    let segments: Vec<&[u8]> = if gso_type != GSO_NONE && gso_size > 0 {
        payload.chunks(gso_size).collect()
    } else {
        vec![payload]
    };
    segments
        .into_iter()
        .filter_map(|seg| {
            Some(VxlanDatagram {
                outer_sport,
                inner_sport: inner_source_port(seg)?,
            })
        })
        .collect()
}

/// The inner L4 source port of one VXLAN datagram (VXLAN, Ethernet, IPv4, port).
fn inner_source_port(vxlan: &[u8]) -> Option<u16> {
    let inner = vxlan.get(8 + 14..)?;
    if vxlan.get(8 + 12..8 + 14)? != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(inner.first()? & 0x0f) * 4;
    let port = inner.get(ihl..ihl + 2)?;
    Some(u16::from_be_bytes([port[0], port[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One VXLAN datagram carrying inner UDP from source port `sport`.
    fn vxlan(sport: u16) -> Vec<u8> {
        let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        d.extend_from_slice(&[2, 0, 0, 0, 1, 1, 2, 0, 0, 0, 2, 1, 0x08, 0x00]);
        d.extend_from_slice(&[0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0]);
        d.extend_from_slice(&[10, 244, 1, 2, 10, 244, 2, 2]);
        d.extend_from_slice(&sport.to_be_bytes());
        d.extend_from_slice(&[0, 9, 0, 12, 0, 0]);
        d.extend_from_slice(b"flow");
        d
    }

    /// A captured frame: vnet header, outer Ethernet/IPv4/UDP from `outer`, `payload`.
    fn frame(gso_type: u8, gso_size: u16, outer: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0, gso_type, 42, 0];
        f.extend_from_slice(&gso_size.to_le_bytes());
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(&[2, 0, 0, 0, 2, 1, 2, 0, 0, 0, 1, 1, 0x08, 0x00]);
        let udp_len = (8 + payload.len()) as u16;
        let ip_len = (20 + udp_len).to_be_bytes();
        f.extend_from_slice(&[0x45, 0, ip_len[0], ip_len[1], 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        f.extend_from_slice(&outer.to_be_bytes());
        f.extend_from_slice(&VXLAN_PORT.to_be_bytes());
        f.extend_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn d(outer_sport: u16, inner_sport: u16) -> VxlanDatagram {
        VxlanDatagram {
            outer_sport,
            inner_sport,
        }
    }

    #[test]
    fn a_plain_frame_is_one_datagram() {
        let got = parse_frame(&frame(GSO_NONE, 0, 50000, &vxlan(41000)));
        assert_eq!(got, [d(50000, 41000)]);
    }

    #[test]
    fn every_segment_of_a_gso_super_packet_is_read() {
        // Three flows sharing outer port 50001, the last segment shorter.
        let seg = vxlan(41009);
        let mut payload = seg.clone();
        payload.extend_from_slice(&vxlan(41010));
        payload.extend_from_slice(&vxlan(41011)[..seg.len() - 2]);
        // VIRTIO_NET_HDR_GSO_UDP_L4 = 5.
        let got = parse_frame(&frame(5, seg.len() as u16, 50001, &payload));
        assert_eq!(got, [d(50001, 41009), d(50001, 41010), d(50001, 41011)]);
        // Without the vnet header's segment size only the first flow would be seen.
        assert_eq!(parse_frame(&frame(GSO_NONE, 0, 50001, &payload)).len(), 1);
    }

    #[test]
    fn not_vxlan_is_skipped() {
        let mut f = frame(GSO_NONE, 0, 50000, &vxlan(41000));
        let dport = VNET_HDR_LEN + 14 + 20 + 2;
        f[dport..dport + 2].copy_from_slice(&53u16.to_be_bytes());
        assert!(parse_frame(&f).is_empty());
        assert!(parse_frame(&f[..20]).is_empty());
    }
}

/// An AF_PACKET socket bound to `ifname` (in the caller's namespace) for every
/// protocol, with a virtio-net header in front of each frame if `vnet`, and a 200 ms
/// receive timeout.
fn packet_socket(ifname: &str, vnet: bool) -> OwnedFd {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )
    };
    assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh socket we own; OwnedFd closes it on return.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    let on: libc::c_int = libc::c_int::from(vnet);
    // SAFETY: setsockopt with an int of the right size, before bind as the option needs.
    let rc = unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_PACKET,
            PACKET_VNET_HDR,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "PACKET_VNET_HDR: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: name is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0, "no {ifname}");
    // SAFETY: an all-zero sockaddr_ll is valid; bind gets its real size.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = index as i32;
    // SAFETY: addr is a valid sockaddr_ll for the call.
    let rc = unsafe {
        libc::bind(
            raw,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: setsockopt with a timeval of the right size.
    unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    fd
}

/// A capture of whole frames on one interface, as they are: for tests that look
/// for bytes that must not appear (clear text) or count frames by UDP port.
pub struct RawCapture {
    fd: OwnedFd,
}

/// One captured IPv4/UDP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFrame {
    /// Outer source address and port.
    pub src: std::net::SocketAddrV4,
    /// Outer destination address and port.
    pub dst: std::net::SocketAddrV4,
    /// The UDP payload (for a GSO super-packet: every segment's, back to back).
    pub payload: Vec<u8>,
}

impl RawCapture {
    /// Opens a capture on `ifname` in the caller's namespace; frames queue from now.
    pub fn open(ifname: &str) -> RawCapture {
        RawCapture {
            fd: packet_socket(ifname, false),
        }
    }

    /// The frames captured so far and in the next `time`.
    pub fn frames_for(&self, time: Duration) -> Vec<Vec<u8>> {
        let raw = self.fd.as_raw_fd();
        let end = Instant::now() + time;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536 + 128];
        while Instant::now() < end {
            // SAFETY: buf is valid for writes of its length; the fd is open while self is.
            let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                out.push(buf[..n as usize].to_vec());
            }
        }
        out
    }
}

/// The IPv4/UDP datagram in an Ethernet frame, if it is one.
pub fn udp_frame(frame: &[u8]) -> Option<UdpFrame> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let udp = ip.get(ihl..)?;
    let addr = |o: usize| std::net::Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
    let port = |o: usize| u16::from_be_bytes([udp[o], udp[o + 1]]);
    Some(UdpFrame {
        src: std::net::SocketAddrV4::new(addr(12), port(0)),
        dst: std::net::SocketAddrV4::new(addr(16), port(2)),
        payload: udp.get(8..)?.to_vec(),
    })
}
