//! The I/O boundary of the control driver: a datagram [`Transport`] with a UDP
//! implementation and an in-memory one (`channel::ChannelNetwork`) for tests, in the manner
//! of chitchat's `Transport`/`ChannelTransport`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// A datagram socket. `recv_from` must be cancel-safe: the driver polls it in `select!`.
pub(crate) trait Transport: Send + 'static {
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
pub(crate) struct UdpTransport {
    socket: UdpSocket,
    local: SocketAddr,
}

impl UdpTransport {
    /// Binds the gossip socket.
    pub(crate) async fn bind(addr: SocketAddr) -> io::Result<Self> {
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

/// The in-memory transport of the driver's tests.
#[cfg(test)]
pub(crate) mod channel {
    use std::collections::HashMap;
    use std::io;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use tokio::sync::mpsc;

    use super::Transport;

    /// A datagram in flight on a [`ChannelNetwork`].
    #[derive(Debug)]
    struct InFlight {
        from: SocketAddr,
        data: Vec<u8>,
    }

    type Inbox = mpsc::UnboundedSender<InFlight>;

    #[derive(Debug, Default)]
    struct Hub {
        inboxes: HashMap<SocketAddr, Inbox>,
    }

    /// An in-memory network: transports bound on it exchange datagrams through channels.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct ChannelNetwork {
        hub: Arc<Mutex<Hub>>,
    }

    impl ChannelNetwork {
        /// A new, empty network.
        pub(crate) fn new() -> Self {
            Self::default()
        }

        /// Binds a transport at `addr`.
        pub(crate) fn bind(&self, addr: SocketAddr) -> ChannelTransport {
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
    }

    /// A transport on a [`ChannelNetwork`].
    #[derive(Debug)]
    pub(crate) struct ChannelTransport {
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
}
