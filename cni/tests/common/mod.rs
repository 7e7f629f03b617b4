//! The CNI tests' view of the shared test-support crate (`overlayd-test-support`): its
//! CNI helpers re-exported, plus this package's plugin binary, whose path only this
//! package's own integration tests know.
#![allow(dead_code, unused_imports)]

pub use overlayd_test_support::cni::*;
pub use overlayd_test_support::{load, unique, wait_until, Netns};

/// The plugin binary under test.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_overlayd-cni");

/// A stand-in overlayd host `n` (subnet `10.244.<n>.0/<prefix>`, bridge, node.json)
/// running this package's plugin.
pub fn host(n: u8, prefix: u8) -> CniHost {
    CniHost::new(CniPlugins::new(PLUGIN), n, prefix)
}

/// A host namespace and temp dir only, for a real overlayd daemon to set up.
pub fn bare_host(n: u8, prefix: u8) -> CniHost {
    CniHost::bare(CniPlugins::new(PLUGIN), n, prefix)
}

/// Network `ovl` at `version`: overlayd-cni with `ipMasq`, then the reference loopback,
/// portmap and bandwidth.
pub fn masq_chain<'a>(node: &'a CniHost, version: &str) -> Chain<'a> {
    Chain::with_reference_plugins(
        node,
        version,
        serde_json::json!({"ipMasq": true}),
        serde_json::json!({}),
    )
}
