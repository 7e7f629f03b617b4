//! The harnesses behind overlayd's cargo-fuzz targets, one function per target.
//!
//! Each function takes the fuzzer's bytes, runs them through the library the way the
//! daemon or the CNI plugin would, and panics when an invariant breaks. The same
//! files are compiled into `tests/fuzz_corpus.rs` (daemon) and `cni/tests/fuzz_corpus.rs`
//! (plugin) with `#[path]`, so `cargo test` replays every committed corpus file
//! through exactly this code without cargo-fuzz or nightly, with the loop in
//! [`replay`].

pub mod cni;
pub mod dataplane;
pub mod gossip;
pub mod records;
pub mod replay;
pub mod wg;
