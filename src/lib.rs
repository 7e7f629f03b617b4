//! overlayd: a container overlay network.
//!
//! One daemon per host owns the node bridge and carries pod packets that leave the
//! node to the peer that owns the destination subnet, as VXLAN ([RFC 7348]). Three
//! dataplanes sit behind one handle ([`dataplane::DataplaneHandle`]), fed by the same
//! peer table: the kernel one (the default where the kernel can: a `vxlan` device the
//! daemon programs, with an nftables filter), the userspace one (a TUN device read and
//! written by worker threads that wrap and unwrap VXLAN), and the encrypted one
//! (`--encrypt`: the userspace one with each VXLAN datagram sealed in WireGuard).
//!
//! # Layout
//! - [`dataplane`]: VXLAN wire views, the sans-IO encap/decap core, FIB, offload
//!   (TSO split, TCP and UDP coalescing) and flow hash; the userspace driver (one
//!   worker thread per core, each with its own TUN queue and VXLAN socket), the
//!   kernel dataplane (`dataplane::kernel`) and the encrypted one (`dataplane::wg`).
//! - [`control`]: gossip membership and per-node subnet leases.
//! - [`config`]: the daemon's flags, parsed and checked.
//! - [`daemon`]: `run(config, shutdown)`, which the binary calls, in named phases;
//!   host devices, the peer table, the control plane, capabilities, `--install-cni`
//!   and `node.json` in its submodules.
//! - [`ops`]: the operations layer: live state, the admin socket, status, diagnose
//!   and metrics.
//! - [`pods`]: `overlayd pods` and when a gone pod's addresses are reclaimed.
//! - [`fsutil`]: atomic writes of state files.
//!
//! "Node" means one host running overlayd: [`daemon::node`], [`ops::status::NodeReport`],
//! [`control::NodeMeta`] (what a node publishes). The control plane's state machine
//! is [`control::Controller`].
//!
//! [RFC 7348]: https://www.rfc-editor.org/rfc/rfc7348
#![warn(missing_docs)]
#![warn(unreachable_pub)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub(crate) mod fsutil;
pub mod ops;
pub mod pods;
