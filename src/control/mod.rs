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
pub mod controller;
pub mod driver;
pub mod error;
pub mod founding;
pub mod lease;
pub mod membership;
pub mod message;
pub mod meta;
pub mod report;
pub mod sim;
pub mod subnet;
pub mod transport;

pub use auth::{Authenticator, KeySet, Reject, RejectCounters};
pub use controller::{
    cluster_fingerprint, Controller, ControllerConfig, Event, REJECT_LOG_BUDGET,
    REJECT_LOG_INTERVAL, SEEDS_SILENT_AFTER,
};
pub use error::Error;
pub use founding::{Founder, FoundingState, FoundingWait, InitialSet};
pub use lease::{Lease, LeaseConfig, LeaseEvent, LeaseState, STATE_FORMAT};
pub use membership::{KnownMember, MemberState, Membership, MembershipConfig, MembershipEvent};
pub use message::{Datagram, LeaseDatagram, LeaseMsg, WireError};
pub use meta::{NodeMeta, WgIdentity};
pub use report::{GossipTraffic, LeaseWait, MemberReport, PeerInfo, Status, VersionRefusal};
pub use subnet::{subnet_count, subnet_of, SecondCidr};
