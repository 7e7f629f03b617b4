//! `<run-dir>/node.json`: what the daemon tells the CNI plugin about this node.
//!
//! The daemon writes it atomically (write to a temporary file, then rename) once the
//! node's devices are up and it holds a subnet. The CNI plugin reads it on every ADD;
//! its absence means "overlayd is not ready yet" (CNI error code 11).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// File name of the node description inside `--run-dir`.
pub const NODE_FILE: &str = "node.json";

/// The node description shared with the CNI plugin.
///
/// ```json
/// {"node_name":"n1","subnet":"10.244.1.0/24","gateway":"10.244.1.1","bridge":"ovl0",
///  "mtu":1450,"cluster_cidr":"10.244.0.0/16"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Name of this node in the cluster.
    pub node_name: String,
    /// The pod subnet this node owns (its lease or `--subnet`).
    pub subnet: IpNet,
    /// The node's gateway address on the bridge: the first host address of `subnet`.
    pub gateway: IpAddr,
    /// Name of the node bridge that pod veths attach to.
    pub bridge: String,
    /// MTU for pod interfaces (the overlay MTU).
    pub mtu: u32,
    /// The whole cluster's pod CIDR.
    pub cluster_cidr: IpNet,
}
