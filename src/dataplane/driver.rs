//! The dataplane's tokio driver: it owns the TUN device and the VXLAN UDP socket and
//! moves packets between them through the sans-IO [`Encapsulator`] and
//! [`Decapsulator`]. It makes no forwarding decision of its own.
//!
//! Two tasks, one per direction, each with its own buffers and core, so the directions
//! share no lock. Outbound, a wake-up drains up to 16 TUN reads (TSO super-packets
//! when the TUN offloads), splits them into one batch and sends it in UDP GSO runs.
//! Inbound, one `recvmmsg` takes up to 16 GRO-merged buffers; their TCP segments are
//! merged again into super-packets for the TUN. Forwarding-table updates arrive on a
//! `watch` channel and are picked up between batches. Send and write errors are
//! counted as drops; only a failure to read the TUN or the socket ends a task.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tun_rs::AsyncDevice;

use super::encap::{Decapsulator, EncapConfig, Encapsulator, HEADROOM};
use super::error::Error;
use super::fib::Fib;
use super::icmp::{self, RateLimit, Unreachable};
use super::offload::{self, Coalescer, Head, TunWrite, TxBatch};
use super::stats::{DropReason, Stats};
use super::tun::TunQueue;
use super::udp::{Gather, UdpSender};

/// Largest IP packet the TUN can hand us.
const MAX_PACKET: usize = 65_535;
/// Socket buffer size asked of the kernel for the VXLAN socket.
const SOCKET_BUFFER: usize = 4 << 20;

/// Creates the TUN device `name` (no packet-information header), still down, so the
/// caller can finish configuring it before the kernel sends anything through it.
/// Offloads (`IFF_VNET_HDR` with checksum and TSO) are asked for first; without them
/// the device moves one plain packet per read and write. The log says which.
pub fn open_tun(name: &str, mtu: u32) -> Result<AsyncDevice, Error> {
    let mtu16 = u16::try_from(mtu).unwrap_or(u16::MAX);
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu16)
            .offload(offload)
            .enable(false)
            .build_async()
    };
    let device = match build(true) {
        Ok(device) => {
            tracing::info!(
                tun = name,
                tso = device.tcp_gso(),
                uso = device.udp_gso(),
                "TUN offloads on (IFF_VNET_HDR): TSO in, GRO out"
            );
            device
        }
        Err(e) => {
            tracing::warn!(tun = name, error = %e, "TUN offloads unavailable: one packet per read and write");
            build(false).map_err(|source| Error::Tun {
                name: name.to_string(),
                source,
            })?
        }
    };
    Ok(device)
}

/// Opens the VXLAN UDP socket bound to `bind`, with large kernel buffers.
pub fn open_socket(bind: SocketAddr) -> Result<UdpSocket, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| Error::Socket { addr: bind, source };
    let socket =
        Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    // Larger buffers absorb bursts; the kernel caps them at net.core.*mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&bind.into()).map_err(err)?;
    UdpSocket::from_std(socket.into()).map_err(err)
}

/// The front end of a running dataplane: counters and the forwarding-table feed.
#[derive(Clone)]
pub struct DataplaneHandle {
    stats: Arc<Stats>,
    fib: watch::Sender<Arc<Fib>>,
    router: watch::Sender<Option<std::net::IpAddr>>,
}

impl DataplaneHandle {
    /// The live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Installs a new forwarding table; both directions use it from their next packet.
    pub fn set_fib(&self, fib: Arc<Fib>) {
        self.fib.send_replace(fib);
    }

    /// Sets the address ICMP unreachable replies come from (the node's gateway);
    /// `None` sends none.
    pub fn set_router(&self, router: Option<std::net::IpAddr>) {
        self.router.send_replace(router);
    }

    /// The forwarding table in use.
    pub fn fib(&self) -> Arc<Fib> {
        self.fib.borrow().clone()
    }
}

/// Owns the dataplane's worker thread. It runs its own single-threaded tokio runtime
/// with its own registration of the TUN and socket fds, so the kernel wakes the thread
/// that handles a packet directly, and it serves both directions, so a reply that
/// comes back while it is still polling needs no wake-up at all.
pub struct DataplaneDriver {
    threads: Vec<std::thread::JoinHandle<()>>,
    done: mpsc::UnboundedReceiver<Result<(), Error>>,
    stop: watch::Sender<bool>,
}

impl DataplaneDriver {
    /// Starts forwarding between `tun` and `udp` with the initial table `fib`.
    pub fn spawn(
        tun: AsyncDevice,
        udp: UdpSocket,
        config: EncapConfig,
        fib: Arc<Fib>,
    ) -> (DataplaneDriver, DataplaneHandle) {
        let stats = Arc::new(Stats::default());
        let (fib_tx, fib_rx) = watch::channel(fib.clone());
        let (router_tx, router_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = mpsc::unbounded_channel();
        let vnet = tun.tcp_gso();
        let mut threads = Vec::new();
        match split_fds(tun, udp) {
            Err(source) => {
                let _ = done_tx.send(Err(Error::Io {
                    what: "handing the TUN and socket to the dataplane thread",
                    source,
                }));
            }
            Ok((tun_fd, udp_std)) => {
                let enc = Encapsulator::new(config, fib.clone(), stats.clone());
                let dec = Decapsulator::new(config, fib, stats.clone());
                let stats2 = stats.clone();
                threads.extend(spawn_thread(
                    "overlayd-dp",
                    &done_tx,
                    &stop_rx,
                    move || async move {
                        let (tun, udp) = register(tun_fd, udp_std)?;
                        let mut tx = TxPath::new(&udp, vnet, enc, fib_rx.clone(), stats2.clone());
                        tx.router = Some(router_rx);
                        let rx = RxPath::new(&udp, vnet, dec, fib_rx, stats2)?;
                        run_worker(tun, udp, tx, rx).await
                    },
                ));
            }
        }
        (
            DataplaneDriver {
                threads,
                done,
                stop,
            },
            DataplaneHandle {
                stats,
                fib: fib_tx,
                router: router_tx,
            },
        )
    }

    /// Waits until the worker fails (it only returns on a fatal TUN or socket error).
    pub async fn wait(&mut self) -> Result<(), Error> {
        self.done.recv().await.unwrap_or(Ok(()))
    }

    /// Stops the worker and waits for it; the TUN and socket fds close with it.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Takes the fds out of the caller's runtime for the worker thread to register.
fn split_fds(tun: AsyncDevice, udp: UdpSocket) -> io::Result<(OwnedFd, std::net::UdpSocket)> {
    let raw = tun.into_fd()?;
    // SAFETY: into_fd hands over the open TUN fd; nothing else owns or closes it.
    let tun = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok((tun, udp.into_std()?))
}

/// Registers a thread's fds with its runtime.
fn register(tun: OwnedFd, udp: std::net::UdpSocket) -> Result<(TunQueue, UdpSocket), Error> {
    let tun = TunQueue::new(tun).map_err(|source| Error::Io {
        what: "registering the TUN device",
        source,
    })?;
    let udp = UdpSocket::from_std(udp).map_err(|source| Error::Io {
        what: "registering the VXLAN socket",
        source,
    })?;
    Ok((tun, udp))
}

/// Runs the future `make` builds on a new thread with a current-thread runtime until
/// it ends or `stop` turns true; its result (or panic) is sent on `done`.
fn spawn_thread<F, Fut>(
    name: &'static str,
    done: &mpsc::UnboundedSender<Result<(), Error>>,
    stop: &watch::Receiver<bool>,
    make: F,
) -> Option<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let (done, mut stop) = (done.clone(), stop.clone());
    let done2 = done.clone();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let run = std::panic::AssertUnwindSafe(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| Error::Io {
                        what: "starting a dataplane runtime",
                        source,
                    })?;
                rt.block_on(async move {
                    tokio::select! {
                        r = make() => r,
                        _ = stop.wait_for(|s| *s) => Ok(()),
                    }
                })
            });
            let result = std::panic::catch_unwind(run).unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(Error::Host(format!(
                    "dataplane thread {name} panicked: {msg}"
                )))
            });
            let _ = done.send(result);
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(source) => {
            let _ = done2.send(Err(Error::Io {
                what: "starting a dataplane thread",
                source,
            }));
            None
        }
    }
}

fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// TUN buffers filled per round of the outbound path before it sends.
const TX_BUFS: usize = 16;
/// Header slots of the outbound batch (segmented datagrams).
const TX_SLOTS: usize = 2048;
/// Receive buffers per `recvmmsg`; each holds up to 64 GRO-merged datagrams.
const RX_BUFS: usize = 16;
/// Size of one receive buffer.
const RX_BUF_LEN: usize = 96 * 1024;
/// Both directions on one thread: waits until the TUN or the socket is readable, then
/// alternates non-blocking rounds of each until neither has anything queued. (Polling
/// on for a while before sleeping, to catch replies without a wake-up, made RTT worse
/// on a loaded 2-vCPU host: the spinning thread takes the CPU the reply needs.)
async fn run_worker(
    tun: TunQueue,
    udp: UdpSocket,
    mut tx: TxPath,
    mut rx: RxPath,
) -> Result<(), Error> {
    loop {
        tokio::select! {
            biased;
            r = tun.readable() => r.map_err(|source| Error::Io { what: "waiting on the TUN device", source })?,
            r = udp.readable() => r.map_err(|source| Error::Io { what: "waiting on the VXLAN socket", source })?,
        }
        loop {
            let handled = tx.round(&tun, &udp).await? + rx.round(&tun, &udp).await?;
            if handled == 0 {
                break;
            }
        }
    }
}

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
    router: Option<watch::Receiver<Option<std::net::IpAddr>>>,
    icmp_limit: RateLimit,
    icmp_buf: Vec<u8>,
}

/// ICMP unreachable replies per second at most.
const ICMP_RATE: u32 = 100;

impl TxPath {
    fn new(
        udp: &UdpSocket,
        vnet: bool,
        enc: Encapsulator,
        fib: watch::Receiver<Arc<Fib>>,
        stats: Arc<Stats>,
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
            sender: UdpSender::new(udp),
            router: None,
            icmp_limit: RateLimit::new(ICMP_RATE),
            icmp_buf: vec![0u8; offload::VNET_HDR_LEN + icmp::MAX_REPLY],
        }
    }

    /// One batch; returns the number of TUN reads (0: nothing was queued).
    async fn round(&mut self, tun: &TunQueue, udp: &UdpSocket) -> Result<usize, Error> {
        let off = if self.vnet {
            HEADROOM - offload::VNET_HDR_LEN
        } else {
            HEADROOM
        };
        let tun_err = |source| Error::Io {
            what: "reading the TUN device",
            source,
        };
        if self.fib.has_changed().unwrap_or(false) {
            self.enc.set_fib(self.fib.borrow_and_update().clone());
        }
        self.batch.clear();
        let mut k = 0;
        while k < TX_BUFS && self.batch.free_slots() >= offload::MAX_SEGMENTS_PER_PACKET {
            let n = match tun.try_recv(&mut self.bufs[k][off..]) {
                Ok(n) => n,
                Err(e) if is_would_block(&e) => break,
                Err(e) => return Err(tun_err(e)),
            };
            let buf = &mut self.bufs[k];
            let (result, len) = if self.vnet {
                if n < offload::VNET_HDR_LEN {
                    self.stats.tx.drop(DropReason::MalformedOutbound);
                    (Ok(()), 0)
                } else {
                    let len = n - offload::VNET_HDR_LEN;
                    let r = self
                        .enc
                        .encapsulate_vnet(buf, len, k as u32, &mut self.batch);
                    (r.map(|_| ()), len)
                }
            } else {
                match self.enc.encapsulate(buf, n) {
                    Ok(tx) => {
                        self.batch.push_in_place(tx.dst, k as u32, tx.len);
                        (Ok(()), n)
                    }
                    Err(e) => (Err(e), n),
                }
            };
            if let Err(reason @ (DropReason::UnknownSubnet | DropReason::PeerDead)) = result {
                self.reply_unreachable(tun, k, len, reason).await;
            }
            k += 1;
        }
        if k > 0 {
            send_batch(udp, &mut self.sender, &self.batch, &self.bufs, &self.stats).await;
            self.stats.tx.record_batch(self.batch.datagrams().len());
        }
        Ok(k)
    }
}

impl TxPath {
    /// Tells the sender of the packet in buffer `k` that its destination cannot be
    /// reached (ICMP destination unreachable, from the node's gateway), at most
    /// [`ICMP_RATE`] times a second. Best effort: a full TUN queue drops the reply.
    async fn reply_unreachable(
        &mut self,
        tun: &TunQueue,
        k: usize,
        len: usize,
        reason: DropReason,
    ) {
        let Some(router) = self.router.as_ref().and_then(|r| *r.borrow()) else {
            return;
        };
        if !self.icmp_limit.allow(std::time::Instant::now()) {
            return;
        }
        let why = match reason {
            DropReason::PeerDead => Unreachable::PeerDead,
            _ => Unreachable::NoRoute,
        };
        let Some(packet) = self.bufs[k].get(HEADROOM..HEADROOM + len) else {
            return;
        };
        let head = if self.vnet { offload::VNET_HDR_LEN } else { 0 };
        // With offloads every TUN write starts with a virtio-net header; all zero
        // means "no GSO, checksum complete".
        self.icmp_buf[..head].fill(0);
        let Some(n) = icmp::unreachable(packet, why, router, &mut self.icmp_buf[head..]) else {
            return;
        };
        let _ = tun
            .send_vectored(&[IoSlice::new(&self.icmp_buf[..head + n])])
            .await;
    }
}

/// Sends every datagram of `batch` in GSO runs; failures are counted as drops.
async fn send_batch(
    udp: &UdpSocket,
    sender: &mut UdpSender,
    batch: &TxBatch,
    bufs: &[Vec<u8>],
    stats: &Stats,
) {
    for g in batch.groups(sender.max_segments()) {
        let datagrams = &batch.datagrams()[g.range.clone()];
        let mut iov = [IoSlice::new(&[]); 2 * offload::MAX_GSO_SEGMENTS];
        let mut parts = [0u8; offload::MAX_GSO_SEGMENTS];
        let mut n = 0;
        for (i, d) in datagrams.iter().enumerate() {
            let body = &bufs[d.buf as usize][d.body.start as usize..d.body.end as usize];
            match d.head {
                Head::InPlace => {
                    iov[n] = IoSlice::new(body);
                    n += 1;
                    parts[i] = 1;
                }
                Head::Slot(s) => {
                    iov[n] = IoSlice::new(batch.slot(s, d.head_len));
                    iov[n + 1] = IoSlice::new(body);
                    n += 2;
                    parts[i] = 2;
                }
            }
        }
        let gather = Gather {
            iov: &iov[..n],
            parts: &parts[..datagrams.len()],
        };
        if let Err(e) = sender.send(udp, g.dst, g.segment_size, gather).await {
            for _ in datagrams {
                stats.tx.drop(DropReason::IoError);
            }
            tracing::trace!(error = %e, dst = %g.dst, "send failed");
        }
    }
}

/// Peers → TUN: receives up to [`RX_BUFS`] GRO-merged buffers per `recvmmsg`,
/// decapsulates every datagram, merges TCP segments and writes the result.
struct RxPath {
    vnet: bool,
    dec: Decapsulator,
    fib: watch::Receiver<Arc<Fib>>,
    stats: Arc<Stats>,
    state: UdpSocketState,
    bufs: Vec<u8>,
    metas: [RecvMeta; RX_BUFS],
    coalescer: Coalescer,
}

impl RxPath {
    fn new(
        udp: &UdpSocket,
        vnet: bool,
        dec: Decapsulator,
        fib: watch::Receiver<Arc<Fib>>,
        stats: Arc<Stats>,
    ) -> Result<RxPath, Error> {
        let state = UdpSocketState::new(udp.into()).map_err(|source| Error::Io {
            what: "setting up the VXLAN socket for batch receive",
            source,
        })?;
        let gro = state.gro_segments() > 1;
        tracing::info!(
            udp_gro = gro,
            tun_coalescing = vnet,
            "VXLAN socket: recvmmsg receive path{}; TUN writes {}",
            if gro { " with UDP GRO" } else { "" },
            if vnet {
                "coalesce TCP segments (IFF_VNET_HDR)"
            } else {
                "one packet each"
            }
        );
        Ok(RxPath {
            vnet,
            dec,
            fib,
            stats,
            state,
            bufs: vec![0u8; RX_BUFS * RX_BUF_LEN],
            metas: [RecvMeta::default(); RX_BUFS],
            coalescer: Coalescer::new(vnet),
        })
    }

    /// One `recvmmsg` and its TUN writes; returns the datagrams handled.
    async fn round(&mut self, tun: &TunQueue, udp: &UdpSocket) -> Result<usize, Error> {
        let received = {
            let (bufs, metas, state) = (&mut self.bufs, &mut self.metas, &self.state);
            udp.try_io(Interest::READABLE, || {
                let mut chunks = bufs.chunks_mut(RX_BUF_LEN);
                let mut iovs: [IoSliceMut<'_>; RX_BUFS] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                state.recv(udp.into(), &mut iovs, metas)
            })
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
        self.coalescer.finish();
        for w in self.coalescer.writes() {
            let written = match w {
                TunWrite::Single { range, .. } => {
                    let (start, end) = (range.start as usize, range.end as usize);
                    let packet = if self.vnet {
                        let s = start - offload::VNET_HDR_LEN;
                        bufs[s..start].fill(0);
                        &bufs[s..end]
                    } else {
                        &bufs[start..end]
                    };
                    tun.send_vectored(&[IoSlice::new(packet)]).await
                }
                TunWrite::Coalesced { head, pieces } => {
                    let mut iov = [IoSlice::new(&[]); offload::MAX_COALESCE + 1];
                    iov[0] = IoSlice::new(head);
                    for (slot, p) in iov[1..].iter_mut().zip(pieces) {
                        *slot = IoSlice::new(&bufs[p.range.start as usize..p.range.end as usize]);
                    }
                    tun.send_vectored(&iov[..pieces.len() + 1]).await
                }
            };
            if written.is_err() {
                self.stats.rx.drop(DropReason::IoError);
            }
        }
        self.stats.rx.record_batch(handled);
        Ok(handled.max(1))
    }
}

fn is_transient(e: &io::Error) -> bool {
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
