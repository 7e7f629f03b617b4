//! The I/O boundary of the control driver: a datagram [`Transport`] with a UDP
//! implementation and an in-memory one ([`ChannelNetwork`]) for tests, in the manner
//! of chitchat's `Transport`/`ChannelTransport`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// A datagram socket. `recv_from` must be cancel-safe: the driver polls it in `select!`.
pub trait Transport: Send + 'static {
    /// The address peers reach us on.
    fn local_addr(&self) -> SocketAddr;
    /// Sends one datagram.
    fn send_to(&self, data: &[u8], to: SocketAddr) -> impl Future<Output = io::Result<()>> + Send;
    /// Receives one datagram into `buf`, returning its length and sender. A datagram
    /// longer than `buf` is truncated (the caller then sees an oversized datagram).
    fn recv_from(
        &mut self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
}

/// The gossip UDP socket.
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
    local: SocketAddr,
}

impl UdpTransport {
    /// Binds the gossip socket.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        let local = socket.local_addr()?;
        Ok(UdpTransport { socket, local })
    }
}

impl Transport for UdpTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        self.socket.send_to(data, to).await.map(|_| ())
    }

    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }
}

/// A datagram in flight on a [`ChannelNetwork`].
#[derive(Debug)]
struct InFlight {
    from: SocketAddr,
    data: Vec<u8>,
}

/// One direction of a link between two addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Link {
    from: SocketAddr,
    to: SocketAddr,
}

type Inbox = mpsc::UnboundedSender<InFlight>;

#[derive(Debug, Default)]
struct Hub {
    inboxes: HashMap<SocketAddr, Inbox>,
    cut: HashSet<Link>,
}

/// An in-memory network: transports bound on it exchange datagrams through channels,
/// and links between two addresses can be cut and restored.
#[derive(Debug, Clone, Default)]
pub struct ChannelNetwork {
    hub: Arc<Mutex<Hub>>,
}

impl ChannelNetwork {
    /// A new, empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds a transport at `addr`.
    pub fn bind(&self, addr: SocketAddr) -> ChannelTransport {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut hub) = self.hub.lock() {
            hub.inboxes.insert(addr, tx);
        }
        ChannelTransport {
            net: self.clone(),
            local: addr,
            rx,
        }
    }

    /// Drops datagrams between `a` and `b` in both directions.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        if let Ok(mut hub) = self.hub.lock() {
            hub.cut.insert(Link { from: a, to: b });
            hub.cut.insert(Link { from: b, to: a });
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        if let Ok(mut hub) = self.hub.lock() {
            hub.cut.clear();
        }
    }
}

/// A transport on a [`ChannelNetwork`].
#[derive(Debug)]
pub struct ChannelTransport {
    net: ChannelNetwork,
    local: SocketAddr,
    rx: mpsc::UnboundedReceiver<InFlight>,
}

impl Transport for ChannelTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        let hub = self
            .net
            .hub
            .lock()
            .map_err(|_| io::Error::other("channel network poisoned"))?;
        let link = Link {
            from: self.local,
            to,
        };
        if hub.cut.contains(&link) {
            return Ok(());
        }
        if let Some(tx) = hub.inboxes.get(&to) {
            let _ = tx.send(InFlight {
                from: self.local,
                data: data.to_vec(),
            });
        }
        Ok(())
    }

    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let InFlight { from, data } = self
            .rx
            .recv()
            .await
            .ok_or_else(|| io::Error::other("channel network closed"))?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok((n, from))
    }
}
