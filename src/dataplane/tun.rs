//! The TUN device: creation through tun-rs and one non-blocking queue fd per worker.
//!
//! tun-rs creates and configures the device (name, MTU, offloads, `IFF_MULTI_QUEUE`);
//! each worker thread then owns one queue's fd here and calls `read`/`writev` on it
//! directly (rustix's raw syscalls). With `IFF_MULTI_QUEUE` the kernel spreads outbound flows over the
//! queues by flow hash and keeps a flow on the queue that last wrote its replies, so
//! a flow stays on one worker. With `IFF_VNET_HDR` every packet carries its virtio
//! header. Nothing here decides what to do with a packet.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};

use super::error::Error;

/// What [`open`] got from the kernel.
#[derive(Debug)]
pub(crate) struct TunDevice {
    /// One fd per queue, non-blocking.
    pub(crate) queues: Vec<TunQueue>,
    /// Whether every read and write carries a virtio-net header (TSO in, GRO out).
    pub(crate) vnet: bool,
    /// Whether the device also takes UDP segmentation offload (USO) on writes.
    pub(crate) uso: bool,
}

/// Creates the TUN device `name` (no packet-information header) with `queues`
/// queues, still down, so the caller can finish configuring it before the kernel sends
/// anything through it. Offloads (`IFF_VNET_HDR` with checksum, TSO and, where the
/// kernel has it, USO) are asked for first; without them the device moves one plain
/// packet per read and write. Several queues need `IFF_MULTI_QUEUE`; a kernel
/// without it gets one queue. The log says which.
pub(crate) fn open(name: &str, mtu: u32, queues: usize) -> Result<TunDevice, Error> {
    let mtu16 = u16::try_from(mtu).unwrap_or(u16::MAX);
    let queues = queues.max(1);
    let build = |offload: bool, multi: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu16)
            .offload(offload)
            .multi_queue(multi)
            .enable(false)
            .build_sync()
    };
    let tun_err = |source| Error::Tun {
        name: name.to_string(),
        source,
    };
    let (device, multi) = match build(true, queues > 1) {
        Ok(device) => (device, queues > 1),
        Err(e) if queues > 1 => {
            tracing::warn!(tun = name, error = %e, "multiqueue TUN unavailable: one queue, one worker");
            match build(true, false) {
                Ok(device) => (device, false),
                Err(e) => return plain(name, e, build(false, false).map_err(tun_err)?),
            }
        }
        Err(e) => return plain(name, e, build(false, false).map_err(tun_err)?),
    };
    let (vnet, uso) = (device.tcp_gso(), device.udp_gso());
    let mut clones = Vec::new();
    if multi {
        for _ in 1..queues {
            match device.try_clone() {
                Ok(q) => clones.push(q),
                Err(e) => {
                    tracing::warn!(tun = name, error = %e, queues = clones.len() + 1, "could not open every TUN queue");
                    break;
                }
            }
        }
    }
    let mut fds = vec![into_queue(device)];
    fds.extend(clones.into_iter().map(into_queue));
    let queues = fds
        .into_iter()
        .collect::<io::Result<Vec<_>>>()
        .map_err(tun_err)?;
    tracing::info!(
        tun = name,
        queues = queues.len(),
        tso = vnet,
        uso,
        "TUN offloads on (IFF_VNET_HDR): TSO in, GRO out"
    );
    Ok(TunDevice { queues, vnet, uso })
}

/// The fallback device: no offloads, one queue.
fn plain(name: &str, why: io::Error, device: tun_rs::SyncDevice) -> Result<TunDevice, Error> {
    tracing::warn!(tun = name, error = %why, "TUN offloads unavailable: one packet per read and write, one queue");
    let queue = into_queue(device).map_err(|source| Error::Tun {
        name: name.to_string(),
        source,
    })?;
    Ok(TunDevice {
        queues: vec![queue],
        vnet: false,
        uso: false,
    })
}

fn into_queue(device: tun_rs::SyncDevice) -> io::Result<TunQueue> {
    // SAFETY: into_raw_fd hands over the open TUN fd; nothing else owns or closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(device.into_raw_fd()) };
    TunQueue::new(fd)
}

/// One non-blocking TUN queue fd.
#[derive(Debug)]
pub(crate) struct TunQueue {
    fd: OwnedFd,
}

impl TunQueue {
    /// Takes `fd` and makes it non-blocking.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<TunQueue> {
        let flags = fcntl_getfl(&fd)?;
        fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        Ok(TunQueue { fd })
    }

    /// Reads one packet if one is queued (`WouldBlock` otherwise).
    #[inline]
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::io::read(&self.fd, buf)?)
    }

    /// Writes one packet made of `iov` parts (`WouldBlock` if the queue is full).
    #[inline]
    pub(crate) fn send_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(rustix::io::writev(&self.fd, iov)?)
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
