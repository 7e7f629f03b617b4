//! `<run-dir>/node.json`: what the daemon tells the CNI plugin about this node.
//!
//! The schema lives in the `overlayd-node-info` crate, which the plugin reads with too;
//! this module re-exports it for the daemon, which writes the file atomically
//! (`crate::daemon::host`) once the node's devices are up and it holds a subnet.

pub(crate) use overlayd_node_info::{NodeInfo, NODE_FILE};
