//! The encrypted dataplane (`--encrypt`): pod traffic between nodes as WireGuard
//! transport messages, sealed and opened in the userspace workers, with the same
//! TUN, offloads and per-core workers as the VXLAN path.
//!
//! - [`key`]: the node's X25519 key pair in the state dir, and base64 keys.
//! - [`tunnels`]: one boringtun tunnel per peer, kept across forwarding-table
//!   changes, its timers, and the lookups of the packet path.
//! - [`path`]: the packet path over caller buffers: route and seal outbound, check
//!   and open inbound, answer handshakes; cryptokey routing.
//! - [`driver`]: the worker threads and the timer thread that own the fds.
//!
//! The protocol and its crypto are boringtun's; nothing here is a cipher or a
//! protocol of our own (`docs/encryption.md`).

pub(crate) mod driver;
pub mod key;
pub mod path;
pub mod tunnels;

pub use driver::{WgControl, WgDriver};

/// Encapsulation overhead on an IPv4 underlay: outer IPv4 (20), UDP (8) and the
/// WireGuard data header and tag (32). The overlay MTU is the underlay MTU less this.
pub(crate) const WG_OVERHEAD_V4: u32 = 20 + 8 + tunnels::DATA_OVERHEAD as u32;
/// The same on an IPv6 underlay (outer IPv6 header of 40 bytes).
pub(crate) const WG_OVERHEAD_V6: u32 = 40 + 8 + tunnels::DATA_OVERHEAD as u32;

#[cfg(test)]
pub(crate) mod tests;
