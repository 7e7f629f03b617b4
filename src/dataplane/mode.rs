//! Which dataplane carries the node's pod traffic ([`DataplaneMode`]) and why
//! ([`PathInfo`]), as the log, `overlayd status` and `/metrics` report it.

use serde::{Deserialize, Serialize};

/// The ways a node carries pod traffic to its peers. The userspace and kernel
/// dataplanes speak the same VXLAN on the wire, so nodes of either kind form one
/// cluster; an encrypted cluster speaks WireGuard on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataplaneMode {
    /// The TUN device and the daemon's worker threads.
    #[default]
    Userspace,
    /// A kernel `vxlan` device the daemon programs over rtnetlink.
    Kernel,
    /// The TUN device and the daemon's worker threads, sealing pod traffic as
    /// WireGuard (`--encrypt`); speaks WireGuard, not VXLAN, so every node of the
    /// cluster must encrypt.
    Encrypted,
}

impl DataplaneMode {
    /// Both modes, in a fixed order.
    pub(crate) const ALL: [DataplaneMode; 3] = [
        DataplaneMode::Userspace,
        DataplaneMode::Kernel,
        DataplaneMode::Encrypted,
    ];

    /// The mode's stable name, as status and metrics print it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DataplaneMode::Userspace => "userspace",
            DataplaneMode::Kernel => "kernel",
            DataplaneMode::Encrypted => "encrypted",
        }
    }
}

impl std::fmt::Display for DataplaneMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The active dataplane, the device that carries it and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct PathInfo {
    /// Which dataplane runs.
    pub(crate) mode: DataplaneMode,
    /// Its device: the TUN (userspace) or the vxlan device (kernel).
    pub(crate) device: String,
    /// Why this mode: the flag, or what `--dataplane auto` found.
    pub(crate) reason: String,
}
