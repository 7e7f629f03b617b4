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
//!   host devices, the peer table and the control plane in its submodules.
//! - [`live`]: the daemon's live state that status, diagnose and metrics read.
//! - [`admin`]: the admin socket (typed requests and replies) and its client.
//! - [`status`]: the status report and its text.
//! - [`diagnose`]: `overlayd diagnose POD_IP`, checks on the way to a pod.
//! - [`pods`]: `overlayd pods` and when a gone pod's addresses are reclaimed.
//! - [`metrics`]: Prometheus metrics and `/healthz`.
//! - [`privilege`]: dropping capabilities at start.
//! - [`fsutil`]: atomic writes of state files.
//! - [`cni_install`]: what `--install-cni` does.
//! - [`node`]: `node.json`, the contract between the daemon and the CNI plugin.
//!
//! "Node" means one host running overlayd: [`node`], [`status::NodeReport`],
//! [`control::NodeMeta`] (what a node publishes). The control plane's state machine
//! is [`control::Controller`].
//!
//! [RFC 7348]: https://www.rfc-editor.org/rfc/rfc7348
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod cni_install;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod diagnose;
pub mod fsutil;
pub mod live;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod privilege;
pub mod status;
