//! Dataplane: VXLAN encapsulation between the node's TUN device and its peers.
//!
//! - [`wire`]: typed views over VXLAN, Ethernet and IP headers.
//! - [`fib`]: which peer owns a destination; which peer a sender is.
//! - [`encap`]: the sans-IO core, encap and decap in caller buffers.
//! - [`offload`]: TSO segmentation and TCP coalescing for an offloading TUN (sans-IO).
//! - [`stats`]: counters by direction, peer and drop reason.
//! - [`driver`]: the tokio tasks that own the TUN and the UDP socket.
//! - [`tun`]: a TUN queue fd on the runtime of the thread that uses it.
//! - [`udp`]: GSO/`sendmmsg` send and GRO/`recvmmsg` receive on the VXLAN socket.
//! - [`netlink`]: bridge, addresses and routes (Linux only).

pub mod driver;
pub mod encap;
pub mod error;
pub mod fib;
pub mod icmp;
pub mod netlink;
pub mod offload;
pub mod stats;
pub mod tun;
pub mod udp;
pub mod wire;

pub use encap::{Decapsulator, EncapConfig, Encapsulator, Transmit, HEADROOM};
pub use error::Error;
pub use fib::{Fib, Peer, PeerOrigin, PeerState};
pub use stats::{DropReason, Stats};
