//! (a) across nodes: two real overlayd daemons on a veth underlay (198.18.0.0/24), the
//! conflist (overlayd-cni, loopback, portmap, bandwidth) on each, and a pod on node 1
//! pinging a pod on node 2 through overlayd's VXLAN dataplane.
//!
//! Uses the `overlayd` binary from the same target directory as `overlayd-cni`, which
//! `cargo test --workspace` builds; with `-p overlayd-cni` alone, build it first
//! (`cargo build -p overlayd`, same profile).

mod common;

use std::time::Duration;

use common::*;
use overlayd_test_support::daemon::{DaemonDirs, DaemonProcess, Overlayd};
use overlayd_test_support::workspace_bin;

const M1: &str = "02:00:00:00:01:01";
const M2: &str = "02:00:00:00:02:01";

/// Starts overlayd (from the same target directory as the plugin) in `node`'s namespace
/// on the node's subnet, and waits for the node.json the plugin reads.
fn start_daemon(node: &CniHost, name: &str, args: &[&str]) -> DaemonProcess {
    let bin = Overlayd::at(workspace_bin("overlayd"));
    let dirs = DaemonDirs {
        run_dir: node.run_dir(),
        state_dir: node.dir.path().join("state"),
        log: node.dir.path().join("overlayd.log"),
    };
    let mut all = vec!["--subnet", node.subnet.as_str()];
    all.extend_from_slice(args);
    let d = DaemonProcess::start_with(&bin, &node.ns, dirs, name, &all);
    assert!(
        wait_until(Duration::from_secs(10), || node
            .run_dir()
            .join("node.json")
            .exists()),
        "overlayd {name} wrote no node.json:\n{}",
        d.log_text()
    );
    d
}

#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn pods_on_two_overlayd_nodes_ping_each_other() {
    let n1 = bare_host(1, 24);
    let n2 = bare_host(2, 24);
    let (u1, u2) = (unique("u"), unique("u"));
    let (u1, u2) = (&u1[..u1.len().min(15)], &u2[..u2.len().min(15)]);
    n1.ns
        .exec(&["ip", "link", "add", u1, "type", "veth", "peer", "name", u2]);
    n1.ns.exec(&["ip", "link", "set", u2, "netns", &n2.ns.name]);
    n1.ns
        .exec(&["ip", "addr", "add", "198.18.0.1/24", "dev", u1]);
    n1.ns.exec(&["ip", "link", "set", u1, "up"]);
    n2.ns
        .exec(&["ip", "addr", "add", "198.18.0.2/24", "dev", u2]);
    n2.ns.exec(&["ip", "link", "set", u2, "up"]);

    let peer2 = format!("10.244.2.0/24,198.18.0.2,{M2}");
    let peer1 = format!("10.244.1.0/24,198.18.0.1,{M1}");
    let d1 = start_daemon(
        &n1,
        "n1",
        &[
            "--advertise-addr",
            "198.18.0.1",
            "--vtep-mac",
            M1,
            "--static-peer",
            &peer2,
        ],
    );
    let d2 = start_daemon(
        &n2,
        "n2",
        &[
            "--advertise-addr",
            "198.18.0.2",
            "--vtep-mac",
            M2,
            "--static-peer",
            &peer1,
        ],
    );

    let (c1, c2) = (masq_chain(&n1, "1.0.0"), masq_chain(&n2, "1.0.0"));
    let (p1, p2) = (Netns::bare("cpod"), Netns::bare("cpod"));
    let r1 = c1.add("x-node-1", &p1);
    let r2 = c2.add("x-node-2", &p2);
    let (ip1, ip2) = (result_ip(&r1), result_ip(&r2));
    assert!(
        ip1.starts_with("10.244.1.") && ip2.starts_with("10.244.2."),
        "{ip1} {ip2}"
    );
    assert!(
        p1.ping_once(&ip2),
        "pod on n1 cannot reach {ip2} on n2:\n{}\n{}",
        d1.log_text(),
        d2.log_text()
    );
    assert!(
        p2.ping_once(&ip1),
        "pod on n2 cannot reach {ip1} on n1:\n{}\n{}",
        d1.log_text(),
        d2.log_text()
    );
    // ipMasq (on) leaves cluster traffic alone: pod 2 now drops echo requests from any
    // source but pod 1's own address, and the ping still crosses.
    let filter = format!(
        "add table ip f; add chain ip f in {{ type filter hook input priority 0; }}; \
         add rule ip f in icmp type echo-request ip saddr != {ip1} drop"
    );
    p2.exec(&["nft", &filter]);
    assert!(p1.ping_once(&ip2), "cross-node pod traffic was masqueraded");
    assert!(
        !n1.ns.ping_once(&ip2),
        "pod 2's filter lets other sources in: the check proves nothing"
    );

    c1.del("x-node-1", &p1.path(), Some(&r1));
    c2.del("x-node-2", &p2.path(), Some(&r2));
    assert!(!p1.ping_once(&ip2), "traffic still flows after DEL");
    assert!(n1.reserved("ovl").is_empty() && n2.reserved("ovl").is_empty());
    assert!(
        n1.ns.links("veth").len() == 1 && n2.ns.links("veth").len() == 1,
        "only the underlay veths remain"
    );
}
