//! Control plane: gossip membership and per-node subnet leases (sans-IO cores plus
//! one tokio driver).
//!
//! # Layout
//! - [`message`]: datagram framing (magic, version, auth field) and the lease
//!   protocol codec.
//! - [`auth`]: the cluster key: every datagram signed, checked for freshness and
//!   replay before anything parses its body.
//! - [`meta`]: what each node publishes through gossip ([`NodeMeta`]: underlay
//!   address, VNI, VTEP MAC, lease) and foca's codec for it.
//! - [`membership`]: SWIM membership on [foca].
//! - [`lease`]: the subnet lease state machine; its safety argument is in
//!   `docs/leases.md`.
//! - [`offer`]: the direct-routing offers between members and the versions that
//!   carry them (`docs/direct-routing.md`).
//! - [`founding`]: choosing the one founder of a new cluster by agreement
//!   (single-decree Paxos over the initial peers); argued in `docs/founding.md`.
//! - [`controller`]: [`Controller`], both cores behind one `handle_*`/`poll_*`
//!   interface, fed with datagrams and `now`.
//! - [`transport`] and [`driver`]: the only files here that touch sockets and clocks.
//! - [`subnet`]: how the cluster CIDR is numbered; [`report`]: the peers and the
//!   status snapshot the control plane hands out; [`error`]: its error enum.
//! - [`sim`]: a deterministic many-node simulator over [`Controller`].
//!
//! Left out: the FIB itself, which the daemon builds from [`PeerInfo`].
//!
//! This file only declares and re-exports; the modules import each other by their
//! own paths.

pub mod auth;
pub(crate) mod controller;
pub(crate) mod driver;
pub(crate) mod error;
pub(crate) mod founding;
pub(crate) mod lease;
pub(crate) mod membership;
pub mod message;
pub mod meta;
pub(crate) mod offer;
pub(crate) mod report;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub(crate) mod subnet;
pub(crate) mod transport;

// The fuzz targets and the network tests drive a controller with these.
pub use auth::{Authenticator, KeySet};
pub use controller::{Controller, ControllerConfig};
pub use driver::DEFAULT_GOSSIP_PORT;
pub use lease::LeaseConfig;
pub use membership::{MemberState, MembershipConfig};
pub use message::{LeaseDatagram, LeaseMsg};
pub use meta::NodeMeta;

pub(crate) use error::Error;
pub(crate) use lease::STATE_FORMAT;
pub(crate) use meta::WgIdentity;
pub(crate) use report::{LeaseWait, PeerInfo, Status};
pub(crate) use subnet::{subnet_count, subnet_of, SecondCidr};
