//! Root-only tests of dual-stack clusters (issue 16), with real daemons in network
//! namespaces on a shared underlay switch: each node leases one subnet per family,
//! and pods reach each other over IPv4 and over IPv6. Run with
//! `cargo test --release --test netns_dualstack` as root.

use std::time::Duration;

use overlayd_test_support::cluster::{
    all_reach_all, lease_and_attach, logs, DaemonNode, TestCluster,
};
use overlayd_test_support::{load, wait_until};

/// The daemon under test.
const OVERLAYD: &str = env!("CARGO_BIN_EXE_overlayd");

/// The bound on every wait for leases or pings: a guard against a hang, well over 10x
/// what this machine takes.
const BOUND: Duration = Duration::from_secs(60);

/// The cluster CIDRs of every dual-stack node here.
const DUAL: &str = "10.244.0.0/16,fd00:10:244::/56";

/// The node's `node.json`, as the CNI plugin reads it.
fn node_json(n: &DaemonNode) -> Option<serde_json::Value> {
    let bytes = std::fs::read(n.dirs.run_dir.join("node.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The node's IPv4 and IPv6 subnets from its `node.json`.
fn subnets(n: &DaemonNode) -> Option<(String, String)> {
    let info = node_json(n)?;
    Some((
        info["subnet"].as_str()?.to_string(),
        info["subnet_v6"].as_str()?.to_string(),
    ))
}

/// Gives the node's pod (attached with its IPv4 address) `::2` of the node's IPv6
/// subnet and a default route through the IPv6 gateway; returns the address.
fn add_v6(n: &DaemonNode) -> String {
    let info = node_json(n).expect("node.json");
    let subnet = info["subnet_v6"].as_str().expect("subnet_v6");
    let gateway = info["gateway_v6"].as_str().expect("gateway_v6");
    let ip = format!("{}2", subnet.trim_end_matches("/64"));
    let pod = &n.pod().ns;
    pod.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{ip}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    pod.ip(&["-6", "route", "add", "default", "via", gateway]);
    ip
}

#[test]
fn a_dual_stack_cluster_leases_a_subnet_per_family_and_pods_reach_each_other_over_both() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let flags = ["--cluster-cidr", DUAL];
    let mut nodes = vec![
        cluster.start_extra(1, "198.18.0.2,198.18.0.3", &flags),
        cluster.start_extra(2, "198.18.0.1,198.18.0.3", &flags),
        cluster.start_extra(3, "198.18.0.1,198.18.0.2", &flags),
    ];
    lease_and_attach(&mut nodes, BOUND);
    assert!(
        wait_until(BOUND, || nodes.iter().all(|n| subnets(n).is_some())),
        "a node wrote no IPv6 subnet:\n{}",
        logs(&nodes)
    );
    // One lease per node gives both subnets: the same index in each CIDR, all
    // distinct.
    let all: Vec<(String, String)> = nodes.iter().map(|n| subnets(n).unwrap()).collect();
    println!("subnets: {all:?}");
    for (v4, v6) in &all {
        let k: u128 = v4.split('.').nth(2).unwrap().parse().unwrap();
        let base = u128::from("fd00:10:244::".parse::<std::net::Ipv6Addr>().unwrap());
        let want = format!("{}/64", std::net::Ipv6Addr::from(base + (k << 64)));
        assert_eq!(v6, &want, "{v4} and {v6}");
    }
    let mut distinct = all.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{all:?}");
    // The bridge holds both gateways; the TUN carries both cluster CIDRs.
    for n in &nodes {
        let info = node_json(n).unwrap();
        let addrs = n.ns.ip(&["addr", "show", "ovl0"]);
        for gw in ["gateway", "gateway_v6"] {
            let gw = info[gw].as_str().unwrap();
            assert!(addrs.contains(gw), "{} has no {gw}: {addrs}", n.name);
        }
        let status = n.status().unwrap();
        let text = cluster.bin.run(&["status"], &n.dirs.run_dir);
        let (_, v6) = subnets(n).unwrap();
        assert_eq!(
            status.node.subnet_v6.map(|s| s.to_string()),
            Some(v6.clone())
        );
        let text = String::from_utf8_lossy(&text.stdout).to_string();
        assert!(text.contains(&format!("subnet v6  {v6}")), "{text}");
        let routes = n.ns.ip(&["-6", "route", "show", "fd00:10:244::/56"]);
        assert!(
            routes.contains("dev"),
            "{}: no IPv6 cluster route: {routes}",
            n.name
        );
    }
    let v6: Vec<String> = nodes.iter().map(add_v6).collect();
    assert!(
        wait_until(BOUND, || all_reach_all(&nodes)),
        "IPv4 pods do not all reach each other:\n{}",
        logs(&nodes)
    );
    for (i, a) in nodes.iter().enumerate() {
        for (j, b) in v6.iter().enumerate() {
            if i == j {
                continue;
            }
            let ok = wait_until(BOUND, || a.pod().ns.ping_once(b));
            assert!(
                ok,
                "pod of {} cannot reach {b} over IPv6:\n{}",
                a.name,
                logs(&nodes)
            );
        }
    }
    // An IPv6 address of the cluster no node owns: ICMPv6 unreachable from the
    // node's IPv6 gateway, at once.
    let out = nodes[0]
        .pod()
        .ns
        .command("ping")
        .args(["-c", "1", "-W", "2", "fd00:10:244:ff::5"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let gw = node_json(&nodes[0]).unwrap()["gateway_v6"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains(&format!("From {gw}")) && text.contains("nreachable"),
        "{text}"
    );
    // Each peer's counters saw the IPv6 packets too: nothing dropped as spoofed.
    for n in &nodes {
        let s = n.status().unwrap();
        let spoofed = s
            .dataplane
            .drops
            .get("spoofed_source")
            .copied()
            .unwrap_or(0);
        assert_eq!(spoofed, 0, "{}", n.name);
    }
}

#[test]
fn a_single_stack_node_is_refused_by_a_dual_stack_cluster_naming_the_ipv6_cidr() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let n1 = cluster.start_extra(1, "", &["--cluster-cidr", DUAL]);
    assert!(wait_until(BOUND, || n1.subnet().is_some()));
    let n2 = cluster.node(2);
    let (ok, text) = n2.launch_expect_exit("198.18.0.1");
    assert!(!ok, "{text}");
    assert!(
        text.contains("IPv6 cluster CIDR none here, fd00:10:244::/56 on n1")
            || text.contains("IPv6 cluster CIDR fd00:10:244::/56 here, none on n2"),
        "{text}"
    );
    // --dataplane kernel cannot carry both families yet, and says so.
    let mut n3 = cluster.node(3);
    n3.extra = vec![
        "--cluster-cidr".into(),
        DUAL.into(),
        "--dataplane".into(),
        "kernel".into(),
    ];
    let (ok, text) = n3.launch_expect_exit("198.18.0.1");
    assert!(
        !ok && text.contains("--dataplane") && text.contains("dual-stack"),
        "{text}"
    );
}

/// `base` (an IPv6 subnet as text, `fd00:10:244:3::/64`) with the last host part
/// `host`: `fd00:10:244:3::host`.
fn v6_host(subnet: &str, host: u16) -> String {
    let net: ipnet::Ipv6Net = subnet.parse().unwrap();
    std::net::Ipv6Addr::from(u128::from(net.network()) + u128::from(host)).to_string()
}

#[test]
fn an_ipv6_only_cluster_over_an_ipv6_underlay_carries_pod_traffic() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let flags = ["--cluster-cidr", "fd00:10:244::/48", "--subnet-len", "64"];
    let mut nodes: Vec<DaemonNode> = (1..=3).map(|i| cluster.node(i)).collect();
    let addrs: Vec<String> = nodes.iter_mut().map(|n| n.ipv6_underlay()).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        n.extra = flags.iter().map(|s| s.to_string()).collect();
        let seeds: Vec<&str> = (0..addrs.len())
            .filter(|j| *j != i)
            .map(|j| addrs[j].as_str())
            .collect();
        n.launch(&seeds.join(","));
    }
    assert!(
        wait_until(BOUND, || nodes.iter().all(|n| n.subnet().is_some())),
        "not every node got a subnet:\n{}",
        logs(&nodes)
    );
    let mut pods = Vec::new();
    for n in &nodes {
        let status = n.status().unwrap();
        let subnet = status.node.subnet.unwrap().to_string();
        assert!(subnet.starts_with("fd00:10:244:"), "{subnet}");
        // The underlay MTU less VXLAN over IPv6 (70 bytes).
        assert_eq!(status.node.mtu, 1430, "{}", n.name);
        // Gossip and VXLAN run over IPv6: every peer's endpoint is an IPv6 address.
        assert!(
            wait_until(BOUND, || n.status().is_some_and(
                |s| s.peers.len() == 2 && s.peers.iter().all(|p| p.underlay.is_ipv6())
            )),
            "{}: {:?}",
            n.name,
            n.status().map(|s| s.peers)
        );
        let ip = v6_host(&subnet, 2);
        let gw = v6_host(&subnet, 1);
        let pod = overlayd_test_support::topology::Pod::attach(
            &n.ns,
            "ovl0",
            "veth0",
            &format!("{ip}/64"),
            &gw,
            status.node.mtu,
        );
        pods.push(pod);
    }
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let ok = wait_until(BOUND, || a.ns.ping_once(&b.ip));
            assert!(
                ok,
                "pod {} cannot reach {} over IPv6:\n{}",
                a.ip,
                b.ip,
                logs(&nodes)
            );
        }
    }
}
