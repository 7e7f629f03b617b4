//! (a) across nodes: two real overlayd daemons on a veth underlay (198.18.0.0/24), the
//! conflist (overlayd-cni, loopback, portmap, bandwidth) on each, and a pod on node 1
//! pinging a pod on node 2 through overlayd's VXLAN dataplane.
//!
//! Uses the `overlayd` binary from the same target directory as `overlayd-cni`, which
//! `cargo test --workspace` builds; with `-p overlayd-cni` alone, build it first
//! (`cargo build -p overlayd`, same profile).

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const M1: &str = "02:00:00:00:01:01";
const M2: &str = "02:00:00:00:02:01";

fn overlayd_bin() -> PathBuf {
    let bin = Path::new(PLUGIN).parent().unwrap().join("overlayd");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo test --workspace` or `cargo build -p overlayd` with the same profile",
        bin.display()
    );
    bin
}

/// An overlayd daemon running in a node namespace; killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(node: &Node, name: &str, args: &[&str]) -> Daemon {
        let log = node.dir.0.join("overlayd.log");
        let out = File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns.name])
            .arg(overlayd_bin())
            .args(["--node-name", name, "--subnet", &node.subnet])
            .arg("--run-dir")
            .arg(node.run_dir())
            .arg("--state-dir")
            .arg(node.dir.0.join("state"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn overlayd");
        let d = Daemon { child, log };
        let start = Instant::now();
        while !node.run_dir().join("node.json").exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "overlayd {name} wrote no node.json:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn conflist(node: &Node) -> Chain<'_> {
    Chain {
        node,
        name: "ovl".into(),
        version: "1.0.0".into(),
        plugins: vec![
            node.plugin_conf(json!({"ipMasq": true})),
            json!({"type": "loopback"}),
            json!({"type": "portmap", "capabilities": {"portMappings": true},
                   "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}}),
            json!({"type": "bandwidth", "capabilities": {"bandwidth": true},
                   "runtimeConfig": {"bandwidth": {"ingressRate": 100000000, "ingressBurst": 1000000,
                                                   "egressRate": 100000000, "egressBurst": 1000000}}}),
        ],
    }
}

#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn pods_on_two_overlayd_nodes_ping_each_other() {
    let n1 = Node::bare(1, 24);
    let n2 = Node::bare(2, 24);
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
    let d1 = Daemon::start(
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
    let d2 = Daemon::start(
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

    let (c1, c2) = (conflist(&n1), conflist(&n2));
    let (p1, p2) = (Netns::new("cpod"), Netns::new("cpod"));
    let r1 = c1.add("x-node-1", &p1);
    let r2 = c2.add("x-node-2", &p2);
    let (ip1, ip2) = (result_ip(&r1), result_ip(&r2));
    assert!(
        ip1.starts_with("10.244.1.") && ip2.starts_with("10.244.2."),
        "{ip1} {ip2}"
    );
    assert!(
        p1.ping(&ip2),
        "pod on n1 cannot reach {ip2} on n2:\n{}\n{}",
        d1.log_text(),
        d2.log_text()
    );
    assert!(
        p2.ping(&ip1),
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
    assert!(p1.ping(&ip2), "cross-node pod traffic was masqueraded");
    assert!(
        !n1.ns.ping(&ip2),
        "pod 2's filter lets other sources in: the check proves nothing"
    );

    c1.del("x-node-1", &p1.path(), Some(&r1));
    c2.del("x-node-2", &p2.path(), Some(&r2));
    assert!(!p1.ping(&ip2), "traffic still flows after DEL");
    assert!(n1.reserved("ovl").is_empty() && n2.reserved("ovl").is_empty());
    assert!(
        n1.ns.links("veth").len() == 1 && n2.ns.links("veth").len() == 1,
        "only the underlay veths remain"
    );
}
