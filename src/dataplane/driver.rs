//! The dataplane's tokio driver: it owns the TUN device and the VXLAN UDP socket and
//! moves packets between them through the sans-IO [`Encapsulator`] and
//! [`Decapsulator`]. It makes no forwarding decision of its own.
//!
//! Two tasks, one per direction, each with its own buffer and core, so the directions
//! share no lock. After each wake-up a task drains up to [`BATCH`] packets before it
//! waits again. Forwarding-table updates arrive on a `watch` channel and are picked up
//! between packets. Send and write errors are counted as drops; only a failure to read
//! the TUN or the socket ends a task.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tun_rs::AsyncDevice;

use super::encap::{Decapsulator, EncapConfig, Encapsulator, HEADROOM};
use super::error::Error;
use super::fib::Fib;
use super::stats::{DropReason, Stats};

/// Packets a task handles per wake-up before it yields.
pub const BATCH: usize = 64;
/// Largest IP packet the TUN can hand us.
const MAX_PACKET: usize = 65_535;
/// Socket buffer size asked of the kernel for the VXLAN socket.
const SOCKET_BUFFER: usize = 4 << 20;

/// Creates the TUN device `name` (no packet-information header), still down, so the
/// caller can finish configuring it before the kernel sends anything through it.
pub fn open_tun(name: &str, mtu: u32) -> Result<AsyncDevice, Error> {
    let mtu16 = u16::try_from(mtu).unwrap_or(u16::MAX);
    tun_rs::DeviceBuilder::new()
        .name(name)
        .mtu(mtu16)
        .enable(false)
        .build_async()
        .map_err(|source| Error::Tun {
            name: name.to_string(),
            source,
        })
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

/// TUN → peers.
async fn run_tx(
    tun: Arc<AsyncDevice>,
    udp: Arc<UdpSocket>,
    mut enc: Encapsulator,
    mut fib: watch::Receiver<Arc<Fib>>,
    stats: Arc<Stats>,
) -> Result<(), Error> {
    let mut buf = vec![0u8; HEADROOM + MAX_PACKET];
    let tun_err = |source| Error::Io {
        what: "reading the TUN device",
        source,
    };
    loop {
        let n = tun.recv(&mut buf[HEADROOM..]).await.map_err(tun_err)?;
        if fib.has_changed().unwrap_or(false) {
            enc.set_fib(fib.borrow_and_update().clone());
        }
        let mut next = Some(n);
        let mut handled = 0;
        while let Some(n) = next {
            if let Ok(tx) = enc.encapsulate(&mut buf, n) {
                if let Err(e) = send(&udp, &buf[..tx.len], tx.dst).await {
                    stats.tx.drop(DropReason::IoError);
                    tracing::trace!(error = %e, dst = %tx.dst, "send failed");
                }
            }
            handled += 1;
            next = None;
            if handled < BATCH {
                match tun.try_recv(&mut buf[HEADROOM..]) {
                    Ok(n) => next = Some(n),
                    Err(e) if is_would_block(&e) => {}
                    Err(e) => return Err(tun_err(e)),
                }
            }
        }
        stats.tx.record_batch(handled);
    }
}

async fn send(udp: &UdpSocket, datagram: &[u8], dst: SocketAddr) -> io::Result<usize> {
    match udp.try_send_to(datagram, dst) {
        Err(e) if is_would_block(&e) => udp.send_to(datagram, dst).await,
        other => other,
    }
}

/// Peers → TUN.
async fn run_rx(
    tun: Arc<AsyncDevice>,
    udp: Arc<UdpSocket>,
    mut dec: Decapsulator,
    mut fib: watch::Receiver<Arc<Fib>>,
    stats: Arc<Stats>,
) -> Result<(), Error> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match udp.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors reported on the socket (a peer's port unreachable) are not fatal.
            Err(e) if is_transient(&e) => continue,
            Err(source) => {
                return Err(Error::Io {
                    what: "receiving on the VXLAN socket",
                    source,
                })
            }
        };
        if fib.has_changed().unwrap_or(false) {
            dec.set_fib(fib.borrow_and_update().clone());
        }
        let mut next = Some((n, from));
        let mut handled = 0;
        while let Some((n, from)) = next {
            if let Ok(range) = dec.decapsulate(from.ip(), &buf[..n]) {
                let packet = &buf[range];
                let written = match tun.try_send(packet) {
                    Err(e) if is_would_block(&e) => tun.send(packet).await,
                    other => other,
                };
                if written.is_err() {
                    stats.rx.drop(DropReason::IoError);
                }
            }
            handled += 1;
            next = None;
            if handled < BATCH {
                match udp.try_recv_from(&mut buf) {
                    Ok(r) => next = Some(r),
                    Err(e) if is_would_block(&e) || is_transient(&e) => {}
                    Err(source) => {
                        return Err(Error::Io {
                            what: "receiving on the VXLAN socket",
                            source,
                        })
                    }
                }
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
