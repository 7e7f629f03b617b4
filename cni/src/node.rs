//! Loads `<runDir>/node.json`, the daemon's description of this node, for ADD and STATUS.
//!
//! The schema is [`overlayd_node_info::NodeInfo`], the one the daemon writes. This module
//! maps a missing file to [`Error::NotReady`] (code 11, "try again later") and anything
//! else wrong with it to [`Error::NodeFile`] (code 108), and checks each address family
//! the node has: IPv4, IPv6, or both (dual-stack). Unknown fields are ignored.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
pub use overlayd_node_info::{NodeInfo, NODE_FILE};

use crate::error::{Error, Result};

/// One address family of the node: its subnet, gateway and cluster CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// The node's pod subnet of this family.
    pub subnet: IpNet,
    /// The node's gateway address of this family on the bridge.
    pub gateway: IpAddr,
    /// The whole cluster's pod CIDR of this family.
    pub cluster_cidr: IpNet,
}

impl Family {
    /// Whether this is the IPv4 family.
    pub fn is_v4(&self) -> bool {
        self.subnet.addr().is_ipv4()
    }

    /// The default route of this family (`0.0.0.0/0` or `::/0`).
    pub fn default_route(&self) -> IpNet {
        let any = if self.is_v4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u8; 16])
        };
        IpNet::new(any, 0).unwrap_or_default()
    }

    fn check(
        subnet: IpNet,
        gateway: IpAddr,
        cluster_cidr: IpNet,
    ) -> std::result::Result<Self, String> {
        let v4 = subnet.addr().is_ipv4();
        if gateway.is_ipv4() != v4 || cluster_cidr.addr().is_ipv4() != v4 {
            return Err(format!(
                "subnet {subnet}, gateway {gateway} and cluster_cidr {cluster_cidr} are not of one address family"
            ));
        }
        // Room for the gateway and one pod (and, IPv4, network and broadcast).
        let max_len = if v4 { 30 } else { 126 };
        if !subnet.contains(&gateway)
            || subnet.prefix_len() > max_len
            || gateway == subnet.network()
        {
            return Err(format!(
                "gateway {gateway} is not a host address of subnet {subnet}"
            ));
        }
        Ok(Family {
            subnet,
            gateway,
            cluster_cidr,
        })
    }
}

/// `node.json` checked for the plugin: per family, a gateway that is a host address of
/// the subnet, and room for at least one pod beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The file as the daemon wrote it (bridge, MTU and node name are used as they are).
    pub info: NodeInfo,
    /// The node's families: `info.subnet`'s, then dual-stack the IPv6 one.
    pub families: Vec<Family>,
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

    /// The node's family of `ip`, if it has it.
    pub fn family_of(&self, ip: IpAddr) -> Option<&Family> {
        self.families
            .iter()
            .find(|f| f.subnet.addr().is_ipv4() == ip.is_ipv4())
    }

    /// Checks each family of `info`, or says why it cannot be used.
    fn check(info: NodeInfo) -> std::result::Result<Self, String> {
        let first = Family::check(info.subnet, info.gateway, info.cluster_cidr)?;
        let mut families = vec![first];
        match (info.subnet_v6, info.gateway_v6, info.cluster_cidr_v6) {
            (None, None, None) => {}
            (Some(s), Some(g), Some(c)) => {
                let second = Family::check(s, g, c)?;
                if second.is_v4() || first.subnet.addr().is_ipv6() {
                    return Err(format!(
                        "subnet {} and subnet_v6 {s}: dual-stack needs one IPv4 and one IPv6 subnet",
                        info.subnet
                    ));
                }
                families.push(second);
            }
            _ => {
                return Err(
                    "subnet_v6, gateway_v6 and cluster_cidr_v6 must be given together".into(),
                )
            }
        }
        Ok(Node { info, families })
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
        assert_eq!(
            node.families[0].gateway,
            "10.244.1.1".parse::<IpAddr>().unwrap()
        );
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
        assert_eq!(
            node.families,
            vec![Family {
                subnet: "10.244.1.0/24".parse().unwrap(),
                gateway: "10.244.1.1".parse().unwrap(),
                cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            }]
        );
        // Dual-stack and IPv6-only files.
        let dual = V4.replace(
            "}",
            r#","subnet_v6":"fd00:10:244:1::/64","gateway_v6":"fd00:10:244:1::1","cluster_cidr_v6":"fd00:10:244::/56"}"#,
        );
        std::fs::write(dir.0.join(NODE_FILE), &dual).unwrap();
        let node = Node::load(&dir.0).unwrap();
        assert_eq!(node.families.len(), 2);
        assert_eq!(
            node.family_of("fd00::1".parse().unwrap()).unwrap().gateway,
            "fd00:10:244:1::1".parse::<IpAddr>().unwrap()
        );
        let v6 = V4
            .replace("10.244.1.0/24", "fd00:10:244:1::/64")
            .replace("10.244.1.1", "fd00:10:244:1::1")
            .replace("10.244.0.0/16", "fd00:10:244::/48");
        std::fs::write(dir.0.join(NODE_FILE), &v6).unwrap();
        let node = Node::load(&dir.0).unwrap();
        assert!(!node.families[0].is_v4());
        assert_eq!(node.families[0].default_route().to_string(), "::/0");
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
                "not of one address family",
            ),
            (
                &V4.replace("}", r#","subnet_v6":"fd00::/64"}"#),
                "must be given together",
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
