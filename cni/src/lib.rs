//! The overlayd CNI plugin.
//!
//! A container runtime execs `overlayd-cni` with `CNI_*` variables and the network
//! configuration on stdin (see the CNI spec, SPEC.md of containernetworking/cni). The
//! plugin attaches the container to the node bridge the overlayd daemon manages,
//! described by `<runDir>/node.json`.
//!
//! # Layout
//! - [`config`]: stdin parsing and version negotiation.
//! - [`node`]: loads `node.json` (schema: the `overlayd-node-info` crate) and checks it.
//! - [`env`](mod@env): `CNI_*` variables behind the [`env::Env`] trait.
//! - [`result`]: the ADD result and its shape per CNI version.
//! - [`error`]: the one error enum and its CNI codes.
//! - [`ipam`]: built-in address allocation with a locked file store.
//! - [`plugin`]: ADD, DEL, CHECK, GC, STATUS and VERSION; [`plugin::run`] is the entry point.
//! - [`netlink`], [`netns`], [`masq`], [`delegate`], [`log`]: the parts that touch the system.
//! - [`faultpoint`]: where the root-only tests may stall the plugin to kill it mid-ADD.
//!
//! No two modules import each other: [`plugin`] sits on top, [`error`] and [`config`]
//! at the bottom.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod delegate;
pub mod env;
pub mod error;
pub mod faultpoint;
pub mod ipam;
pub mod log;
pub mod masq;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod plugin;
pub mod result;

pub use error::{Error, Result};
pub use plugin::run;
