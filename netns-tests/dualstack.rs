//! Root-only tests of dual-stack clusters (issue 16), with real daemons in network
//! namespaces on a shared underlay switch: each node leases one subnet per family,
//! pods added by overlayd-cni reach each other over IPv4 and over IPv6, and an
//! IPv6-only cluster runs over an IPv6 underlay (also encrypted). Run with
//! `cargo test --release --test netns_dualstack` as root.

use std::time::Duration;

use overlayd_test_support::cluster::{logs, DaemonNode, TestCluster};
use overlayd_test_support::topology::{kernel_vxlan_node, kernel_vxlan_route};
use overlayd_test_support::{load, wait_until, workspace_bin, Netns};

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

/// Runs overlayd-cni (`cmd`, cniVersion 1.1.0) on node `n` for pod `pod`, with the
/// daemon's run dir and an IPAM store under `dir`, as a runtime on that node would;
/// returns the exit code and the reply.
fn cni(n: &DaemonNode, dir: &std::path::Path, cmd: &str, pod: &Netns) -> (i32, serde_json::Value) {
    use std::io::Write;
    let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "ovl", "type": "overlayd-cni",
        "runDir": n.dirs.run_dir, "dataDir": dir.join(format!("{}-ipam", n.name)), "ipMasq": true});
    let mut child =
        n.ns.command(workspace_bin("overlayd-cni"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", format!("pod-{}", n.name))
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("overlayd-cni runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let reply = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), reply)
}

#[test]
fn a_dual_stack_cluster_leases_a_subnet_per_family_and_cni_pods_reach_each_other_over_both() {
    let _load = load::shared();
    for dataplane in ["userspace", "kernel"] {
        dual_stack_cluster(dataplane);
    }
}

/// Three dual-stack gossip nodes on `dataplane`, a pod on each added by overlayd-cni.
fn dual_stack_cluster(dataplane: &str) {
    let cluster = TestCluster::new(OVERLAYD);
    let flags = ["--cluster-cidr", DUAL, "--dataplane", dataplane];
    let nodes = vec![
        cluster.start_extra(1, "198.18.0.2,198.18.0.3", &flags),
        cluster.start_extra(2, "198.18.0.1,198.18.0.3", &flags),
        cluster.start_extra(3, "198.18.0.1,198.18.0.2", &flags),
    ];
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
    // The bridge holds both gateways; the TUN carries both cluster CIDRs; status
    // shows both subnets.
    for n in &nodes {
        let info = node_json(n).unwrap();
        let addrs = n.ns.ip(&["addr", "show", "ovl0"]);
        for gw in ["gateway", "gateway_v6"] {
            let gw = info[gw].as_str().unwrap();
            assert!(addrs.contains(gw), "{} has no {gw}: {addrs}", n.name);
        }
        let status = n.status().unwrap();
        let mode = serde_json::to_value(status.path.mode).unwrap();
        assert_eq!(mode, dataplane, "{}: {:?}", n.name, status.path);
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
    // A pod on each node, added by overlayd-cni: one address per family.
    let pods: Vec<Netns> = nodes.iter().map(|_| Netns::bare("dpod")).collect();
    let mut ips = Vec::new();
    for (n, pod) in nodes.iter().zip(&pods) {
        let (code, r) = cni(n, cluster.dir(), "ADD", pod);
        assert_eq!(code, 0, "ADD on {}: {r}", n.name);
        let a = overlayd_test_support::cni::result_ips(&r);
        let (v4, v6) = subnets(n).unwrap();
        assert_eq!(a.len(), 2, "{r}");
        let v4: ipnet::IpNet = v4.parse().unwrap();
        let v6: ipnet::IpNet = v6.parse().unwrap();
        assert!(
            v4.contains(&a[0].parse::<std::net::IpAddr>().unwrap()),
            "{a:?}"
        );
        assert!(
            v6.contains(&a[1].parse::<std::net::IpAddr>().unwrap()),
            "{a:?}"
        );
        ips.push(a);
    }
    for (i, pod) in pods.iter().enumerate() {
        for (j, theirs) in ips.iter().enumerate() {
            if i == j {
                continue;
            }
            for ip in theirs {
                let ok = wait_until(BOUND, || pod.ping_once(ip));
                assert!(
                    ok,
                    "{dataplane}: pod of {} cannot reach {ip}:\n{}",
                    nodes[i].name,
                    logs(&nodes)
                );
            }
        }
    }
    // diagnose takes an IPv6 pod address, and finds its owner and the way there.
    let out = nodes[0].daemon().client(&["diagnose", &ips[1][1]]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(text.starts_with("OK:"), "{text}");
    assert!(text.contains(&format!("n2 owns {}", all[1].1)), "{text}");
    // Status shows each peer's IPv6 subnet under its row.
    let text = cluster.bin.run(&["status"], &nodes[0].dirs.run_dir);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains(&all[1].1) && text.contains(&all[2].1),
        "{text}"
    );
    // An IPv6 address of the cluster no node owns: ICMPv6 unreachable from the
    // node's IPv6 gateway, at once.
    let out = pods[0]
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
    // Nothing dropped as spoofed: each peer's IPv6 packets come from its IPv6 subnet.
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
    // DEL frees both addresses.
    for (n, pod) in nodes.iter().zip(&pods) {
        let (code, r) = cni(n, cluster.dir(), "DEL", pod);
        assert_eq!(code, 0, "DEL on {}: {r}", n.name);
        let store = cluster.dir().join(format!("{}-ipam", n.name)).join("ovl");
        let left: Vec<String> = std::fs::read_dir(&store)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
            .collect();
        assert!(left.is_empty(), "{}: {left:?}", n.name);
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
    // A node on an IPv6 underlay given an IPv4 seed says what is wrong.
    let mut n4 = cluster.node(4);
    n4.ipv6_underlay();
    n4.extra = vec!["--cluster-cidr".into(), DUAL.into()];
    let (ok, text) = n4.launch_expect_exit("198.18.0.1");
    assert!(
        !ok && text.contains("--peers") && text.contains("198.18.0.1, an IPv4 address"),
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
fn an_ipv6_only_cluster_over_an_ipv6_underlay_carries_pod_traffic_in_both_dataplanes() {
    let _load = load::shared();
    for dataplane in ["userspace", "kernel"] {
        ipv6_only_cluster(dataplane, false);
    }
}

#[test]
fn an_encrypted_ipv6_only_cluster_over_an_ipv6_underlay_carries_pod_traffic() {
    let _load = load::shared();
    ipv6_only_cluster("userspace", true);
}

/// Three nodes of an IPv6-only cluster over an IPv6 underlay, on `dataplane`, with
/// WireGuard (`--encrypt`) if `encrypt`: pods ping each other.
fn ipv6_only_cluster(dataplane: &str, encrypt: bool) {
    let cluster = TestCluster::new(OVERLAYD);
    let mut flags: Vec<String> = [
        "--cluster-cidr",
        "fd00:10:244::/48",
        "--subnet-len",
        "64",
        "--dataplane",
        dataplane,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if encrypt {
        let key = cluster.secret_file();
        flags.extend([
            "--encrypt".into(),
            "--secret-file".into(),
            key.display().to_string(),
        ]);
    }
    // Over IPv6 the underlay MTU (1500) less outer IPv6 and UDP (48) and VXLAN (22)
    // or WireGuard's data message header and tag (32).
    let want_mtu = if encrypt { 1500 - 48 - 32 } else { 1430 };
    let mut nodes: Vec<DaemonNode> = (1..=3).map(|i| cluster.node(i)).collect();
    let addrs: Vec<String> = nodes.iter_mut().map(|n| n.ipv6_underlay()).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        n.extra = flags.clone();
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
        assert_eq!(status.node.mtu, want_mtu, "{}", n.name);
        let mode = serde_json::to_value(status.path.mode).unwrap();
        let want_mode = if encrypt { "encrypted" } else { dataplane };
        assert_eq!(mode, want_mode, "{}: {:?}", n.name, status.path);
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
                "{dataplane}: pod {} cannot reach {} over IPv6:\n{}",
                a.ip,
                b.ip,
                logs(&nodes)
            );
        }
    }
    if encrypt {
        // Every pair carried its pings in an established WireGuard session over the
        // IPv6 underlay, with nothing dropped as spoofed.
        for n in &nodes {
            let s = n.status().unwrap();
            for p in &s.peers {
                let wg = p.wg.as_ref().expect("every peer has a key");
                assert_eq!(wg.session.session, "established", "{}: {p:?}", n.name);
                assert!(p.underlay.is_ipv6(), "{}: {p:?}", n.name);
            }
            assert_eq!(
                s.dataplane.drops.get("spoofed_source"),
                None,
                "{}: {:?}",
                n.name,
                s.dataplane.drops
            );
        }
    }
}

#[test]
fn a_kernel_vxlan_node_over_an_ipv6_underlay_is_a_static_peer_both_ways() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    // Node 2: a flannel-style kernel VXLAN node over IPv6, no overlayd.
    let mut kn = cluster.node(2);
    let k_addr = kn.ipv6_underlay();
    let k = &kn.ns;
    let k_mac = kernel_vxlan_node(k, "eth0", &k_addr, 1, "fd00:10:244:2::/64", 1430);
    // Node 1: overlayd with the kernel node as its static peer, over IPv6.
    let mut n1 = cluster.node(1);
    let n1_addr = n1.ipv6_underlay();
    let mac1 = "02:00:00:00:16:01";
    let peer = format!("fd00:10:244:2::/64,{k_addr},{k_mac}");
    n1.extra = [
        "--cluster-cidr",
        "fd00:10:244::/48",
        "--subnet",
        "fd00:10:244:1::/64",
        "--vtep-mac",
        mac1,
        "--static-peer",
        &peer,
        "--dataplane",
        "userspace",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    n1.launch("");
    assert!(
        wait_until(BOUND, || n1.subnet().is_some()),
        "n1 has no subnet:\n{}",
        n1.log_text()
    );
    // The kernel node's entries for node 1, as flannel programs them.
    kernel_vxlan_route(k, "fd00:10:244:1::/64", mac1, &n1_addr);
    let mtu = n1.status().unwrap().node.mtu;
    assert_eq!(mtu, 1430);
    let p1 = overlayd_test_support::topology::Pod::attach(
        &n1.ns,
        "ovl0",
        "veth0",
        "fd00:10:244:1::2/64",
        "fd00:10:244:1::1",
        mtu,
    );
    let p2 = overlayd_test_support::topology::Pod::attach(
        &kn.ns,
        "cni0",
        "veth0",
        "fd00:10:244:2::2/64",
        "fd00:10:244:2::1",
        mtu,
    );
    assert!(
        wait_until(BOUND, || p1.ns.ping_once(&p2.ip)),
        "overlayd pod cannot reach the kernel node's pod:\n{}",
        n1.log_text()
    );
    assert!(
        wait_until(BOUND, || p2.ns.ping_once(&p1.ip)),
        "the kernel node's pod cannot reach the overlayd pod:\n{}",
        n1.log_text()
    );
    // Both ways counted for the static peer, with nothing dropped.
    let s = n1.status().unwrap();
    let peer = s
        .peers
        .iter()
        .find(|p| p.name.starts_with("static:"))
        .unwrap();
    assert!(peer.tx_packets > 0 && peer.rx_packets > 0, "{peer:?}");
}
