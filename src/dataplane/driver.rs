//! The dataplane's driver: worker threads that move packets between the TUN device
//! and the VXLAN sockets through the sans-IO cores ([`Encapsulator`], [`Decapsulator`],
//! [`Coalescer`], [`UnreachableReplies`]). It owns the fds, makes the syscalls, reads
//! the clock and runs the loop; every forwarding decision, header and ICMP reply
//! comes from the cores.
//!
//! One worker per core, each a plain thread with its own TUN queue, its own receive
//! socket (in the `SO_REUSEPORT` group of the VXLAN port), its own buffers, cores
//! and counters: the workers share nothing on the packet path but the read-only
//! forwarding table, the per-peer counters and the send sockets (one per outer
//! source port, see [`super::udp`]). The kernel
//! keeps each flow on one worker both ways (flow hash to a TUN queue outbound,
//! 4-tuple hash to a socket inbound), so a flow is never reordered.
//!
//! A worker serves both directions in one loop, like boringtun's device threads:
//! it reads what the TUN queue and the socket have with non-blocking calls
//! (outbound, up to 16 TUN reads, TSO super-packets with offloads, split into one
//! batch and sent in UDP GSO runs; inbound, one `recvmmsg` of up to 16 GRO-merged
//! buffers whose TCP and UDP segments are merged again for the TUN), round after
//! round, and only when both are empty does it sleep in `poll`. A lone packet is
//! therefore handled as soon as the thread runs, with no timer and no batch to
//! fill, and the reply to a packet just written to the TUN, which the kernel often
//! queues during the write itself, is read without sleeping. (A `poll` before
//! every round instead of reading until empty made back-to-back RTT 20 % worse.)
//! Forwarding-table updates arrive on a `watch` channel and are picked up between
//! rounds. Send and write errors are counted as drops; only a failure to read the
//! TUN or the socket ends a worker.
//!
//! **Busy polling** ([`DataplaneOptions::busy_poll`], off by default). A worker
//! that sleeps in `poll` costs one thread wake-up per hop, and on a VM whose idle
//! vCPUs halt (no guest or host halt polling) waking a thread on another vCPU
//! costs tens of microseconds: a ping between two pods crosses four such hops,
//! where kernel VXLAN handles the whole round trip in softirq context with none.
//! With busy polling an idle worker keeps reading its queues, yielding the core
//! to anything runnable between rounds, for that long after its last packet
//! before it sleeps. While traffic keeps arriving within the window the worker
//! never sleeps, so it takes up to a core: a latency-for-CPU trade for the
//! operator to make, measured in `netns-tests/throughput.sh`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, UdpSocketState};
use rustix::event::{PollFd, PollFlags};
use tokio::sync::watch;

use super::batch::{Head, TxBatch, TxDatagram, MAX_GSO_SEGMENTS};
use super::encap::{tun_read_offset, Decapsulator, EncapConfig, Encapsulator, HEADROOM};
use super::error::Error;
use super::fib::Fib;
use super::handle::Feeds;
use super::icmp::{UnreachableReplies, MAX_TUN_WRITE, REPLY_RATE};
use super::offload::{Coalescer, TunWrite, MAX_COALESCE, MAX_SEGMENTS_PER_PACKET};
use super::stats::{DropReason, Stats};
use super::threads::{run_rounds, wait, Stop, Threads};
use super::tun::{TunDevice, TunQueue};
use super::udp::{Gather, Sockets, UdpSender};

/// Largest IP packet the TUN can hand us.
const MAX_PACKET: usize = 65_535;

/// How the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataplaneOptions {
    /// How long an idle worker keeps polling its TUN queue and socket after its
    /// last packet before it sleeps; zero sleeps at once.
    pub busy_poll: Duration,
    /// The overlay MTU: the largest inner packet a pod takes.
    pub mtu: u32,
}

/// Owns the dataplane's worker threads.
pub struct DataplaneDriver {
    threads: Threads,
}

impl DataplaneDriver {
    /// How many workers [`DataplaneDriver::spawn`] starts for `tun` and `sockets`:
    /// one per pair of TUN queue and receive socket.
    pub fn workers_for(tun: &TunDevice, sockets: &Sockets) -> usize {
        tun.queues.len().min(sockets.rx.len()).max(1)
    }

    /// Starts one worker per pair of TUN queue and receive socket (extra queues or
    /// sockets are closed), forwarding with the tables `feeds` delivers and counting
    /// into its stats (which must have [`DataplaneDriver::workers_for`] workers).
    pub fn spawn(
        tun: TunDevice,
        sockets: Sockets,
        config: EncapConfig,
        feeds: Feeds,
        options: DataplaneOptions,
    ) -> Result<DataplaneDriver, Error> {
        let workers = DataplaneDriver::workers_for(&tun, &sockets);
        let TunDevice {
            queues, vnet, uso, ..
        } = tun;
        let Sockets { rx: rx_sockets, tx } = sockets;
        let Feeds {
            fib: fib_rx,
            router: router_rx,
            stats,
            ..
        } = feeds;
        let fib = fib_rx.borrow().clone();
        let mut threads = Threads::new()?;
        tracing::info!(
            workers,
            source_ports = tx.len(),
            "dataplane: {workers} worker thread(s), one TUN queue and one SO_REUSEPORT socket each"
        );
        if options.busy_poll.is_zero() {
            tracing::info!("dataplane: idle workers sleep at once (no --busy-poll)");
        } else {
            tracing::info!(
                busy_poll_us = options.busy_poll.as_micros() as u64,
                "dataplane: busy polling on; an idle worker polls for {:?} after its last packet before it sleeps, and takes up to a core while traffic keeps arriving",
                options.busy_poll
            );
        }
        for (i, (tun, rx_socket)) in queues.into_iter().zip(rx_sockets).enumerate() {
            let worker_stats = stats.worker(i);
            let enc = Encapsulator::new(config, fib.clone(), worker_stats.clone());
            let dec = Decapsulator::new(config, fib.clone(), worker_stats.clone());
            let (fib_rx, router_rx) = (fib_rx.clone(), router_rx.clone());
            let (stop, tx) = (threads.stop.clone(), tx.clone());
            threads.spawn(format!("overlayd-dp{i}"), move || {
                Worker::new(
                    i,
                    tun,
                    rx_socket,
                    tx,
                    vnet,
                    uso,
                    enc,
                    dec,
                    fib_rx,
                    router_rx,
                    worker_stats,
                    stop,
                    options,
                )?
                .run()
            });
        }
        Ok(DataplaneDriver { threads })
    }

    /// Waits until a worker fails (one only returns on a fatal TUN or socket error).
    pub async fn wait(&mut self) -> Result<(), Error> {
        self.threads.wait().await
    }

    /// Stops the workers and waits for them; the TUN and socket fds close with them.
    pub async fn shutdown(self) {
        self.threads.shutdown().await
    }
}

pub(crate) fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// One worker: its TUN queue, its sockets and both directions' state.
struct Worker {
    tun: TunQueue,
    rx_socket: UdpSocket,
    tx_sockets: Arc<[UdpSocket]>,
    tx: TxPath,
    rx: RxPath,
    stop: Arc<Stop>,
    busy_poll: Duration,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    fn new(
        index: usize,
        tun: TunQueue,
        rx_socket: UdpSocket,
        tx_sockets: Arc<[UdpSocket]>,
        vnet: bool,
        uso: bool,
        enc: Encapsulator,
        dec: Decapsulator,
        fib: watch::Receiver<Arc<Fib>>,
        router: watch::Receiver<crate::dataplane::icmp::Routers>,
        stats: Arc<Stats>,
        stop: Arc<Stop>,
        options: DataplaneOptions,
    ) -> Result<Worker, Error> {
        let first_tx = tx_sockets.first().unwrap_or(&rx_socket);
        let sender = UdpSender::new(first_tx, index == 0);
        let tx_path = TxPath::new(vnet, enc, fib.clone(), router, stats.clone(), sender);
        let rx_path = RxPath::new(
            &rx_socket,
            vnet,
            uso,
            options.mtu,
            dec,
            fib,
            stats,
            index == 0,
        )?;
        Ok(Worker {
            tun,
            rx_socket,
            tx_sockets,
            tx: tx_path,
            rx: rx_path,
            stop,
            busy_poll: options.busy_poll,
        })
    }

    /// Runs rounds of both directions until neither has anything queued (and,
    /// with busy polling, has not had for `busy_poll`), then sleeps in `poll`
    /// until either has; ends when stopped or on a fatal error.
    fn run(&mut self) -> Result<(), Error> {
        let Worker {
            tun,
            rx_socket,
            tx_sockets,
            tx,
            rx,
            stop,
            busy_poll,
        } = self;
        run_rounds(
            stop,
            *busy_poll,
            &*tun,
            &*rx_socket,
            "waiting on the TUN device and the VXLAN socket",
            || Ok(tx.round(tun, tx_sockets, stop)? + rx.round(tun, rx_socket)?),
        )
    }
}

/// TUN buffers filled per round of the outbound path before it sends.
const TX_BUFS: usize = 16;
/// Header slots of the outbound batch (segmented datagrams).
const TX_SLOTS: usize = 2048;
/// Receive buffers per `recvmmsg`; each holds up to 64 GRO-merged datagrams.
const RX_BUFS: usize = 16;
/// Size of one receive buffer.
const RX_BUF_LEN: usize = 96 * 1024;

/// TUN → peers: reads up to [`TX_BUFS`] packets (super-packets with offloads), splits
/// and encapsulates them into one [`TxBatch`], then sends it in GSO runs.
struct TxPath {
    vnet: bool,
    enc: Encapsulator,
    fib: watch::Receiver<Arc<Fib>>,
    stats: Arc<Stats>,
    bufs: Vec<Vec<u8>>,
    batch: TxBatch,
    sender: UdpSender,
    /// Source of ICMP unreachable replies (the node's gateway), if set.
    router: watch::Receiver<crate::dataplane::icmp::Routers>,
    icmp: UnreachableReplies,
    icmp_buf: Vec<u8>,
}

impl TxPath {
    fn new(
        vnet: bool,
        enc: Encapsulator,
        fib: watch::Receiver<Arc<Fib>>,
        router: watch::Receiver<crate::dataplane::icmp::Routers>,
        stats: Arc<Stats>,
        sender: UdpSender,
    ) -> TxPath {
        TxPath {
            vnet,
            enc,
            fib,
            stats,
            bufs: (0..TX_BUFS)
                .map(|_| vec![0u8; HEADROOM + MAX_PACKET])
                .collect(),
            batch: TxBatch::new(TX_SLOTS),
            sender,
            router,
            icmp: UnreachableReplies::new(REPLY_RATE, vnet),
            icmp_buf: vec![0u8; MAX_TUN_WRITE],
        }
    }

    /// One batch; returns the number of TUN reads (0: nothing was queued).
    fn round(
        &mut self,
        tun: &TunQueue,
        sockets: &[UdpSocket],
        stop: &Stop,
    ) -> Result<usize, Error> {
        let off = tun_read_offset(self.vnet);
        if self.fib.has_changed().unwrap_or(false) {
            self.enc.set_fib(self.fib.borrow_and_update().clone());
        }
        self.batch.clear();
        let mut k = 0;
        while k < TX_BUFS && self.batch.free_slots() >= MAX_SEGMENTS_PER_PACKET {
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
            let result = self.enc.encapsulate_read(
                &mut self.bufs[k],
                n,
                self.vnet,
                k as u32,
                &mut self.batch,
            );
            if let Err(reason) = result {
                // The ICMP core decides on a reply, given the gateway address in force
                // and the time now; both are read only for a drop.
                self.icmp.set_router(*self.router.borrow());
                let packet = self.bufs[k].get(HEADROOM..off + n).unwrap_or_default();
                let reply =
                    self.icmp
                        .handle_drop(Instant::now(), reason, packet, &mut self.icmp_buf);
                if let Some(len) = reply {
                    // Best effort: a full TUN queue drops the reply.
                    let _ = tun.send_vectored(&[IoSlice::new(&self.icmp_buf[..len])]);
                }
            }
            k += 1;
        }
        if k > 0 {
            self.send_batch(sockets, stop);
            self.enc.flush_peer_stats();
            self.stats.tx.record_batch(self.batch.datagrams().len());
        }
        Ok(k)
    }

    /// Sends every datagram of the batch in GSO runs, each from the source port its
    /// flow picks; a full socket is waited for, failures are counted as drops.
    fn send_batch(&mut self, sockets: &[UdpSocket], stop: &Stop) {
        let bufs = &self.bufs;
        send_groups(
            &mut self.sender,
            sockets,
            &self.batch,
            stop,
            &self.stats,
            |d| &bufs[d.buf as usize][d.body.start as usize..d.body.end as usize],
        );
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

/// Peers → TUN: receives up to [`RX_BUFS`] GRO-merged buffers per `recvmmsg`,
/// decapsulates every datagram, merges TCP segments and writes the result.
struct RxPath {
    dec: Decapsulator,
    fib: watch::Receiver<Arc<Fib>>,
    stats: Arc<Stats>,
    state: UdpSocketState,
    bufs: Vec<u8>,
    metas: [RecvMeta; RX_BUFS],
    coalescer: Coalescer,
}

impl RxPath {
    #[allow(clippy::too_many_arguments)]
    fn new(
        socket: &UdpSocket,
        vnet: bool,
        uso: bool,
        mtu: u32,
        dec: Decapsulator,
        fib: watch::Receiver<Arc<Fib>>,
        stats: Arc<Stats>,
        log: bool,
    ) -> Result<RxPath, Error> {
        let state = UdpSocketState::new(socket.into()).map_err(|source| Error::Io {
            what: "setting up the VXLAN socket for batch receive",
            source,
        })?;
        let gro = state.gro_segments() > 1;
        if log {
            tracing::info!(
                udp_gro = gro,
                tun_coalescing = vnet,
                tun_uso = vnet && uso,
                "VXLAN socket: recvmmsg receive path{}; TUN writes {}",
                if gro { " with UDP GRO" } else { "" },
                match (vnet, uso) {
                    (true, true) => "coalesce TCP segments and UDP datagrams (IFF_VNET_HDR, USO)",
                    (true, false) => "coalesce TCP segments (IFF_VNET_HDR; no USO: UDP one by one)",
                    (false, _) => "one packet each",
                }
            );
        }
        Ok(RxPath {
            dec,
            fib,
            stats,
            state,
            bufs: vec![0u8; RX_BUFS * RX_BUF_LEN],
            metas: [RecvMeta::default(); RX_BUFS],
            coalescer: Coalescer::new(vnet, uso).with_mtu(mtu),
        })
    }

    /// One `recvmmsg` and its TUN writes; returns the datagrams handled.
    fn round(&mut self, tun: &TunQueue, socket: &UdpSocket) -> Result<usize, Error> {
        let received = {
            let mut chunks = self.bufs.chunks_mut(RX_BUF_LEN);
            let mut iovs: [IoSliceMut<'_>; RX_BUFS] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            self.state.recv(socket.into(), &mut iovs, &mut self.metas)
        };
        let n = match received {
            Ok(n) => n,
            Err(e) if is_would_block(&e) => return Ok(0),
            // ICMP errors reported on the socket (a peer's port unreachable) are not fatal.
            Err(e) if is_transient(&e) => return Ok(1),
            Err(source) => {
                return Err(Error::Io {
                    what: "receiving on the VXLAN socket",
                    source,
                })
            }
        };
        if self.fib.has_changed().unwrap_or(false) {
            self.dec.set_fib(self.fib.borrow_and_update().clone());
        }
        let bufs = &mut self.bufs;
        self.coalescer.clear();
        let mut handled = 0;
        for (i, meta) in self.metas[..n].iter().enumerate() {
            let base = i * RX_BUF_LEN;
            let len = meta.len.min(RX_BUF_LEN);
            let stride = if meta.stride == 0 { len } else { meta.stride };
            let mut at = 0;
            while at < len {
                let end = (at + stride).min(len);
                let datagram = &bufs[base + at..base + end];
                if let Ok(r) = self.dec.decapsulate(meta.addr.ip(), datagram) {
                    let range = base + at + r.start..base + at + r.end;
                    self.coalescer.push(0, range.clone(), &bufs[range]);
                }
                handled += 1;
                at = end;
            }
        }
        self.dec.flush_peer_stats();
        self.coalescer.finish(std::slice::from_mut(bufs));
        write_tun(tun, &self.coalescer, bufs, &self.stats);
        self.stats.rx.record_batch(handled);
        Ok(handled.max(1))
    }
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
