//! Batch I/O on the VXLAN UDP socket: sends with UDP GSO (`UDP_SEGMENT`) or
//! `sendmmsg`, receives with UDP GRO and `recvmmsg` (through quinn-udp).
//!
//! Sending is written here rather than with quinn-udp because quinn-udp takes one
//! contiguous buffer per send, and our datagrams are scattered: each segment's
//! headers sit in a slot arena and its payload where the TUN read put it. A
//! `sendmsg` with an iovec per part sends them without copying the payload. GSO is
//! probed once; an `EIO`/`EINVAL` from a GSO send turns it off for good (a device
//! without checksum offload), and the same datagrams go out with `sendmmsg`.

use std::io::{self, IoSlice};
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::offload::MAX_GSO_SEGMENTS;

/// Whether the kernel accepts `UDP_SEGMENT` on `socket`.
pub fn gso_supported(socket: &UdpSocket) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on a live fd with a correctly sized out-buffer.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0
}

/// Sends groups of datagrams on the VXLAN socket, with GSO while it works.
#[derive(Debug)]
pub struct UdpSender {
    gso: bool,
}

/// Datagrams of one send: `iov` holds their parts, `parts[i]` says how many iovecs
/// datagram `i` has.
pub struct Gather<'a, 'b> {
    /// Every part of every datagram, in order.
    pub iov: &'a [IoSlice<'b>],
    /// Parts per datagram.
    pub parts: &'a [u8],
}

impl UdpSender {
    /// A sender for `socket`; probes GSO and logs which path is active.
    pub fn new(socket: &UdpSocket) -> UdpSender {
        let gso = gso_supported(socket);
        if gso {
            tracing::info!("VXLAN socket: UDP GSO (UDP_SEGMENT) send path");
        } else {
            tracing::info!("VXLAN socket: no UDP GSO, sendmmsg send path");
        }
        UdpSender { gso }
    }

    /// Most datagrams per send call (one GSO `sendmsg` or one `sendmmsg`).
    pub fn max_segments(&self) -> usize {
        MAX_GSO_SEGMENTS
    }

    /// Sends the datagrams of `g` to `dst`. With GSO they are one `sendmsg` whose
    /// payload the kernel splits every `segment_size` bytes (all but the last are
    /// that size); without, one `sendmmsg`. Waits while the socket is full.
    pub async fn send(
        &mut self,
        socket: &UdpSocket,
        dst: SocketAddr,
        segment_size: usize,
        g: Gather<'_, '_>,
    ) -> io::Result<()> {
        let addr = socket2::SockAddr::from(dst);
        loop {
            let fd = socket.as_raw_fd();
            let result = if self.gso || g.parts.len() == 1 {
                let seg = (g.parts.len() > 1).then_some(segment_size as u16);
                socket.try_io(Interest::WRITABLE, || sendmsg(fd, &addr, g.iov, seg))
            } else {
                socket.try_io(Interest::WRITABLE, || sendmmsg(fd, &addr, &g))
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
                Err(e)
                    if self.gso
                        && g.parts.len() > 1
                        && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) =>
                {
                    tracing::warn!(error = %e, "UDP GSO send failed: GSO off, sendmmsg send path");
                    self.gso = false;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Space for one `UDP_SEGMENT` control message, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

fn sendmsg(
    fd: RawFd,
    addr: &socket2::SockAddr,
    iov: &[IoSlice<'_>],
    segment_size: Option<u16>,
) -> io::Result<()> {
    let mut cmsg = CmsgBuf([0; 32]);
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = addr.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = addr.len();
    // IoSlice is ABI-compatible with iovec on Unix; sendmsg does not write to it.
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    if let Some(size) = segment_size {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations.
        let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
        debug_assert!(space <= cmsg.0.len());
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` writable, aligned bytes, enough for
        // one cmsghdr with a u16 payload, so CMSG_FIRSTHDR is non-null and in bounds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
        }
    }
    // SAFETY: msg points at a valid address, iovecs and control buffer that outlive
    // the call.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sendmmsg(fd: RawFd, addr: &socket2::SockAddr, g: &Gather<'_, '_>) -> io::Result<()> {
    let count = g.parts.len().min(MAX_GSO_SEGMENTS);
    // SAFETY: an all-zero mmsghdr array is valid empty messages.
    let mut hdrs: [libc::mmsghdr; MAX_GSO_SEGMENTS] = unsafe { mem::zeroed() };
    let mut at = 0usize;
    for (h, &parts) in hdrs.iter_mut().zip(g.parts) {
        let parts = usize::from(parts);
        h.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
        h.msg_hdr.msg_namelen = addr.len();
        h.msg_hdr.msg_iov = g.iov[at..at + parts].as_ptr() as *mut libc::iovec;
        h.msg_hdr.msg_iovlen = parts as _;
        at += parts;
    }
    let mut sent = 0;
    while sent < count {
        // SAFETY: hdrs[sent..count] are initialised messages whose pointers stay
        // valid for the call.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs[sent..].as_mut_ptr(),
                (count - sent) as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // Partly sent: report success for what left, drop the rest if it would
            // block (the caller would resend the whole group otherwise).
            if sent > 0 && e.kind() == io::ErrorKind::WouldBlock {
                return Ok(());
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}
