//! The encrypted dataplane's threads: one worker per core, each with its own TUN
//! queue and its own socket on the WireGuard port (one `SO_REUSEPORT` group, also
//! the socket it sends from, so peers see one endpoint), and one timer thread that
//! runs the WireGuard timers, rebuilds the tunnels when the forwarding table
//! changes and switches keys on rotation. They own the fds and the loops; what to
//! send, deliver or drop comes from [`super::path`] and [`super::tunnels`].
//!
//! A worker reads up to 16 TUN packets (super-packets with offloads), seals them
//! under one lock of each peer's tunnel per run of packets to it, and sends them
//! in UDP GSO runs; inbound, one `recvmmsg` of GRO-merged buffers is opened under
//! one lock per run of one peer's messages, and TCP segments are merged again for
//! the TUN. Nothing on the packet path allocates.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use tokio::sync::watch;

use super::key::KeyPair;
use super::path::{flush_queue, slots_needed, Arena, Opened, Opener, Sealed, Sealer};
use super::tunnels::{TunnelTable, Tunnels, RETIRE_AFTER};
use crate::dataplane::batch::TxBatch;
use crate::dataplane::driver::DataplaneOptions;
use crate::dataplane::error::Error;
use crate::dataplane::fib::Fib;
use crate::dataplane::handle::Feeds;
use crate::dataplane::offload::Coalescer;
use crate::dataplane::stats::{DropReason, Stats};
use crate::dataplane::threads::{run_rounds, Stop, Threads};
use crate::dataplane::tun::{TunDevice, TunQueue};
use crate::dataplane::udp::UdpSender;
use crate::dataplane::worker::{
    send_groups, write_tun, Received, Route, RxBatch, TunReads, WorkerSetup, MAX_PACKET, RX_BUFS,
    RX_BUF_LEN, TX_BUFS,
};

/// Sealed datagrams per send batch.
const TX_SLOTS: usize = 1024;
/// Bytes in front of every opened packet, where the TUN write's virtio-net header goes.
const RX_GAP: usize = 16;
/// How often the timer thread runs the WireGuard timers.
const TICK: Duration = Duration::from_millis(100);

/// Asks the running encrypted dataplane for a new key pair.
#[derive(Clone)]
pub struct WgControl {
    rotate: std::sync::mpsc::Sender<(KeyPair, tokio::sync::oneshot::Sender<()>)>,
    public: Arc<std::sync::Mutex<[u8; 32]>>,
    port: u16,
}

impl WgControl {
    /// Starts moving to `pair` ([`TunnelTable::rotate`]); resolves once the workers
    /// accept handshakes for the new key, so it is safe to publish it then. False if
    /// the dataplane has stopped.
    pub(crate) async fn rotate(&self, pair: KeyPair) -> bool {
        let public = pair.public_bytes();
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.rotate.send((pair, tx)).is_err() || rx.await.is_err() {
            return false;
        }
        *self.public.lock().unwrap_or_else(|p| p.into_inner()) = public;
        true
    }

    /// The WireGuard port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The public key in force.
    pub(crate) fn public(&self) -> [u8; 32] {
        *self.public.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Owns the encrypted dataplane's threads.
pub struct WgDriver {
    /// The worker and timer threads: `wait` until one fails, `shutdown` to stop them.
    pub(crate) threads: Threads,
    control: WgControl,
}

impl WgDriver {
    /// Starts one worker per pair of TUN queue and socket, and the timer thread,
    /// sealing with `local`'s key for the peers of the tables `feeds` delivers.
    /// `feeds`' counters need a set per worker and one more for the timer thread
    /// ([`WgDriver::counter_sets`]): each set has one writer.
    pub(crate) fn spawn(
        tun: TunDevice,
        sockets: Vec<UdpSocket>,
        local: KeyPair,
        feeds: Feeds,
        options: DataplaneOptions,
    ) -> Result<WgDriver, Error> {
        let io = |what| move |source| Error::Io { what, source };
        let mut threads = Threads::new()?;
        let Feeds {
            fib: fib_rx,
            router,
            stats,
            ..
        } = feeds;
        for s in &sockets {
            if s.local_addr().is_ok_and(|a| a.is_ipv4()) {
                // DF clear, as the kernel's WireGuard sends.
                let _ = rustix::net::sockopt::set_ip_mtu_discover(
                    s,
                    rustix::net::sockopt::Ipv4PathMtuDiscovery::DONT,
                );
            }
        }
        let timer_socket = sockets
            .first()
            .ok_or(Error::NoWgSocket)?
            .try_clone()
            .map_err(io("cloning the WireGuard socket"))?;
        let public = local.public_bytes();
        let port = timer_socket.local_addr().map_or(0, |a| a.port());
        let mut table = TunnelTable::new(local);
        let (first, fresh) = table.build_noting_new(fib_rx.borrow().clone());
        let (tunnels_tx, tunnels_rx) = watch::channel(first);
        let (rotate_tx, rotate_rx) = std::sync::mpsc::channel();
        let workers = tun.queues.len().min(sockets.len()).max(1);
        tracing::info!(
            workers,
            "encrypted dataplane: {workers} worker thread(s), one TUN queue and one WireGuard socket each"
        );
        let setups = WorkerSetup::per_queue(tun, &router, &stats, &threads.stop, options);
        for (setup, socket) in setups.into_iter().zip(sockets) {
            let tunnels = tunnels_rx.clone();
            threads.spawn(format!("overlayd-wg{}", setup.index), move || {
                Worker::new(setup, socket, tunnels)?.run()
            });
        }
        let timer_stop = threads.stop.clone();
        let timer = Timers {
            table,
            fresh,
            fib: fib_rx,
            publish: tunnels_tx,
            rotations: rotate_rx,
            socket: timer_socket,
            // The set after the workers' (see [`WgDriver::spawn`]).
            stats: stats.worker(workers),
        };
        threads.spawn("overlayd-wgtimer".into(), move || {
            timer.run(&timer_stop);
            Ok(())
        });
        Ok(WgDriver {
            threads,
            control: WgControl {
                rotate: rotate_tx,
                public: Arc::new(std::sync::Mutex::new(public)),
                port,
            },
        })
    }

    /// The sets of counters the dataplane needs for `workers` workers.
    pub(crate) fn counter_sets(workers: usize) -> usize {
        workers + 1
    }

    /// What rotates the key of the running dataplane.
    pub(crate) fn control(&self) -> WgControl {
        self.control.clone()
    }
}

/// The timer thread: WireGuard timers every [`TICK`], new tunnels for each new
/// forwarding table, key rotations.
struct Timers {
    table: TunnelTable,
    /// FIB indices of the first table's peers, to greet.
    fresh: Vec<u32>,
    fib: watch::Receiver<Arc<Fib>>,
    publish: watch::Sender<Arc<Tunnels>>,
    rotations: std::sync::mpsc::Receiver<(KeyPair, tokio::sync::oneshot::Sender<()>)>,
    socket: UdpSocket,
    /// Its own counters (packets lost with a handshake that never completed).
    stats: Arc<Stats>,
}

impl Timers {
    fn run(self, stop: &Stop) {
        let Timers {
            mut table,
            fresh,
            mut fib,
            publish,
            rotations,
            socket,
            stats,
        } = self;
        let mut scratch = vec![0u8; 2048];
        let mut current = publish.borrow().clone();
        table.greet(&current, &fresh, &mut scratch, |to, msg| {
            let _ = socket.send_to(msg, to);
        });
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: TICK.as_nanos() as i64,
        };
        loop {
            let mut fds = [PollFd::new(&stop.event, PollFlags::IN)];
            let _ = rustix::event::poll(&mut fds, Some(&timeout));
            if stop.is_set() {
                return;
            }
            let mut rebuild = false;
            let mut rotated = Vec::new();
            while let Ok((pair, done)) = rotations.try_recv() {
                rotated.push(done);
                tracing::info!(public_key = %super::key::encode(&pair.public_bytes()), "WireGuard key rotation: peers move to the new key as they learn it; the old key is retired in {} s", RETIRE_AFTER.as_secs());
                table.rotate(pair, Instant::now());
                rebuild = true;
            }
            if table.retire_due(Instant::now()) {
                tracing::info!("WireGuard key rotation done: the old key is retired");
                rebuild = true;
            }
            if fib.has_changed().unwrap_or(false) {
                rebuild = true;
            }
            if rebuild {
                let fresh;
                (current, fresh) = table.build_noting_new(fib.borrow_and_update().clone());
                publish.send_replace(current.clone());
                table.greet(&current, &fresh, &mut scratch, |to, msg| {
                    let _ = socket.send_to(msg, to);
                });
            }
            for done in rotated {
                let _ = done.send(());
            }
            table.tick(&current, &stats, &mut scratch, |to, msg| {
                let _ = socket.send_to(msg, to);
            });
        }
    }
}

/// A TUN read the sealer routed: its buffer, its length, and the peer it goes to.
#[derive(Debug, Clone, Copy)]
struct Routed {
    /// The read's index in [`TunReads::bufs`].
    buf: usize,
    /// Bytes read.
    len: usize,
    /// The peer's index in the tunnels.
    peer: u32,
}

/// The sealer as the TUN reads' [`Route`]: each read is routed to its peer now and
/// sealed, per run of reads to one peer, once the round's reads are in.
struct Seal<'a> {
    sealer: &'a Sealer,
    tunnels: &'a Tunnels,
    routed: &'a mut Vec<Routed>,
}

impl Route for Seal<'_> {
    fn route(&mut self, k: usize, buf: &mut [u8], len: usize) -> Result<(), DropReason> {
        let peer = self.sealer.route(self.tunnels, buf, len)?;
        self.routed.push(Routed { buf: k, len, peer });
        Ok(())
    }
}

/// One worker: its TUN queue, its socket, and both directions' state.
struct Worker {
    tun: TunQueue,
    socket: UdpSocket,
    vnet: bool,
    tunnels_rx: watch::Receiver<Arc<Tunnels>>,
    tunnels: Arc<Tunnels>,
    stats: Arc<Stats>,
    stop: Arc<Stop>,
    busy_poll: Duration,
    // Outbound.
    sealer: Sealer,
    reads: TunReads,
    routed: Vec<Routed>,
    arena: Arena,
    batch: TxBatch,
    sender: UdpSender,
    // Inbound.
    opener: Opener,
    rx: RxBatch,
    plain: Vec<u8>,
    scratch: Vec<u8>,
    coalescer: Coalescer,
}

impl Worker {
    fn new(
        setup: WorkerSetup,
        socket: UdpSocket,
        tunnels_rx: watch::Receiver<Arc<Tunnels>>,
    ) -> Result<Worker, Error> {
        let rx = RxBatch::new(&socket, "setting up the WireGuard socket for batch receive")?;
        let sender = UdpSender::new(&socket, setup.index == 0);
        if setup.index == 0 {
            tracing::info!(
                udp_gro = rx.gro(),
                udp_gso = sender.max_segments() > 1,
                tun_offloads = setup.vnet,
                "WireGuard socket: recvmmsg receive, GSO send"
            );
        }
        let tunnels = tunnels_rx.borrow().clone();
        Ok(Worker {
            tun: setup.tun,
            socket,
            vnet: setup.vnet,
            tunnels_rx,
            tunnels,
            sealer: Sealer::new(setup.stats.clone(), setup.vnet),
            opener: Opener::new(setup.stats.clone()),
            stats: setup.stats,
            stop: setup.stop,
            busy_poll: setup.options.busy_poll,
            reads: TunReads::new(setup.vnet, setup.router),
            routed: Vec::with_capacity(TX_BUFS),
            arena: Arena::new(TX_SLOTS, setup.options.mtu),
            batch: TxBatch::new(0),
            sender,
            rx,
            plain: vec![0u8; 2 * RX_BUFS * RX_BUF_LEN],
            // Queued packets sealed after a handshake go here: up to the MTU.
            scratch: vec![0u8; MAX_PACKET + 64],
            coalescer: Coalescer::new(setup.vnet, setup.uso).with_mtu(setup.options.mtu),
        })
    }

    fn run(&mut self) -> Result<(), Error> {
        // The loop polls copies of the fds, so that each round may borrow the worker.
        let io = |what| move |source| Error::Io { what, source };
        let tun = self
            .tun
            .as_fd()
            .try_clone_to_owned()
            .map_err(io("duplicating the TUN fd"))?;
        let socket = self
            .socket
            .try_clone()
            .map_err(io("duplicating the WireGuard socket"))?;
        let stop = self.stop.clone();
        run_rounds(
            &stop,
            self.busy_poll,
            &tun,
            &socket,
            "waiting on the TUN device and the WireGuard socket",
            || {
                if self.tunnels_rx.has_changed().unwrap_or(false) {
                    self.tunnels = self.tunnels_rx.borrow_and_update().clone();
                }
                Ok(self.tx_round()? + self.rx_round()?)
            },
        )
    }

    /// Reads up to [`TX_BUFS`] TUN packets, seals them per peer run and sends them.
    fn tx_round(&mut self) -> Result<usize, Error> {
        self.routed.clear();
        let k = self.reads.read(
            &self.tun,
            &mut Seal {
                sealer: &self.sealer,
                tunnels: &self.tunnels,
                routed: &mut self.routed,
            },
        )?;
        if self.routed.is_empty() {
            return Ok(k);
        }
        self.arena.clear();
        self.batch.clear();
        let tunnels = self.tunnels.clone();
        let mut i = 0;
        while i < self.routed.len() {
            let idx = self.routed[i].peer;
            let Some(peer) = tunnels.peer(idx) else {
                i += 1;
                continue;
            };
            let mut tunn = peer.lock();
            let mut tally = Sealed::default();
            while i < self.routed.len() && self.routed[i].peer == idx {
                let Routed { buf, len, .. } = self.routed[i];
                let read = &mut self.reads.bufs[buf];
                if self.arena.free() < slots_needed(read, len, self.vnet) {
                    self.flush();
                }
                if let Ok(s) = self.sealer.seal(
                    peer,
                    &mut tunn,
                    &mut self.reads.bufs[buf],
                    len,
                    &mut self.arena,
                    &mut self.batch,
                ) {
                    tally.packets += s.packets;
                    tally.bytes += s.bytes;
                }
                i += 1;
            }
            drop(tunn);
            if tally.packets > 0 {
                peer.stats
                    .tx
                    .add_shared(tally.packets, tally.bytes as usize);
            }
        }
        self.flush();
        Ok(k)
    }

    /// Sends what the batch holds and empties it.
    fn flush(&mut self) {
        if self.batch.datagrams().is_empty() {
            return;
        }
        let arena = &self.arena;
        send_groups(
            &mut self.sender,
            std::slice::from_ref(&self.socket),
            &self.batch,
            &self.stop,
            &self.stats,
            |d| arena.get(d.buf, d.len()),
        );
        self.stats.tx.record_batch(self.batch.datagrams().len());
        self.arena.clear();
        self.batch.clear();
    }

    /// One `recvmmsg`: opens every message, merges TCP segments, writes the TUN.
    fn rx_round(&mut self) -> Result<usize, Error> {
        let n = match self
            .rx
            .recv(&self.socket, "receiving on the WireGuard socket")?
        {
            Received::Nothing => return Ok(0),
            Received::Transient => return Ok(1),
            Received::Buffers(n) => n,
        };
        let tunnels = self.tunnels.clone();
        self.coalescer.clear();
        let mut handled = 0;
        let mut at_plain = 0;
        let socket = &self.socket;
        let mut send = |to: SocketAddr, msg: &[u8]| {
            let _ = socket.send_to(msg, to);
        };
        let rx_bufs = &self.rx.bufs;
        let mut datagrams = self.rx.datagrams(n).peekable();
        while let Some(first) = datagrams.next() {
            let msg = &rx_bufs[first.range.clone()];
            let Some(idx) = Opener::data_peer(&tunnels, msg) else {
                self.opener
                    .open_control(&tunnels, first.from, msg, &mut self.scratch, &mut send);
                handled += 1;
                continue;
            };
            let Some(peer) = tunnels.peer(idx) else {
                continue;
            };
            // A run of this peer's data messages, under one lock.
            let mut tunn = peer.lock();
            let (mut packets, mut bytes) = (0u64, 0usize);
            let mut d = first;
            loop {
                let msg = &rx_bufs[d.range.clone()];
                let start = at_plain + RX_GAP;
                match self.plain.get_mut(start..start + msg.len()) {
                    // Cannot happen: an opened packet is shorter than its message by
                    // more than the gap, and the arena is twice the buffers.
                    None => self.stats.rx.drop(DropReason::IoError),
                    Some(out) => match self
                        .opener
                        .open_data(&tunnels, idx, peer, &mut tunn, d.from, msg, out)
                    {
                        Ok(Opened::Inner(l)) => {
                            let range = start..start + l;
                            self.coalescer.push(0, range.clone(), &self.plain[range]);
                            at_plain = (start + l).next_multiple_of(8);
                            packets += 1;
                            bytes += l;
                        }
                        Ok(Opened::Send { to, len }) => send(to, &out[..len]),
                        _ => {}
                    },
                }
                handled += 1;
                match datagrams.peek() {
                    Some(next)
                        if Opener::data_peer(&tunnels, &rx_bufs[next.range.clone()])
                            == Some(idx) =>
                    {
                        d = datagrams.next().unwrap_or(d);
                    }
                    _ => break,
                }
            }
            // The first data message of a session we answered makes it current:
            // what waited for it can go now.
            flush_queue(&self.stats, peer, &mut tunn, &mut self.scratch, &mut send);
            drop(tunn);
            if packets > 0 {
                peer.stats.rx.add_shared(packets, bytes);
            }
        }
        self.coalescer.finish(std::slice::from_mut(&mut self.plain));
        write_tun(&self.tun, &self.coalescer, &self.plain, &self.stats);
        self.stats.rx.record_batch(handled);
        Ok(handled.max(1))
    }
}
