//! Dataplane: VXLAN encapsulation between the node's TUN device and its peers.
//!
//! - [`wire`]: typed views over VXLAN, Ethernet and IP headers.
//! - [`fib`]: which peer owns a destination; which peer a sender is.
//! - [`encap`]: the sans-IO core, encap and decap in caller buffers.
//! - [`batch`]: the transmit batch and its grouping into UDP GSO runs (sans-IO).
//! - [`offload`]: the virtio-net header, TSO/USO segmentation and GRO coalescing for
//!   a TUN with `IFF_VNET_HDR` (sans-IO).
//! - [`icmp`]: ICMP unreachable replies for undeliverable packets, rate-limited on
//!   the caller's clock (sans-IO).
//! - [`flow`]: the inner flow hash that picks the outer UDP source port (sans-IO).
//! - [`stats`]: counters by direction, peer and drop reason.
//! - [`mode`]: which dataplane runs ([`DataplaneMode`]) and why.
//! - [`handle`]: [`DataplaneHandle`], the one front end of either dataplane.
//! - [`driver`]: the userspace worker threads that own the TUN queues and the UDP
//!   sockets.
//! - [`kernel`]: the kernel dataplane: a vxlan device the daemon programs, with an
//!   nftables filter.
//! - [`threads`]: the workers' threads, stop signal and round loop, shared by both
//!   userspace dataplanes.
//! - [`tun`]: the TUN device and its queue fds.
//! - [`udp`]: the VXLAN sockets; GSO/`sendmmsg` send and GRO/`recvmmsg` receive.
//! - [`netlink`]: bridge, addresses and routes (Linux only).
//! - [`wg`]: the encrypted dataplane (WireGuard in the userspace workers).
//! - [`worker`]: the packet loop both userspace dataplanes' workers share.
//!
//! Every `unsafe` block here says why it is sound in a `// SAFETY:` comment.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod batch;
// The direct-routing decisions (docs/direct-routing.md): the core is built and
// tested; the daemon does not drive it yet (issue 27's next part).
#[allow(dead_code)]
pub(crate) mod direct;
pub(crate) mod driver;
pub(crate) mod encap;
pub(crate) mod error;
pub(crate) mod fib;
pub mod flow;
pub(crate) mod handle;
pub(crate) mod icmp;
pub(crate) mod kernel;
pub(crate) mod mode;
pub(crate) mod netlink;
pub mod offload;
pub mod stats;
pub(crate) mod threads;
pub(crate) mod tun;
pub(crate) mod udp;
pub mod wg;
pub mod wire;
pub(crate) mod worker;

// The benches and fuzz targets run the packet path's cores with these.
pub use encap::{Decapsulator, EncapConfig, Encapsulator, HEADROOM};
pub use fib::{gateway_of, Fib, Peer, PeerOrigin, PeerState};
pub use stats::{DropReason, Stats};

pub(crate) use error::Error;
pub(crate) use handle::DataplaneHandle;
pub(crate) use mode::{DataplaneMode, PathInfo};
