//! The operations layer: what an operator asks a running node and what it answers.
//!
//! Nothing here carries a packet or decides a lease; it reads the daemon's live state
//! and turns it into reports, checks and metrics.
//!
//! - [`live`]: the daemon's live state that status, diagnose and metrics read.
//! - [`admin`]: the admin socket (typed requests and replies) and its client.
//! - [`status`]: the status report and its text.
//! - [`diagnose`]: `overlayd diagnose POD_IP`, facts on the way to a pod gathered, then
//!   judged by a pure function.
//! - [`metrics`]: Prometheus metrics and `/healthz`.

pub mod admin;
pub mod diagnose;
pub(crate) mod live;
pub(crate) mod metrics;
pub mod status;
