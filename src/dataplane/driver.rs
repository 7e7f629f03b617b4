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

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::batch::TxBatch;
use super::encap::{Decapsulator, EncapConfig, Encapsulator};
use super::error::Error;
use super::fib::Fib;
use super::handle::Feeds;
use super::offload::{Coalescer, MAX_SEGMENTS_PER_PACKET};
use super::stats::{DropReason, Stats};
use super::threads::{run_rounds, Stop, Threads};
use super::tun::{TunDevice, TunQueue};
use super::udp::{Sockets, UdpSender};
use super::worker::{send_groups, write_tun, Received, Route, RxBatch, TunReads, WorkerSetup};

/// How the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct DataplaneOptions {
    /// How long an idle worker keeps polling its TUN queue and socket after its
    /// last packet before it sleeps; zero sleeps at once.
    pub(crate) busy_poll: Duration,
    /// The overlay MTU: the largest inner packet a pod takes.
    pub(crate) mtu: u32,
}

/// Owns the dataplane's worker threads.
pub(crate) struct DataplaneDriver {
    /// The workers: `wait` until one fails (one only returns on a fatal TUN or socket
    /// error), `shutdown` to stop them (the TUN and socket fds close with them).
    pub(crate) threads: Threads,
}

impl DataplaneDriver {
    /// How many workers [`DataplaneDriver::spawn`] starts for `tun` and `sockets`:
    /// one per pair of TUN queue and receive socket.
    pub(crate) fn workers_for(tun: &TunDevice, sockets: &Sockets) -> usize {
        tun.queues.len().min(sockets.rx.len()).max(1)
    }

    /// Starts one worker per pair of TUN queue and receive socket (extra queues or
    /// sockets are closed), forwarding with the tables `feeds` delivers and counting
    /// into its stats (which must have [`DataplaneDriver::workers_for`] workers).
    pub(crate) fn spawn(
        tun: TunDevice,
        sockets: Sockets,
        config: EncapConfig,
        feeds: Feeds,
        options: DataplaneOptions,
    ) -> Result<DataplaneDriver, Error> {
        let workers = DataplaneDriver::workers_for(&tun, &sockets);
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
        let setups = WorkerSetup::per_queue(tun, &router_rx, &stats, &threads.stop, options);
        for (setup, rx_socket) in setups.into_iter().zip(rx_sockets) {
            let enc = Encapsulator::new(config, fib.clone(), setup.stats.clone());
            let dec = Decapsulator::new(config, fib.clone(), setup.stats.clone());
            let (fib_rx, tx) = (fib_rx.clone(), tx.clone());
            threads.spawn(format!("overlayd-dp{}", setup.index), move || {
                Worker::new(setup, rx_socket, tx, enc, dec, fib_rx)?.run()
            });
        }
        Ok(DataplaneDriver { threads })
    }
}

/// One worker: its TUN queue, its sockets and both directions' state.
struct Worker {
    tun: TunQueue,
    rx_socket: UdpSocket,
    tx_sockets: Arc<[UdpSocket]>,
    vnet: bool,
    tx: TxPath,
    rx: RxPath,
    stop: Arc<Stop>,
    busy_poll: Duration,
}

impl Worker {
    fn new(
        setup: WorkerSetup,
        rx_socket: UdpSocket,
        tx_sockets: Arc<[UdpSocket]>,
        enc: Encapsulator,
        dec: Decapsulator,
        fib: watch::Receiver<Arc<Fib>>,
    ) -> Result<Worker, Error> {
        let first_tx = tx_sockets.first().unwrap_or(&rx_socket);
        let sender = UdpSender::new(first_tx, setup.index == 0);
        let tx_path = TxPath::new(
            setup.vnet,
            enc,
            fib.clone(),
            setup.router,
            setup.stats.clone(),
            sender,
        );
        let rx_path = RxPath::new(
            &rx_socket,
            setup.vnet,
            setup.uso,
            setup.options.mtu,
            dec,
            fib,
            setup.stats,
            setup.index == 0,
        )?;
        Ok(Worker {
            tun: setup.tun,
            rx_socket,
            tx_sockets,
            vnet: setup.vnet,
            tx: tx_path,
            rx: rx_path,
            stop: setup.stop,
            busy_poll: setup.options.busy_poll,
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
            vnet,
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
            || Ok(tx.round(tun, tx_sockets, stop, *vnet)? + rx.round(tun, rx_socket)?),
        )
    }
}

/// Header slots of the outbound batch (segmented datagrams).
const TX_SLOTS: usize = 2048;

/// TUN → peers: reads up to [`super::worker::TX_BUFS`] packets (super-packets with
/// offloads), splits and encapsulates them into one [`TxBatch`], then sends it in GSO
/// runs.
struct TxPath {
    enc: Encapsulator,
    fib: watch::Receiver<Arc<Fib>>,
    stats: Arc<Stats>,
    reads: TunReads,
    batch: TxBatch,
    sender: UdpSender,
}

/// The encapsulator as the TUN reads' [`Route`]: each read goes into the batch.
struct Encap<'a> {
    enc: &'a mut Encapsulator,
    batch: &'a mut TxBatch,
    vnet: bool,
}

impl Route for Encap<'_> {
    fn has_room(&self) -> bool {
        self.batch.free_slots() >= MAX_SEGMENTS_PER_PACKET
    }

    fn route(&mut self, k: usize, buf: &mut [u8], len: usize) -> Result<(), DropReason> {
        self.enc
            .encapsulate_read(buf, len, self.vnet, k as u32, self.batch)
            .map(|_| ())
    }
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
            enc,
            fib,
            stats,
            reads: TunReads::new(vnet, router),
            batch: TxBatch::new(TX_SLOTS),
            sender,
        }
    }

    /// One batch; returns the number of TUN reads (0: nothing was queued).
    fn round(
        &mut self,
        tun: &TunQueue,
        sockets: &[UdpSocket],
        stop: &Stop,
        vnet: bool,
    ) -> Result<usize, Error> {
        if self.fib.has_changed().unwrap_or(false) {
            self.enc.set_fib(self.fib.borrow_and_update().clone());
        }
        self.batch.clear();
        let k = self.reads.read(
            tun,
            &mut Encap {
                enc: &mut self.enc,
                batch: &mut self.batch,
                vnet,
            },
        )?;
        if k > 0 {
            let bufs = &self.reads.bufs;
            send_groups(
                &mut self.sender,
                sockets,
                &self.batch,
                stop,
                &self.stats,
                |d| &bufs[d.buf as usize][d.body.start as usize..d.body.end as usize],
            );
            self.enc.flush_peer_stats();
            self.stats.tx.record_batch(self.batch.datagrams().len());
        }
        Ok(k)
    }
}

/// Peers → TUN: receives up to [`super::worker::RX_BUFS`] GRO-merged buffers per
/// `recvmmsg`, decapsulates every datagram, merges TCP segments and writes the result.
struct RxPath {
    dec: Decapsulator,
    fib: watch::Receiver<Arc<Fib>>,
    stats: Arc<Stats>,
    rx: RxBatch,
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
        let rx = RxBatch::new(socket, "setting up the VXLAN socket for batch receive")?;
        let gro = rx.gro();
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
            rx,
            coalescer: Coalescer::new(vnet, uso).with_mtu(mtu),
        })
    }

    /// One `recvmmsg` and its TUN writes; returns the datagrams handled.
    fn round(&mut self, tun: &TunQueue, socket: &UdpSocket) -> Result<usize, Error> {
        let n = match self.rx.recv(socket, "receiving on the VXLAN socket")? {
            Received::Nothing => return Ok(0),
            Received::Transient => return Ok(1),
            Received::Buffers(n) => n,
        };
        if self.fib.has_changed().unwrap_or(false) {
            self.dec.set_fib(self.fib.borrow_and_update().clone());
        }
        self.coalescer.clear();
        let mut handled = 0;
        for d in self.rx.datagrams(n) {
            let datagram = &self.rx.bufs[d.range.clone()];
            if let Ok(r) = self.dec.decapsulate(d.from.ip(), datagram) {
                let range = d.range.start + r.start..d.range.start + r.end;
                self.coalescer.push(0, range.clone(), &self.rx.bufs[range]);
            }
            handled += 1;
        }
        self.dec.flush_peer_stats();
        self.coalescer
            .finish(std::slice::from_mut(&mut self.rx.bufs));
        write_tun(tun, &self.coalescer, &self.rx.bufs, &self.stats);
        self.stats.rx.record_batch(handled);
        Ok(handled.max(1))
    }
}
