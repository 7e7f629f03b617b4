//! Loads `<runDir>/node.json`, the daemon's description of this node, for ADD and STATUS.
//!
//! The schema is [`overlayd_node_info::NodeInfo`], the one the daemon writes. This module
//! maps a missing file to [`Error::NotReady`] (code 11, "try again later") and anything
//! else wrong with it to [`Error::NodeFile`] (code 108), and narrows the addresses to
//! IPv4, the only family the plugin supports. Unknown fields are ignored.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
pub use overlayd_node_info::{NodeInfo, NODE_FILE};

use crate::error::{Error, Result};

/// `node.json` checked for the plugin: IPv4 addresses, a gateway that is a host address
/// of the subnet, and room for at least one pod beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The file as the daemon wrote it (bridge, MTU and node name are used as they are).
    pub info: NodeInfo,
    /// The node's pod subnet (`info.subnet`).
    pub subnet: Ipv4Net,
    /// The node's gateway address on the bridge (`info.gateway`).
    pub gateway: Ipv4Addr,
    /// The whole cluster's pod CIDR (`info.cluster_cidr`).
    pub cluster_cidr: Ipv4Net,
}

impl Node {
    /// Reads and checks `<run_dir>/node.json`. A missing file is code 11, an unreadable,
    /// malformed or unusable one code 108.
    pub fn load(run_dir: &Path) -> Result<Self> {
        let path = NodeInfo::path(run_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotReady { path }),
            Err(e) => return Err(node_file(path, e.to_string())),
        };
        let info: NodeInfo = match serde_json::from_slice(&bytes) {
            Ok(info) => info,
            Err(e) => return Err(node_file(path, e.to_string())),
        };
        Node::check(info).map_err(|reason| node_file(path, reason))
    }

    /// Narrows `info` to what the plugin supports, or says why it cannot.
    fn check(info: NodeInfo) -> std::result::Result<Self, String> {
        let (IpNet::V4(subnet), IpAddr::V4(gateway), IpNet::V4(cluster_cidr)) =
            (info.subnet, info.gateway, info.cluster_cidr)
        else {
            return Err(format!(
                "subnet {}, gateway {} and cluster_cidr {}: only IPv4 is supported",
                info.subnet, info.gateway, info.cluster_cidr
            ));
        };
        if !subnet.contains(&gateway) || subnet.prefix_len() > 30 {
            return Err(format!(
                "gateway {gateway} is not a host address of subnet {subnet}"
            ));
        }
        Ok(Node {
            info,
            subnet,
            gateway,
            cluster_cidr,
        })
    }
}

fn node_file(path: PathBuf, reason: String) -> Error {
    Error::NodeFile { path, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("ovl-cni-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const V4: &str = r#"{"node_name":"n1","subnet":"10.244.1.0/24","gateway":"10.244.1.1","bridge":"ovl0","mtu":1450,"cluster_cidr":"10.244.0.0/16"}"#;

    #[test]
    fn node_file() {
        let dir = TempDir::new("node");
        let err = Node::load(&dir.0).unwrap_err();
        assert_eq!(err.code(), 11);
        assert!(err.to_string().contains("overlayd") && err.to_string().contains("node.json"));
        std::fs::write(
            dir.0.join(NODE_FILE),
            r#"{"node_name":"n1","subnet":"10.244.1.0/24","gateway":"10.244.1.1","bridge":"ovl0","mtu":1450,"cluster_cidr":"10.244.0.0/16","future":1}"#,
        )
        .unwrap();
        let node = Node::load(&dir.0).unwrap();
        assert_eq!(node.gateway, Ipv4Addr::new(10, 244, 1, 1));
        std::fs::write(dir.0.join(NODE_FILE), "{").unwrap();
        assert_eq!(Node::load(&dir.0).unwrap_err().code(), 108);
    }

    /// What the daemon writes (the shared schema, pretty-printed) is what the plugin reads.
    #[test]
    fn reads_what_the_daemon_writes() {
        let dir = TempDir::new("node-rt");
        let info: NodeInfo = serde_json::from_str(V4).unwrap();
        let written = serde_json::to_vec_pretty(&info).unwrap();
        std::fs::write(dir.0.join(NODE_FILE), written).unwrap();
        let node = Node::load(&dir.0).unwrap();
        assert_eq!(node.info, info);
        assert_eq!(node.subnet, "10.244.1.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(
            node.cluster_cidr,
            "10.244.0.0/16".parse::<Ipv4Net>().unwrap()
        );
    }

    #[test]
    fn unusable_files_are_code_108_and_say_why() {
        let dir = TempDir::new("node-bad");
        let cases = [
            ("", "EOF"),
            ("garbage\n", "expected"),
            ("[1,2]", "invalid type"),
            (r#"{"node_name":"n1"}"#, "missing field"),
            (
                &V4.replace("10.244.1.1", "10.244.2.1"),
                "not a host address",
            ),
            (
                &V4.replace("10.244.1.0/24", "10.244.1.0/31")
                    .replace("10.244.1.1\"", "10.244.1.0\""),
                "not a host address",
            ),
            (
                &V4.replace("10.244.1.0/24", "fd00::/64")
                    .replace("10.244.1.1", "fd00::1"),
                "only IPv4",
            ),
        ];
        for (text, needle) in cases {
            std::fs::write(dir.0.join(NODE_FILE), text).unwrap();
            let err = Node::load(&dir.0).unwrap_err();
            assert_eq!(err.code(), 108, "{text}: {err}");
            let msg = err.to_string();
            assert!(
                msg.contains("node.json") && msg.contains(needle),
                "{text}: {msg}"
            );
        }
    }

    #[test]
    fn a_directory_in_its_place_is_code_108() {
        let dir = TempDir::new("node-dir");
        std::fs::create_dir(dir.0.join(NODE_FILE)).unwrap();
        assert_eq!(Node::load(&dir.0).unwrap_err().code(), 108);
    }
}
