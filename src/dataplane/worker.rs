//! The packet loop that both userspace dataplanes' workers share, plain VXLAN
//! ([`super::driver`]) and WireGuard ([`super::wg::driver`]): reading a round of TUN
//! packets and answering the ones a core drops with ICMP unreachable
//! ([`TunReads`]), one `recvmmsg` of GRO-merged buffers split into datagrams
//! ([`RxBatch`]), sending a batch in GSO runs ([`send_groups`]) and writing a
//! coalesced batch to the TUN ([`write_tun`]). What to do with each packet is the
//! caller's (through [`Route`] and the datagrams it is handed); this module owns
//! only the syscalls and the buffers, so a fix to the loop lands once.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::time::Instant;

use quinn_udp::{RecvMeta, UdpSocketState};
use rustix::event::{PollFd, PollFlags};
use tokio::sync::watch;

use super::batch::{Head, TxBatch, TxDatagram, MAX_GSO_SEGMENTS};
use super::encap::{tun_read_offset, HEADROOM};
use super::error::Error;
use super::icmp::{Routers, UnreachableReplies, MAX_TUN_WRITE, REPLY_RATE};
use super::offload::{Coalescer, TunWrite, MAX_COALESCE};
use super::stats::{DropReason, Stats};
use super::threads::{wait, Stop};
use super::tun::TunQueue;
use super::udp::{Gather, UdpSender};

/// What every userspace worker thread is given, whichever dataplane it serves: its
/// index (worker 0 logs what the sockets can do), its TUN queue and the queue's
/// offloads, the gateway feed for ICMP replies, its counters, the stop signal and
/// the options.
pub(crate) struct WorkerSetup {
    pub(crate) index: usize,
    pub(crate) tun: TunQueue,
    /// The TUN queue carries a virtio-net header (TSO/USO and checksum offloads).
    pub(crate) vnet: bool,
    /// The TUN queue takes UDP segmentation offload.
    pub(crate) uso: bool,
    pub(crate) router: watch::Receiver<Routers>,
    pub(crate) stats: std::sync::Arc<Stats>,
    pub(crate) stop: std::sync::Arc<Stop>,
    pub(crate) options: super::driver::DataplaneOptions,
}

impl WorkerSetup {
    /// One setup per queue of `tun`: worker `i` gets queue `i` and counter set `i`
    /// of `stats`.
    pub(crate) fn per_queue(
        tun: super::tun::TunDevice,
        router: &watch::Receiver<Routers>,
        stats: &super::stats::NodeStats,
        stop: &std::sync::Arc<Stop>,
        options: super::driver::DataplaneOptions,
    ) -> Vec<WorkerSetup> {
        let (vnet, uso) = (tun.vnet, tun.uso);
        tun.queues
            .into_iter()
            .enumerate()
            .map(|(index, tun)| WorkerSetup {
                index,
                tun,
                vnet,
                uso,
                router: router.clone(),
                stats: stats.worker(index),
                stop: stop.clone(),
                options,
            })
            .collect()
    }
}

/// Largest IP packet the TUN can hand us.
pub(crate) const MAX_PACKET: usize = 65_535;
/// TUN packets (super-packets with offloads) read per round of the outbound path.
pub(crate) const TX_BUFS: usize = 16;
/// Receive buffers per `recvmmsg`.
pub(crate) const RX_BUFS: usize = 16;
/// Size of one receive buffer (up to 64 GRO-merged datagrams).
pub(crate) const RX_BUF_LEN: usize = 96 * 1024;

/// What a worker does with each packet it reads from the TUN.
pub(crate) trait Route {
    /// Whether the outbound batch can take one more read.
    fn has_room(&self) -> bool {
        true
    }

    /// Takes read `k`: `len` bytes in `buf` at [`tun_read_offset`]. A refused packet
    /// (already counted as a drop by the core) may get an ICMP reply.
    fn route(&mut self, k: usize, buf: &mut [u8], len: usize) -> Result<(), DropReason>;
}

/// The outbound half's TUN reads: [`TX_BUFS`] buffers with [`HEADROOM`] in front for
/// the outer headers, and the ICMP unreachable replies to packets a core drops.
pub(crate) struct TunReads {
    /// The read buffers; read `k` is in `bufs[k]`.
    pub(crate) bufs: Vec<Vec<u8>>,
    vnet: bool,
    /// The gateway addresses replies come from, as the daemon sets them.
    router: watch::Receiver<Routers>,
    icmp: UnreachableReplies,
    icmp_buf: Vec<u8>,
}

impl TunReads {
    /// Buffers for a TUN with (`vnet`) or without virtio-net headers.
    pub(crate) fn new(vnet: bool, router: watch::Receiver<Routers>) -> TunReads {
        TunReads {
            bufs: (0..TX_BUFS)
                .map(|_| vec![0u8; HEADROOM + MAX_PACKET])
                .collect(),
            vnet,
            router,
            icmp: UnreachableReplies::new(REPLY_RATE, vnet),
            icmp_buf: vec![0u8; MAX_TUN_WRITE],
        }
    }

    /// Reads up to [`TX_BUFS`] packets from `tun` while `route` has room, handing each
    /// to it; a packet it refuses gets the ICMP reply the core decides on (best
    /// effort: a full TUN queue drops it). Returns the number of reads (0: nothing was
    /// queued); only a failed read is an error.
    pub(crate) fn read(&mut self, tun: &TunQueue, route: &mut impl Route) -> Result<usize, Error> {
        let off = tun_read_offset(self.vnet);
        let mut k = 0;
        while k < TX_BUFS && route.has_room() {
            let n = match tun.recv(&mut self.bufs[k][off..]) {
                Ok(n) => n,
                Err(e) if is_would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Io {
                        what: "reading the TUN device",
                        source,
                    })
                }
            };
            if let Err(reason) = route.route(k, &mut self.bufs[k], n) {
                // The ICMP core decides on a reply, given the gateway address in force
                // and the time now; both are read only for a drop.
                self.icmp.set_router(*self.router.borrow());
                let packet = self.bufs[k].get(HEADROOM..off + n).unwrap_or_default();
                let reply =
                    self.icmp
                        .handle_drop(Instant::now(), reason, packet, &mut self.icmp_buf);
                if let Some(len) = reply {
                    let _ = tun.send_vectored(&[IoSlice::new(&self.icmp_buf[..len])]);
                }
            }
            k += 1;
        }
        Ok(k)
    }
}

/// One datagram of a receive batch: who sent it, and where it is in
/// [`RxBatch::bufs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Datagram {
    /// The sender.
    pub from: SocketAddr,
    /// Its bytes in [`RxBatch::bufs`].
    pub range: Range<usize>,
}

/// What one `recvmmsg` brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// Nothing was queued.
    Nothing,
    /// An error the socket reported for an earlier send (ICMP port unreachable from a
    /// peer, say): not fatal, and it counts as work done.
    Transient,
    /// This many buffers, each of one or more GRO-merged datagrams.
    Buffers(usize),
}

/// The inbound half's receive buffers: [`RX_BUFS`] of [`RX_BUF_LEN`] bytes, filled by
/// one `recvmmsg` with UDP GRO where the kernel has it.
pub(crate) struct RxBatch {
    state: UdpSocketState,
    /// The receive buffers, back to back; a [`Datagram`]'s range indexes them.
    pub(crate) bufs: Vec<u8>,
    metas: [RecvMeta; RX_BUFS],
}

impl RxBatch {
    /// Buffers for receiving on `socket` (`what` names it in the error).
    pub(crate) fn new(socket: &UdpSocket, what: &'static str) -> Result<RxBatch, Error> {
        let state =
            UdpSocketState::new(socket.into()).map_err(|source| Error::Io { what, source })?;
        Ok(RxBatch {
            state,
            bufs: vec![0u8; RX_BUFS * RX_BUF_LEN],
            metas: [RecvMeta::default(); RX_BUFS],
        })
    }

    /// Whether the socket merges datagrams (UDP GRO).
    pub(crate) fn gro(&self) -> bool {
        self.state.gro_segments() > 1
    }

    /// One `recvmmsg` on `socket`; a failure other than an empty queue or a
    /// [`Received::Transient`] one is an error (`what` names the socket).
    pub(crate) fn recv(
        &mut self,
        socket: &UdpSocket,
        what: &'static str,
    ) -> Result<Received, Error> {
        let received = {
            let mut chunks = self.bufs.chunks_mut(RX_BUF_LEN);
            let mut iovs: [IoSliceMut<'_>; RX_BUFS] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            self.state.recv(socket.into(), &mut iovs, &mut self.metas)
        };
        match received {
            Ok(n) => Ok(Received::Buffers(n)),
            Err(e) if is_would_block(&e) => Ok(Received::Nothing),
            Err(e) if is_transient(&e) => Ok(Received::Transient),
            Err(source) => Err(Error::Io { what, source }),
        }
    }

    /// The datagrams of the first `n` buffers, each buffer split at its GRO stride.
    pub(crate) fn datagrams(&self, n: usize) -> impl Iterator<Item = Datagram> + '_ {
        self.metas[..n.min(RX_BUFS)]
            .iter()
            .enumerate()
            .flat_map(|(i, meta)| {
                let base = i * RX_BUF_LEN;
                let len = meta.len.min(RX_BUF_LEN);
                let stride = if meta.stride == 0 { len } else { meta.stride };
                (0..len).step_by(stride.max(1)).map(move |at| Datagram {
                    from: meta.addr,
                    range: base + at..base + (at + stride).min(len),
                })
            })
    }
}

/// Sends every datagram of `batch` in GSO runs, each from the socket of `sockets`
/// its flow picks (`body` gives a datagram's bytes in its packet buffer); a full
/// socket is waited for, failures are counted as drops.
pub(crate) fn send_groups<'a>(
    sender: &mut UdpSender,
    sockets: &[UdpSocket],
    batch: &'a TxBatch,
    stop: &Stop,
    stats: &Stats,
    body: impl Fn(&TxDatagram) -> &'a [u8],
) {
    for g in batch.groups(sender.max_segments(), sockets.len()) {
        let datagrams = &batch.datagrams()[g.range.clone()];
        let mut iov = [IoSlice::new(&[]); 2 * MAX_GSO_SEGMENTS];
        let mut parts = [0u8; MAX_GSO_SEGMENTS];
        let mut n = 0;
        for (i, d) in datagrams.iter().enumerate() {
            let bytes = body(d);
            match d.head {
                Head::InPlace => {
                    iov[n] = IoSlice::new(bytes);
                    n += 1;
                    parts[i] = 1;
                }
                Head::Slot(s) => {
                    iov[n] = IoSlice::new(batch.slot(s, d.head_len));
                    iov[n + 1] = IoSlice::new(bytes);
                    n += 2;
                    parts[i] = 2;
                }
            }
        }
        let gather = Gather {
            iov: &iov[..n],
            parts: &parts[..datagrams.len()],
        };
        let socket = &sockets[g.source];
        let result = loop {
            match sender.send(socket, g.dst, g.segment_size, &gather) {
                Err(e) if is_would_block(&e) => {
                    if let Err(e) = wait_writable(socket, stop) {
                        break Err(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        if let Err(e) = result {
            for _ in datagrams {
                stats.tx.drop(DropReason::IoError);
            }
            tracing::trace!(error = %e, dst = %g.dst, "send failed");
        }
    }
}

/// Waits until `socket` takes more data; an error if stopped meanwhile.
fn wait_writable(socket: &UdpSocket, stop: &Stop) -> io::Result<()> {
    let mut fds = [
        PollFd::new(socket, PollFlags::OUT),
        PollFd::new(&stop.event, PollFlags::IN),
    ];
    wait(&mut fds)?;
    if stop.is_set() {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "stopping"));
    }
    Ok(())
}

/// Writes what `coalescer` made of a receive batch in `buf` to the TUN; a failed
/// write is counted as a drop.
pub(crate) fn write_tun(tun: &TunQueue, coalescer: &Coalescer, buf: &[u8], stats: &Stats) {
    for w in coalescer.writes() {
        let written = match w {
            TunWrite::Single { range, .. } => {
                let packet = &buf[range.start as usize..range.end as usize];
                tun.send_vectored(&[IoSlice::new(packet)])
            }
            TunWrite::Coalesced { head, pieces } => {
                let mut iov = [IoSlice::new(&[]); MAX_COALESCE + 1];
                iov[0] = IoSlice::new(head);
                for (slot, p) in iov[1..].iter_mut().zip(pieces) {
                    *slot = IoSlice::new(&buf[p.range.start as usize..p.range.end as usize]);
                }
                tun.send_vectored(&iov[..pieces.len() + 1])
            }
        };
        if written.is_err() {
            stats.rx.drop(DropReason::IoError);
        }
    }
}

/// An empty queue: nothing to do now.
pub(crate) fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// An error a socket reports for an earlier send, or a signal: not fatal.
pub(crate) fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EINTR
                | libc::ENOBUFS
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_split_each_buffer_at_its_stride() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rx = RxBatch::new(&socket, "test").unwrap();
        let from: SocketAddr = "198.18.0.2:4789".parse().unwrap();
        rx.metas[0].addr = from;
        rx.metas[0].len = 250;
        rx.metas[0].stride = 100;
        rx.metas[1].addr = from;
        rx.metas[1].len = 60;
        rx.metas[1].stride = 0;
        let got: Vec<Range<usize>> = rx.datagrams(2).map(|d| d.range).collect();
        assert_eq!(
            got,
            [0..100, 100..200, 200..250, RX_BUF_LEN..RX_BUF_LEN + 60]
        );
        // An empty buffer has no datagram; n past the buffers is capped.
        rx.metas[0].len = 0;
        assert_eq!(rx.datagrams(1).count(), 0);
        assert_eq!(rx.datagrams(RX_BUFS + 5).count(), 1);
    }
}
