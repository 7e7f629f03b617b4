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
use std::sync::Arc;

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tun_rs::AsyncDevice;

use super::encap::{Decapsulator, EncapConfig, Encapsulator, HEADROOM};
use super::error::Error;
use super::fib::Fib;
use super::offload::{self, Coalescer, Head, TunWrite, TxBatch};
use super::stats::{DropReason, Stats};
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

    /// The forwarding table in use.
    pub fn fib(&self) -> Arc<Fib> {
        self.fib.borrow().clone()
    }
}

/// Owns the dataplane's two tasks.
pub struct DataplaneDriver {
    tasks: JoinSet<Result<(), Error>>,
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
        let tun = Arc::new(tun);
        let udp = Arc::new(udp);
        let mut tasks = JoinSet::new();
        let enc = Encapsulator::new(config, fib.clone(), stats.clone());
        tasks.spawn(run_tx(
            tun.clone(),
            udp.clone(),
            enc,
            fib_rx.clone(),
            stats.clone(),
        ));
        let dec = Decapsulator::new(config, fib, stats.clone());
        tasks.spawn(run_rx(tun, udp, dec, fib_rx, stats.clone()));
        (
            DataplaneDriver { tasks },
            DataplaneHandle { stats, fib: fib_tx },
        )
    }

    /// Waits until a task fails (it only returns on a fatal TUN or socket error).
    pub async fn wait(&mut self) -> Result<(), Error> {
        match self.tasks.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(join)) => Err(Error::Host(format!("dataplane task ended: {join}"))),
            None => Ok(()),
        }
    }

    /// Stops both tasks.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// TUN buffers filled per wake-up of the outbound task before it sends.
const TX_BUFS: usize = 16;
/// Header slots of the outbound batch (segmented datagrams).
const TX_SLOTS: usize = 2048;
/// Receive buffers per `recvmmsg`; each holds up to 64 GRO-merged datagrams.
const RX_BUFS: usize = 16;
/// Size of one receive buffer.
const RX_BUF_LEN: usize = 96 * 1024;

/// TUN → peers: reads up to [`TX_BUFS`] packets (super-packets with offloads), splits
/// and encapsulates them into one [`TxBatch`], then sends it in GSO runs.
async fn run_tx(
    tun: Arc<AsyncDevice>,
    udp: Arc<UdpSocket>,
    mut enc: Encapsulator,
    mut fib: watch::Receiver<Arc<Fib>>,
    stats: Arc<Stats>,
) -> Result<(), Error> {
    let vnet = tun.tcp_gso();
    let mut bufs: Vec<Vec<u8>> = (0..TX_BUFS)
        .map(|_| vec![0u8; HEADROOM + MAX_PACKET])
        .collect();
    let mut batch = TxBatch::new(TX_SLOTS);
    let mut sender = UdpSender::new(&udp);
    let off = if vnet {
        HEADROOM - offload::VNET_HDR_LEN
    } else {
        HEADROOM
    };
    let tun_err = |source| Error::Io {
        what: "reading the TUN device",
        source,
    };
    loop {
        let n = tun.recv(&mut bufs[0][off..]).await.map_err(tun_err)?;
        if fib.has_changed().unwrap_or(false) {
            enc.set_fib(fib.borrow_and_update().clone());
        }
        batch.clear();
        let mut next = Some(n);
        let mut k = 0;
        while let Some(n) = next {
            let buf = &mut bufs[k];
            if vnet {
                if n < offload::VNET_HDR_LEN {
                    stats.tx.drop(DropReason::MalformedOutbound);
                } else {
                    let _ =
                        enc.encapsulate_vnet(buf, n - offload::VNET_HDR_LEN, k as u32, &mut batch);
                }
            } else if let Ok(tx) = enc.encapsulate(buf, n) {
                batch.push_in_place(tx.dst, k as u32, tx.len);
            }
            k += 1;
            next = None;
            if k < TX_BUFS && batch.free_slots() >= offload::MAX_SEGMENTS_PER_PACKET {
                match tun.try_recv(&mut bufs[k][off..]) {
                    Ok(n) => next = Some(n),
                    Err(e) if is_would_block(&e) => {}
                    Err(e) => return Err(tun_err(e)),
                }
            }
        }
        send_batch(&udp, &mut sender, &batch, &bufs, &stats).await;
        stats.tx.record_batch(batch.datagrams().len());
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
async fn run_rx(
    tun: Arc<AsyncDevice>,
    udp: Arc<UdpSocket>,
    mut dec: Decapsulator,
    mut fib: watch::Receiver<Arc<Fib>>,
    stats: Arc<Stats>,
) -> Result<(), Error> {
    let vnet = tun.tcp_gso();
    let state = UdpSocketState::new((&*udp).into()).map_err(|source| Error::Io {
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
    let mut bufs = vec![0u8; RX_BUFS * RX_BUF_LEN];
    let mut metas = [RecvMeta::default(); RX_BUFS];
    let mut coalescer = Coalescer::new(vnet);
    let recv_err = |source| Error::Io {
        what: "receiving on the VXLAN socket",
        source,
    };
    loop {
        let received = udp.try_io(Interest::READABLE, || {
            let mut chunks = bufs.chunks_mut(RX_BUF_LEN);
            let mut iovs: [IoSliceMut<'_>; RX_BUFS] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            state.recv((&*udp).into(), &mut iovs, &mut metas)
        });
        let n = match received {
            Ok(n) => n,
            Err(e) if is_would_block(&e) => {
                udp.readable().await.map_err(recv_err)?;
                continue;
            }
            // ICMP errors reported on the socket (a peer's port unreachable) are not fatal.
            Err(e) if is_transient(&e) => continue,
            Err(source) => return Err(recv_err(source)),
        };
        if fib.has_changed().unwrap_or(false) {
            dec.set_fib(fib.borrow_and_update().clone());
        }
        coalescer.clear();
        let mut handled = 0;
        for (i, meta) in metas[..n].iter().enumerate() {
            let base = i * RX_BUF_LEN;
            let len = meta.len.min(RX_BUF_LEN);
            let stride = if meta.stride == 0 { len } else { meta.stride };
            let mut at = 0;
            while at < len {
                let end = (at + stride).min(len);
                let datagram = &bufs[base + at..base + end];
                if let Ok(r) = dec.decapsulate(meta.addr.ip(), datagram) {
                    let range = base + at + r.start..base + at + r.end;
                    coalescer.push(0, range.clone(), &bufs[range]);
                }
                handled += 1;
                at = end;
            }
        }
        coalescer.finish();
        for w in coalescer.writes() {
            let written = match w {
                TunWrite::Single { range, .. } => {
                    let (start, end) = (range.start as usize, range.end as usize);
                    let packet = if vnet {
                        let s = start - offload::VNET_HDR_LEN;
                        bufs[s..start].fill(0);
                        &bufs[s..end]
                    } else {
                        &bufs[start..end]
                    };
                    match tun.try_send(packet) {
                        Err(e) if is_would_block(&e) => tun.send(packet).await,
                        other => other,
                    }
                }
                TunWrite::Coalesced { head, pieces } => {
                    let mut iov = [IoSlice::new(&[]); offload::MAX_COALESCE + 1];
                    iov[0] = IoSlice::new(head);
                    for (slot, p) in iov[1..].iter_mut().zip(pieces) {
                        *slot = IoSlice::new(&bufs[p.range.start as usize..p.range.end as usize]);
                    }
                    let iov = &iov[..pieces.len() + 1];
                    match tun.try_send_vectored(iov) {
                        Err(e) if is_would_block(&e) => tun.send_vectored(iov).await,
                        other => other,
                    }
                }
            };
            if written.is_err() {
                stats.rx.drop(DropReason::IoError);
            }
        }
        stats.rx.record_batch(handled);
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
