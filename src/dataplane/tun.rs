//! One TUN queue fd registered with the tokio runtime of the thread that uses it.
//!
//! tun-rs creates and configures the device (name, MTU, offloads); each dataplane
//! thread then owns a duplicate of the fd here, so readiness is reported by that
//! thread's own reactor and a packet wakes the thread that handles it directly. Reads
//! and writes are raw: with `IFF_VNET_HDR` every packet carries its virtio header.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A non-blocking TUN fd driven by the current tokio runtime.
#[derive(Debug)]
pub struct TunQueue {
    fd: AsyncFd<OwnedFd>,
}

impl TunQueue {
    /// Registers `fd` (made non-blocking) with the current runtime.
    pub fn new(fd: OwnedFd) -> io::Result<TunQueue> {
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on an fd we own, with F_GETFL/F_SETFL only.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if flags < 0
            // SAFETY: as above; adds O_NONBLOCK to the flags just read.
            || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an OwnedFd is a valid open fd and returns the same fd for as long
        // as the AsyncFd owns it.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(|e| e.into_parts().1)?;
        Ok(TunQueue { fd })
    }

    /// Waits until a packet may be queued (a false positive ends in `WouldBlock`).
    pub async fn readable(&self) -> io::Result<()> {
        self.fd
            .readable()
            .await
            .map(|mut guard| guard.retain_ready())
    }

    /// Reads one packet if one is queued (`WouldBlock` otherwise).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd
            .try_io(Interest::READABLE, |fd| read(fd.as_raw_fd(), buf))
    }

    /// Writes one packet made of `iov` parts, waiting while the queue is full.
    pub async fn send_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match self
            .fd
            .try_io(Interest::WRITABLE, |fd| writev(fd.as_raw_fd(), iov))
        {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.fd
                    .async_io(Interest::WRITABLE, |fd| writev(fd.as_raw_fd(), iov))
                    .await
            }
            other => other,
        }
    }
}

fn read(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes for the duration of the call.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn writev(fd: i32, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: IoSlice is ABI-compatible with iovec on Unix and every slice outlives
    // the call; writev only reads them.
    let n = unsafe { libc::writev(fd, iov.as_ptr().cast(), iov.len() as libc::c_int) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
