//! Helpers for overlayd's root-only tests, shared by `netns-tests/` (the daemon's
//! integration tests) and `cni/tests/` (the plugin's). Dev-only: it is never published
//! and only ever a dev-dependency.
//!
//! Everything a test creates (namespaces, the veths and bridges inside them, daemons,
//! scratch directories) is held by a guard whose `Drop` removes it, also when the test
//! panics. Nothing is configured in the root network namespace.
//!
//! # Layout
//! - [`cmd`]: `sh`, `try_sh`, `wait_until` and unique names.
//! - [`netns`]: the namespace guard and veth links between namespaces.
//! - [`topology`]: pods on a bridge, an underlay switch, a kernel VXLAN (flannel) node.
//! - [`process`]: a guard that stops and reaps the process it started.
//! - [`daemon`]: one overlayd daemon in a namespace, read through its typed status.
//! - [`cluster`]: daemons on a shared underlay switch, each with a pod (the node harness).
//! - [`cni`]: a stand-in overlayd host for the CNI plugin, and a tiny libcni.
//! - [`cri`]: containerd on a node driven through its CRI, as the kubelet drives it.
//! - [`kube`]: the Kubernetes manifests run from their pod templates with podman in
//!   node namespaces, the image from `scripts/image.sh`, the installed plugin.
//! - [`capture`]: an AF_PACKET capture of VXLAN datagrams that reads every GSO segment.
//! - [`tools`]: iperf3, HTTP GET, ping output and hand-made VXLAN datagrams.
//! - [`rng`]: seeded RNGs whose seed is printed and can be replayed.
//! - [`load`]: the lock that keeps heavy tests away from timing-sensitive ones.
//!
//! Binary paths: `env!("CARGO_BIN_EXE_<name>")` exists only in the integration tests of
//! the package that owns the binary, so callers pass paths in ([`daemon::Overlayd::at`])
//! or locate a binary of another workspace package with [`cmd::workspace_bin`].

#![warn(missing_docs)]

pub mod capture;
pub mod cluster;
pub mod cmd;
pub mod cni;
pub mod cri;
pub mod daemon;
pub mod kube;
pub mod load;
pub mod netns;
pub mod process;
pub mod rng;
pub mod tools;
pub mod topology;

pub use rand;
pub use tempfile;

pub use cmd::{sh, try_sh, unique, wait_until, workspace_bin};
pub use netns::{link, Netns};

/// A scratch directory for one test (`/tmp/overlayd-test-*`), removed on drop.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("overlayd-test-")
        .tempdir()
        .expect("create a scratch directory")
}
