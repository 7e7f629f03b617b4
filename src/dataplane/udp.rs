//! The VXLAN UDP sockets and batch I/O on them: sends with UDP GSO (`UDP_SEGMENT`)
//! or `sendmmsg`, receives with UDP GRO and `recvmmsg` (through quinn-udp).
//!
//! # Sockets
//!
//! - **Receive**: one socket per worker, all bound to the VXLAN port with
//!   `SO_REUSEPORT`. The kernel picks the socket of a datagram by a hash of its
//!   4-tuple, so one flow's datagrams (one peer source port) always reach the same
//!   worker, in order, and different flows spread over the workers. No two workers
//!   share a receive queue.
//! - **Send**: the outer UDP source port carries the inner flow ([RFC 7348 §5]),
//!   as the Linux vxlan driver does with `udp_flow_src_port`, so that a receiver
//!   spreads flows (RSS, `SO_REUSEPORT`, ECMP) instead of seeing one 4-tuple. A UDP
//!   socket sends from the one port it is bound to, and `IP_PKTINFO` only chooses the
//!   source address, so the node binds [`source_ports`] sockets to port 0: the kernel
//!   hands out free ports from its ephemeral range (32768–60999 by default, the
//!   range the kernel vxlan driver uses too), which no other program is using. The
//!   flow hash picks one of them. The set is shared by every worker, so a flow keeps
//!   its source port when the kernel moves it to another TUN queue (it steers a
//!   flow to the queue that wrote its replies); concurrent `sendmsg` calls on one UDP
//!   socket take no socket lock, and each carries a GSO run of up to 64 datagrams.
//!   A raw socket could write any source port, but it would lose UDP GSO (one
//!   syscall per 64 KiB) and the kernel's routing and neighbour handling. Peers
//!   receive on the VXLAN port whatever the source port is (a kernel vxlan peer
//!   does too), so this is wire compatible. Send sockets clear DF
//!   (`IP_PMTUDISC_DONT`), as the kernel vxlan driver does by default.
//!
//! If `SO_REUSEPORT` is refused, the node runs one worker; the log says so.
//!
//! # Sending
//!
//! Sending is written here rather than with quinn-udp because quinn-udp takes one
//! contiguous buffer per send, and our datagrams are scattered: each segment's
//! headers sit in a slot arena and its payload where the TUN read put it. A
//! `sendmsg` with an iovec per part sends them without copying the payload. GSO is
//! probed once; an `EIO`/`EINVAL` from a GSO send turns it off for good (a device
//! without checksum offload), and the same datagrams go out with `sendmmsg`.
//!
//! [RFC 7348 §5]: https://www.rfc-editor.org/rfc/rfc7348#section-5

use std::io::{self, IoSlice};
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use rustix::net::sockopt::Ipv4PathMtuDiscovery;
use socket2::{Domain, Protocol, Socket, Type};

use super::batch::MAX_GSO_SEGMENTS;
use super::error::Error;

/// Send sockets (outer source ports) of a node with `workers` workers: at least 16,
/// two per worker beyond that, so a receiver has flows to spread over its cores.
pub(crate) fn source_ports(workers: usize) -> usize {
    (2 * workers).clamp(16, 256)
}
/// Socket buffer size asked of the kernel for the receive sockets.
const RECV_BUFFER: usize = 4 << 20;
/// Send buffer size of each send socket.
const SEND_BUFFER: usize = 1 << 20;

/// The VXLAN sockets of a node.
#[derive(Debug)]
pub(crate) struct Sockets {
    /// One per worker, bound to the VXLAN port in one `SO_REUSEPORT` group.
    pub(crate) rx: Vec<UdpSocket>,
    /// Bound to ephemeral ports, shared by the workers; the flow hash picks one.
    pub(crate) tx: Arc<[UdpSocket]>,
}

/// Opens the sockets of `workers` workers receiving on `bind` (see the module
/// docs). Fewer receive sockets come back if the kernel refuses `SO_REUSEPORT`.
pub(crate) fn open_sockets(bind: SocketAddr, workers: usize) -> Result<Sockets, Error> {
    let err = |addr, source| Error::Socket { addr, source };
    let rx = open_rx_sockets(bind, workers)?;
    let src = SocketAddr::new(bind.ip(), 0);
    let tx = (0..source_ports(rx.len()))
        .map(|_| tx_socket(src))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| err(src, e))?;
    Ok(Sockets { rx, tx: tx.into() })
}

/// Opens `workers` receive sockets bound to `bind` in one `SO_REUSEPORT` group
/// (fewer if the kernel refuses `SO_REUSEPORT`).
pub(crate) fn open_rx_sockets(bind: SocketAddr, workers: usize) -> Result<Vec<UdpSocket>, Error> {
    let err = |addr, source| Error::Socket { addr, source };
    let workers = workers.max(1);
    let mut rx = Vec::with_capacity(workers);
    for i in 0..workers {
        match rx_socket(bind, workers > 1) {
            Ok(s) => rx.push(s),
            // The first socket must come up; a refused SO_REUSEPORT means one worker.
            Err(e) if i == 0 && workers > 1 => {
                tracing::warn!(error = %e, "SO_REUSEPORT refused: one socket, one worker");
                rx.push(rx_socket(bind, false).map_err(|e| err(bind, e))?);
                break;
            }
            Err(e) => return Err(err(bind, e)),
        }
    }
    Ok(rx)
}

fn rx_socket(bind: SocketAddr, reuseport: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    // Larger buffers absorb bursts; the kernel caps them at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    let _ = socket.set_send_buffer_size(SEND_BUFFER);
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

fn tx_socket(bind: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_send_buffer_size(SEND_BUFFER);
    // Nothing is sent to these ports; a small buffer bounds what a stray sender costs.
    let _ = socket.set_recv_buffer_size(4096);
    if bind.is_ipv4() {
        // DF clear, as the kernel vxlan driver sends by default.
        rustix::net::sockopt::set_ip_mtu_discover(&socket, Ipv4PathMtuDiscovery::DONT)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

/// Whether the kernel accepts `UDP_SEGMENT` on `socket`.
pub(crate) fn gso_supported(socket: &impl AsRawFd) -> bool {
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

/// Sends groups of datagrams on the VXLAN send sockets, with GSO while it works.
#[derive(Debug)]
pub(crate) struct UdpSender {
    gso: bool,
}

/// Datagrams of one send: `iov` holds their parts, `parts[i]` says how many iovecs
/// datagram `i` has.
pub(crate) struct Gather<'a, 'b> {
    /// Every part of every datagram, in order.
    pub(crate) iov: &'a [IoSlice<'b>],
    /// Parts per datagram.
    pub(crate) parts: &'a [u8],
}

impl UdpSender {
    /// A sender for sockets like `socket`; probes GSO. `log` says which path is
    /// active (one worker logs it for all).
    pub(crate) fn new(socket: &impl AsRawFd, log: bool) -> UdpSender {
        let gso = gso_supported(socket);
        if log && gso {
            tracing::info!("UDP sockets: GSO (UDP_SEGMENT) send path");
        } else if log {
            tracing::info!("UDP sockets: no UDP GSO, sendmmsg send path");
        }
        UdpSender { gso }
    }

    /// Most datagrams per send call (one GSO `sendmsg` or one `sendmmsg`).
    pub(crate) fn max_segments(&self) -> usize {
        MAX_GSO_SEGMENTS
    }

    /// Sends the datagrams of `g` to `dst` from `socket`. With GSO they are one
    /// `sendmsg` whose payload the kernel splits every `segment_size` bytes (all but
    /// the last are that size); without, one `sendmmsg`. `WouldBlock` means nothing
    /// was sent and the socket is full: wait until it is writable and call again.
    pub(crate) fn send(
        &mut self,
        socket: &impl AsRawFd,
        dst: SocketAddr,
        segment_size: usize,
        g: &Gather<'_, '_>,
    ) -> io::Result<()> {
        let addr = socket2::SockAddr::from(dst);
        let fd = socket.as_raw_fd();
        loop {
            let result = if self.gso || g.parts.len() == 1 {
                let seg = (g.parts.len() > 1).then_some(segment_size as u16);
                sendmsg(fd, &addr, g.iov, seg)
            } else {
                sendmmsg(fd, &addr, g)
            };
            match result {
                Err(e)
                    if self.gso
                        && g.parts.len() > 1
                        && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) =>
                {
                    tracing::warn!(error = %e, "UDP GSO send failed: GSO off, sendmmsg send path");
                    self.gso = false;
                }
                other => return other,
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
