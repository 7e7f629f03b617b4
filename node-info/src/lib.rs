//! `<run-dir>/node.json`: what the overlayd daemon tells its CNI plugin about this node.
//!
//! This crate is the one schema of that file. The daemon writes it atomically (a
//! temporary file, then a rename) once the node's devices are up and it holds a subnet,
//! and removes it when the node has no subnet. The CNI plugin reads it on every ADD and
//! STATUS. What a missing or malformed file means (CNI codes 11 and 108) and which
//! address families the plugin accepts are the plugin's business, not this crate's.
//!
//! Readers ignore fields they do not know, so a newer daemon may add fields without
//! breaking an older plugin. Renaming or removing a field breaks installed plugins.
//!
//! The other direction has the same shape: [`pods`] is the one format of the plugin's
//! IPAM store (which pod holds which address), which the plugin writes and the daemon
//! reads.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod pods;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// File name of the node description inside the daemon's `--run-dir` (the plugin's `runDir`).
pub const NODE_FILE: &str = "node.json";

/// The node description shared by the daemon and the CNI plugin.
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
    /// Dual-stack: the node's IPv6 subnet (absent in a single-stack cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_v6: Option<IpNet>,
    /// Dual-stack: the node's IPv6 gateway on the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v6: Option<IpAddr>,
    /// Dual-stack: the cluster's IPv6 pod CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr_v6: Option<IpNet>,
}

impl NodeInfo {
    /// The path of the node file inside `run_dir`.
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join(NODE_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the daemon at the base of this crate wrote (`to_vec_pretty`), byte for byte.
    const WRITTEN: &str = r#"{
  "node_name": "n1",
  "subnet": "10.244.1.0/24",
  "gateway": "10.244.1.1",
  "bridge": "ovl0",
  "mtu": 1450,
  "cluster_cidr": "10.244.0.0/16"
}"#;

    fn sample() -> NodeInfo {
        NodeInfo {
            node_name: "n1".into(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            gateway: "10.244.1.1".parse().unwrap(),
            bridge: "ovl0".into(),
            mtu: 1450,
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            subnet_v6: None,
            gateway_v6: None,
            cluster_cidr_v6: None,
        }
    }

    #[test]
    fn round_trip_keeps_the_wire_format() {
        let info = sample();
        let text = serde_json::to_string_pretty(&info).unwrap();
        assert_eq!(text, WRITTEN);
        assert_eq!(serde_json::from_str::<NodeInfo>(&text).unwrap(), info);
        let v6 = NodeInfo {
            subnet: "fd00:10:244:1::/64".parse().unwrap(),
            gateway: "fd00:10:244:1::1".parse().unwrap(),
            cluster_cidr: "fd00:10:244::/48".parse().unwrap(),
            ..info
        };
        let text = serde_json::to_vec(&v6).unwrap();
        assert_eq!(serde_json::from_slice::<NodeInfo>(&text).unwrap(), v6);
        // Dual-stack adds three fields, which an older plugin ignores.
        let dual = NodeInfo {
            subnet_v6: Some("fd00:10:244:1::/64".parse().unwrap()),
            gateway_v6: Some("fd00:10:244:1::1".parse().unwrap()),
            cluster_cidr_v6: Some("fd00:10:244::/56".parse().unwrap()),
            ..sample()
        };
        let text = serde_json::to_string(&dual).unwrap();
        assert!(
            text.contains(r#""subnet_v6":"fd00:10:244:1::/64""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<NodeInfo>(&text).unwrap(), dual);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let newer = r#"{"node_name":"n1","subnet":"10.244.1.0/24","gateway":"10.244.1.1",
            "bridge":"ovl0","mtu":1450,"cluster_cidr":"10.244.0.0/16",
            "future":1,"encryption":{"key_id":7}}"#;
        assert_eq!(serde_json::from_str::<NodeInfo>(newer).unwrap(), sample());
    }

    #[test]
    fn missing_or_mistyped_fields_are_errors() {
        let missing = r#"{"node_name":"n1","subnet":"10.244.1.0/24","gateway":"10.244.1.1",
            "bridge":"ovl0","cluster_cidr":"10.244.0.0/16"}"#;
        let e = serde_json::from_str::<NodeInfo>(missing).unwrap_err();
        assert!(e.to_string().contains("mtu"), "{e}");
        let mistyped = WRITTEN.replace("10.244.1.1", "gw");
        assert!(serde_json::from_str::<NodeInfo>(&mistyped).is_err());
    }

    #[test]
    fn path_is_run_dir_plus_file_name() {
        assert_eq!(
            NodeInfo::path(Path::new("/run/overlayd")),
            PathBuf::from("/run/overlayd/node.json")
        );
    }
}
