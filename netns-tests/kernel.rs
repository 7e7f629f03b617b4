//! Root-only tests of the kernel dataplane (`--dataplane kernel`): a vxlan device the
//! daemon programs, its nftables filter, and clusters that mix it with userspace
//! nodes and a plain kernel vxlan node. Each test creates and deletes its own
//! namespaces. Run with `cargo test --features netns-tests --test netns_kernel` as
//! root.

use std::net::UdpSocket;
use std::time::Duration;

use overlayd_test_support::cluster::{
    all_reach_all, lease_and_attach, logs, pod_ping, DaemonNode, TestCluster,
};
use overlayd_test_support::daemon::{DaemonProcess, Overlayd, StatusReport};
use overlayd_test_support::tools::{iperf3, ping_output, vxlan_icmp};
use overlayd_test_support::topology::{
    kernel_vxlan_node, kernel_vxlan_route, KernelVxlanPair, Pod,
};
use overlayd_test_support::{link, load, scratch_dir, wait_until, Netns};

const OVERLAYD: &str = env!("CARGO_BIN_EXE_overlayd");
const KERNEL: [&str; 2] = ["--dataplane", "kernel"];
const USERSPACE: [&str; 2] = ["--dataplane", "userspace"];

fn mode(status: &StatusReport) -> String {
    format!("{}", status.path.mode)
}

fn mode_of(n: &DaemonNode) -> String {
    n.status().map(|s| mode(&s)).unwrap_or_default()
}

/// Lines of `ip <args>` in `ns` (or `bridge <args>` with `bridge`).
fn lines(ns: &Netns, tool: &str, args: &[&str]) -> Vec<String> {
    let mut cmd = vec![tool];
    cmd.extend_from_slice(args);
    ns.exec(&cmd)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The kernel dataplane's entries on `ovlvx0` in `ns`: (neighbours, FDB, routes).
fn entries(ns: &Netns) -> (Vec<String>, Vec<String>, Vec<String>) {
    (
        lines(ns, "ip", &["neigh", "show", "dev", "ovlvx0"]),
        lines(ns, "bridge", &["fdb", "show", "dev", "ovlvx0"]),
        lines(ns, "ip", &["route", "show", "dev", "ovlvx0"]),
    )
}

/// Whether `ns` holds anything of the kernel dataplane: the device, the unreachable
/// cluster route, the nftables table.
fn kernel_leftovers(ns: &Netns) -> Vec<String> {
    let mut found = Vec::new();
    if ns.links("vxlan").iter().any(|l| l == "ovlvx0") {
        found.push("link ovlvx0".to_string());
    }
    for l in lines(ns, "ip", &["route"]) {
        if l.starts_with("unreachable 10.244.0.0/16") {
            found.push(format!("route {l}"));
        }
    }
    if ns
        .exec(&["nft", "list", "tables"])
        .contains("inet overlayd")
    {
        found.push("nft table inet overlayd".to_string());
    }
    found
}

/// Whether `ns` holds anything of the userspace dataplane: the TUN or its route.
fn userspace_leftovers(ns: &Netns) -> Vec<String> {
    let mut found: Vec<String> = lines(ns, "ip", &["link"])
        .into_iter()
        .filter(|l| l.contains("ovltun0"))
        .map(|l| format!("link {l}"))
        .collect();
    found.extend(
        lines(ns, "ip", &["route"])
            .into_iter()
            .filter(|l| l.contains("ovltun0"))
            .map(|l| format!("route {l}")),
    );
    found
}

/// Two gossip nodes in kernel mode, pods attached, every pod reaching every pod.
fn kernel_pair(cluster: &TestCluster) -> Vec<DaemonNode> {
    let mut nodes = vec![
        cluster.start_extra(1, "198.18.0.2", &KERNEL),
        cluster.start_extra(2, "198.18.0.1", &KERNEL),
    ];
    lease_and_attach(&mut nodes, Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(15), || all_reach_all(&nodes)),
        "{}\n{}",
        kernel_state(&nodes),
        logs(&nodes)
    );
    nodes
}

/// The kernel dataplane's state on each node, for failure messages.
fn kernel_state(nodes: &[DaemonNode]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "---- {} ----\n{:?}\n{}\n{}",
                n.name,
                entries(&n.ns),
                n.ns.exec(&["ip", "route"]),
                n.ns.exec(&["nft", "list", "ruleset"])
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn a_two_kernel_nodes_program_the_device_ping_and_count() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let nodes = kernel_pair(&cluster);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let s1 = n1.status().unwrap();
    assert_eq!(mode(&s1), "kernel", "{s1:?}");
    assert_eq!(s1.path.device, "ovlvx0");
    assert_eq!(s1.path.reason, "--dataplane kernel");

    // The device, as flannel's vxlan backend makes it.
    let link = n1.ns.exec(&["ip", "-d", "link", "show", "ovlvx0"]);
    for want in [
        "vxlan id 1 ",
        "local 198.18.0.1 ",
        "dstport 4789 ",
        "nolearning",
        "mtu 1450",
    ] {
        assert!(link.contains(want), "{want:?} not in {link}");
    }
    assert!(link.contains(&s1.node.vtep_mac.to_string()), "{link}");
    // One neighbour, FDB entry and route for the one peer.
    let s2 = n2.status().unwrap();
    let (subnet2, mac2) = (s2.node.subnet.unwrap(), s2.node.vtep_mac.to_string());
    let gw2 = overlayd::dataplane::gateway_of(&subnet2).to_string();
    let (neigh, fdb, routes) = entries(&n1.ns);
    assert_eq!(
        neigh,
        [format!("{gw2} lladdr {mac2} PERMANENT")],
        "{neigh:?}"
    );
    assert_eq!(
        fdb,
        [format!("{mac2} dst 198.18.0.2 self permanent")],
        "{fdb:?}"
    );
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(
        routes[0].starts_with(&format!("{subnet2} via {gw2} proto static src "))
            && routes[0].ends_with("onlink"),
        "{routes:?}"
    );
    // The node itself reaches the remote pod (from its gateway), and an address no
    // node owns gets an ICMP unreachable from the gateway at once.
    assert!(n1.ns.ping(n2.pod_ip()));
    let out = ping_output(&n1.pod().ns, "10.244.99.9");
    assert!(out.contains("Unreachable"), "{out}");

    // Per-peer counters come from nftables, totals from the device (sampled once a
    // second).
    assert!(n1.pod().ns.ping(n2.pod_ip()));
    let counted = wait_until(Duration::from_secs(10), || {
        n1.status().is_some_and(|s| {
            let p = &s.peers[0];
            p.tx_packets >= 3 && p.rx_packets >= 3 && s.dataplane.tx_packets >= 3
        })
    });
    assert!(counted, "{:?}", n1.status());
    // `overlayd status` has the kernel's counters read when it asks, so pings that
    // just ended are all in it, not only those before the last once-a-second copy.
    // (The pause lets the copy catch up with the traffic above, so that without the
    // read on request this check would see the copy's lag and fail.)
    std::thread::sleep(Duration::from_millis(1500));
    let before = n1.status().unwrap().peers[0].clone();
    n1.pod()
        .ns
        .exec(&["ping", "-q", "-c", "5", "-i", "0.2", "-W", "1", n2.pod_ip()]);
    let after = n1.status().unwrap().peers[0].clone();
    assert!(
        after.tx_packets >= before.tx_packets + 5 && after.rx_packets >= before.rx_packets + 5,
        "5 pings, counted from {before:?} to {after:?}"
    );
    assert!(after.last_heard_secs.is_some(), "{after:?}");
    let diagnosis = n1.daemon().client(&["diagnose", n2.pod_ip()]);
    let text = String::from_utf8_lossy(&diagnosis.stdout);
    assert!(
        text.starts_with("OK") && text.contains("[ok] kernel entries"),
        "{text}"
    );
    let metrics = n1.metric("overlayd_dataplane_mode{mode=\"kernel\"");
    assert_eq!(metrics, Some(1.0));
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn b_iperf3_between_kernel_mode_pods_beside_kernel_vxlan() {
    // Heavy: runs alone (see overlayd_test_support::load).
    let _load = load::heavy();
    let cluster = TestCluster::new(OVERLAYD);
    let nodes = kernel_pair(&cluster);
    let ours = iperf3(&nodes[1].pod().ns, &nodes[0].pod().ns, nodes[1].pod_ip(), 3);
    drop(nodes);
    let k = KernelVxlanPair::new();
    let kernel = iperf3(&k.p2.ns, &k.p1.ns, &k.p2.ip, 3);
    println!(
        "iperf3 pod-to-pod, 1 TCP stream, 3 s: overlayd --dataplane kernel {ours:.2} Gb/s, kernel vxlan {kernel:.2} Gb/s, ratio {:.2}",
        ours / kernel
    );
    assert!(ours > 0.0 && kernel > 0.0);
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn c_kernel_userspace_and_static_kernel_vxlan_nodes_reach_each_other() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    // n3: a plain kernel vxlan node (flannel-style), a static peer of both.
    let k3 = cluster.switch.node(3);
    let kmac = kernel_vxlan_node(&k3, "eth0", "198.18.0.3", 1, "10.244.200.0/24", 1450);
    let static_peer = format!("10.244.200.0/24,198.18.0.3,{kmac}");
    let mut nodes = vec![
        cluster.start_extra(
            1,
            "198.18.0.2",
            &["--dataplane", "kernel", "--static-peer", &static_peer],
        ),
        cluster.start_extra(
            2,
            "198.18.0.1",
            &["--dataplane", "userspace", "--static-peer", &static_peer],
        ),
    ];
    lease_and_attach(&mut nodes, Duration::from_secs(60));
    assert_eq!(mode_of(&nodes[0]), "kernel");
    assert_eq!(mode_of(&nodes[1]), "userspace");
    for n in &nodes {
        let s = n.status().unwrap();
        kernel_vxlan_route(
            &k3,
            &s.node.subnet.unwrap().to_string(),
            &s.node.vtep_mac.to_string(),
            &format!("198.18.0.{}", n.i),
        );
    }
    let p3 = Pod::attach(
        &k3,
        "cni0",
        "veth3",
        "10.244.200.2/24",
        "10.244.200.1",
        1450,
    );
    let reach = |from: &Netns, to: &str| wait_until(Duration::from_secs(10), || from.ping_once(to));
    assert!(
        wait_until(Duration::from_secs(15), || all_reach_all(&nodes)),
        "{}",
        logs(&nodes)
    );
    for n in &nodes {
        assert!(
            reach(&n.pod().ns, &p3.ip),
            "{} -> static kernel node\n{}",
            n.name,
            logs(&nodes)
        );
        assert!(
            reach(&p3.ns, n.pod_ip()),
            "static kernel node -> {}\n{}",
            n.name,
            logs(&nodes)
        );
    }
    // TCP both ways between the kernel-mode and the userspace node (inner checksums
    // left to the device by a kernel sender are completed on the userspace side).
    let (a, b) = (&nodes[0], &nodes[1]);
    assert!(iperf3(&b.pod().ns, &a.pod().ns, b.pod_ip(), 1) > 0.0);
    assert!(iperf3(&a.pod().ns, &b.pod().ns, a.pod_ip(), 1) > 0.0);
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn d_kill9_and_restart_in_kernel_mode_keeps_the_subnet_and_no_duplicates() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let mut nodes = kernel_pair(&cluster);
    let subnet1 = nodes[0].subnet().unwrap();
    nodes[0].daemon.as_mut().unwrap().kill9();
    // The device stays programmed while the daemon is down: traffic keeps flowing.
    assert!(pod_ping(&nodes[0], &nodes[1], 2), "{}", logs(&nodes));
    nodes[0].launch("198.18.0.2");
    assert!(
        wait_until(Duration::from_secs(30), || nodes[0].subnet().as_deref()
            == Some(subnet1.as_str())),
        "{}",
        logs(&nodes)
    );
    assert!(
        wait_until(Duration::from_secs(15), || all_reach_all(&nodes)),
        "{}",
        logs(&nodes)
    );
    let (neigh, fdb, routes) = entries(&nodes[0].ns);
    assert_eq!(
        (neigh.len(), fdb.len(), routes.len()),
        (1, 1, 1),
        "{neigh:?} {fdb:?} {routes:?}"
    );
    let links = nodes[0].ns.links("vxlan");
    assert_eq!(links, ["ovlvx0"], "one vxlan device");
    assert!(nodes[0]
        .log_text()
        .contains("reusing the existing vxlan device"));
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn e_a_mode_switch_across_a_restart_leaves_nothing_behind() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let mut nodes = kernel_pair(&cluster);
    assert_eq!(
        kernel_leftovers(&nodes[0].ns).len(),
        3,
        "kernel mode has its device, route and table"
    );

    // kernel -> userspace
    nodes[0].daemon.as_mut().unwrap().terminate();
    nodes[0].extra = USERSPACE.iter().map(|s| s.to_string()).collect();
    nodes[0].launch("198.18.0.2");
    assert_eq!(mode_of(&nodes[0]), "userspace");
    assert!(nodes[0]
        .log_text()
        .contains("removed the kernel dataplane an earlier run left"));
    assert_eq!(kernel_leftovers(&nodes[0].ns), Vec::<String>::new());
    assert!(lines(&nodes[0].ns, "ip", &["neigh", "show", "nud", "permanent"]).is_empty());
    assert!(
        wait_until(Duration::from_secs(15), || all_reach_all(&nodes)),
        "{}",
        logs(&nodes)
    );

    // userspace -> kernel
    nodes[0].daemon.as_mut().unwrap().kill9();
    nodes[0].extra = KERNEL.iter().map(|s| s.to_string()).collect();
    nodes[0].launch("198.18.0.2");
    assert_eq!(mode_of(&nodes[0]), "kernel");
    assert_eq!(userspace_leftovers(&nodes[0].ns), Vec::<String>::new());
    assert!(
        wait_until(Duration::from_secs(15), || all_reach_all(&nodes)),
        "{}",
        logs(&nodes)
    );
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn f_the_filter_drops_unknown_senders_and_spoofed_sources_and_delivers_the_rest() {
    let _load = load::shared();
    let dir = scratch_dir();
    let n1 = Netns::new("n");
    let n2 = Netns::new("n");
    link(&n1, "u1", "198.18.0.1/24", &n2, "u2", "198.18.0.2/24");
    let rogue = Netns::new("r");
    link(&n1, "u9", "198.18.0.9/24", &rogue, "r0", "198.18.0.10/24");
    let bin = Overlayd::at(OVERLAYD);
    let d1 = DaemonProcess::start(
        &bin,
        &n1,
        dir.path(),
        "n1",
        &[
            "--subnet",
            "10.244.1.0/24",
            "--advertise-addr",
            "198.18.0.1",
            "--vtep-mac",
            "02:00:00:00:01:01",
            "--static-peer",
            "10.244.2.0/24,198.18.0.2,02:00:00:00:02:01",
            "--dataplane",
            "kernel",
        ],
    );
    let pod = Pod::attach(&n1, "ovl0", "veth1", "10.244.1.2/24", "10.244.1.1", 1450);
    let echoes = || -> u64 {
        let out = pod.ns.exec(&["nstat", "-az", "IcmpInEchos"]);
        out.lines()
            .find_map(|l| l.strip_prefix("IcmpInEchos"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let mac1 = [2, 0, 0, 0, 1, 1];
    let good = vxlan_icmp(1, mac1, [10, 244, 2, 2], [10, 244, 1, 2]);
    let spoofed = vxlan_icmp(1, mac1, [10, 244, 7, 7], [10, 244, 1, 2]);
    let mut arp = good.clone();
    arp[20..22].copy_from_slice(&[0x08, 0x06]);
    let before = echoes();

    // A stranger: dropped as unknown_sender, never reaches the pod.
    rogue.run(|| {
        let s = UdpSocket::bind("198.18.0.10:0").unwrap();
        s.send_to(&good, "198.18.0.1:4789").unwrap();
    });
    // The member, with an inner source outside its subnet, and a non-IP frame.
    n2.run(|| {
        let s = UdpSocket::bind("198.18.0.2:0").unwrap();
        s.send_to(&spoofed, "198.18.0.1:4789").unwrap();
        s.send_to(&arp, "198.18.0.1:4789").unwrap();
    });
    let dropped = wait_until(Duration::from_secs(10), || {
        d1.drops("unknown_sender") == 1
            && d1.drops("spoofed_source") == 1
            && d1.drops("not_ip") == 1
    });
    assert!(
        dropped,
        "{:?}\n{}",
        d1.status().map(|s| s.dataplane),
        d1.log_text()
    );
    assert_eq!(echoes(), before, "a dropped datagram reached the pod");

    // The member's legitimate datagram is delivered.
    n2.run(|| {
        let s = UdpSocket::bind("198.18.0.2:0").unwrap();
        s.send_to(&good, "198.18.0.1:4789").unwrap();
    });
    assert!(
        wait_until(Duration::from_secs(5), || echoes() == before + 1),
        "the member's datagram was not delivered: {:?}",
        d1.status()
    );
    assert_eq!(d1.drops("unknown_sender"), 1);
    assert_eq!(d1.drops("spoofed_source"), 1);
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn g_auto_falls_back_to_userspace_when_the_vxlan_device_cannot_be_made() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    // The fault point (netns-tests builds only) fails the device's creation as a
    // kernel without the vxlan module does, before any request reaches the kernel.
    let fail = vec![("OVERLAYD_TEST_FAIL".to_string(), "vxlan_create".to_string())];
    let mut n1 = cluster.node(1);
    n1.env = fail.clone();
    n1.extra = vec!["--dataplane".into(), "auto".into()];
    n1.launch("198.18.0.2");
    let mut n2 = cluster.node(2);
    n2.extra = vec!["--dataplane".into(), "auto".into()];
    n2.launch("198.18.0.1");
    let mut nodes = vec![n1, n2];
    lease_and_attach(&mut nodes, Duration::from_secs(60));
    let s1 = nodes[0].status().unwrap();
    assert_eq!(mode(&s1), "userspace");
    assert!(
        s1.path
            .reason
            .starts_with("auto: the kernel dataplane cannot start")
            && s1.path.reason.contains("vxlan device"),
        "{}",
        s1.path.reason
    );
    assert_eq!(kernel_leftovers(&nodes[0].ns), Vec::<String>::new());
    let s2 = nodes[1].status().unwrap();
    assert_eq!(mode(&s2), "kernel", "without the fault auto picks kernel");
    assert_eq!(s2.path.reason, "auto: a vxlan device could be created");
    assert!(
        wait_until(Duration::from_secs(15), || all_reach_all(&nodes)),
        "{}",
        logs(&nodes)
    );

    // --dataplane kernel with the same fault exits and says why.
    let mut n3 = cluster.node(3);
    n3.env = fail;
    n3.extra = KERNEL.iter().map(|s| s.to_string()).collect();
    let (ok, out) = n3.launch_expect_exit("198.18.0.1");
    assert!(!ok, "{out}");
    assert!(
        out.contains("--dataplane kernel")
            && out.contains("vxlan device")
            && out.contains("--dataplane userspace"),
        "{out}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn h_a_dead_peer_loses_its_entries_and_its_pods_are_unreachable_at_once() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let mut nodes = kernel_pair(&cluster);
    let subnet2 = nodes[1].subnet().unwrap();
    let pod2 = nodes[1].pod_ip().to_string();
    nodes[1].daemon.as_mut().unwrap().kill9();
    let dead = wait_until(Duration::from_secs(90), || {
        nodes[0].peer_state("n2").as_deref() == Some("dead")
    });
    assert!(dead, "{}", logs(&nodes));
    let gone = wait_until(Duration::from_secs(10), || {
        let (neigh, fdb, routes) = entries(&nodes[0].ns);
        neigh.is_empty() && fdb.is_empty() && routes.is_empty()
    });
    assert!(gone, "{:?}", entries(&nodes[0].ns));
    let out = ping_output(&nodes[0].pod().ns, &pod2);
    assert!(out.contains("Unreachable"), "{subnet2}: {out}");
}
