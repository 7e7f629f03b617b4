//! The kernel dataplane: a Linux `vxlan` device that the daemon programs over
//! rtnetlink, as flannel's vxlan backend does, with an nftables filter in front of
//! it that does what the userspace dataplane's `unknown_sender` and
//! `spoofed_source` checks do. The kernel moves the packets; overlayd keeps the
//! entries, the filter and the counters in step with membership.
//!
//! - [`plan`]: the neighbour, FDB and route entries for a forwarding table, and the
//!   changes from what the kernel has (sans-IO).
//! - [`ruleset`]: the nftables ruleset as `nft -f` text and its counters (sans-IO).
//! - [`nft`]: runs the `nft` binary.
//! - [`driver`]: the task that follows the feeds and copies the counters.
//!
//! The rtnetlink requests (the vxlan device and its entries) are in
//! [`crate::dataplane::netlink`].

pub(crate) mod driver;
pub(crate) mod nft;
pub(crate) mod plan;
pub(crate) mod ruleset;

pub(crate) use crate::dataplane::netlink::VxlanSpec;
pub(crate) use driver::{KernelConfig, KernelDriver};
