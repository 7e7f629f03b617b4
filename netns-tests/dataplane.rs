//! Root-only tests of the dataplane on real TUN, veth, bridge and kernel VXLAN
//! devices, each in namespaces it creates and deletes. Run with
//! `cargo test --features netns-tests --test netns_dataplane` as root.

use std::net::UdpSocket;
use std::time::Duration;

use overlayd_test_support::capture::VxlanCapture;
use overlayd_test_support::daemon::{DaemonProcess, Overlayd};
use overlayd_test_support::tools::{http_get, iperf3, ping_output, vxlan_icmp};
use overlayd_test_support::topology::{
    kernel_vxlan_node, kernel_vxlan_route, KernelVxlanPair, Pod,
};
use overlayd_test_support::{link, load, scratch_dir, wait_until, Netns};

/// The daemon under test.
fn overlayd() -> Overlayd {
    Overlayd::at(env!("CARGO_BIN_EXE_overlayd"))
}

const M1: &str = "02:00:00:00:01:01";
const M2: &str = "02:00:00:00:02:01";

/// Two overlayd nodes on a veth underlay, a pod on each.
struct TwoNodes {
    p1: Pod,
    p2: Pod,
    d1: DaemonProcess,
    d2: DaemonProcess,
    n1: Netns,
    n2: Netns,
    _dir: overlayd_test_support::tempfile::TempDir,
}

fn two_nodes() -> TwoNodes {
    two_nodes_with(&[])
}

/// The same, with `extra` flags for both daemons.
fn two_nodes_with(extra: &[&str]) -> TwoNodes {
    two_nodes_each_with(extra, extra)
}

/// Two nodes as [`two_nodes_with`], with their own extra flags each.
fn two_nodes_each_with(extra1: &[&str], extra2: &[&str]) -> TwoNodes {
    let dir = scratch_dir();
    let n1 = Netns::new("n");
    let n2 = Netns::new("n");
    link(&n1, "u1", "198.18.0.1/24", &n2, "u2", "198.18.0.2/24");
    let peer2 = format!("10.244.2.0/24,198.18.0.2,{M2}");
    let peer1 = format!("10.244.1.0/24,198.18.0.1,{M1}");
    fn args<'a>(
        subnet: &'a str,
        addr: &'a str,
        mac: &'a str,
        peer: &'a str,
        extra: &[&'a str],
    ) -> Vec<&'a str> {
        let mut v = vec![
            "--subnet",
            subnet,
            "--advertise-addr",
            addr,
            "--vtep-mac",
            mac,
            "--static-peer",
            peer,
        ];
        v.extend_from_slice(extra);
        v
    }
    let d1 = DaemonProcess::start(
        &overlayd(),
        &n1,
        dir.path(),
        "n1",
        &args("10.244.1.0/24", "198.18.0.1", M1, &peer2, extra1),
    );
    let d2 = DaemonProcess::start(
        &overlayd(),
        &n2,
        dir.path(),
        "n2",
        &args("10.244.2.0/24", "198.18.0.2", M2, &peer1, extra2),
    );
    let p1 = Pod::attach(&n1, "ovl0", "veth1", "10.244.1.2/24", "10.244.1.1", 1450);
    let p2 = Pod::attach(&n2, "ovl0", "veth2", "10.244.2.2/24", "10.244.2.1", 1450);
    TwoNodes {
        p1,
        p2,
        d1,
        d2,
        n1,
        n2,
        _dir: dir,
    }
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn a_two_overlayd_nodes_ping_and_iperf3_beside_kernel_vxlan() {
    // Heavy: runs alone (see overlayd_test_support::load).
    let _load = load::heavy();
    let t = two_nodes();
    assert!(
        t.p1.ns.ping(&t.p2.ip),
        "pod 1 cannot reach pod 2:\n{}",
        t.d1.log_text()
    );
    assert!(
        t.p2.ns.ping(&t.p1.ip),
        "pod 2 cannot reach pod 1:\n{}",
        t.d2.log_text()
    );
    // The node itself reaches a remote pod too (source: its gateway address).
    assert!(t.n1.ping(&t.p2.ip));
    // An address no node owns: the pod hears "net unreachable" from its gateway.
    let out = ping_output(&t.p1.ns, "10.244.99.9");
    assert!(
        out.contains("From 10.244.1.1") && out.contains("Net Unreachable"),
        "{out}"
    );

    let status = t.d1.status().unwrap();
    let peer = &status.peers[0];
    assert_eq!(peer.subnet.to_string(), "10.244.2.0/24");
    assert!(peer.tx_packets >= 3, "{status:?}");
    assert!(peer.rx_packets >= 3, "{status:?}");
    assert_eq!(status.node.mtu, 1450);

    // node.json is what the CNI plugin reads.
    let node: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.d1.run_dir.join("node.json")).unwrap())
            .unwrap();
    assert_eq!(node["subnet"], "10.244.1.0/24");
    assert_eq!(node["gateway"], "10.244.1.1");
    assert_eq!(node["bridge"], "ovl0");

    let ours = iperf3(&t.p2.ns, &t.p1.ns, &t.p2.ip, 3);

    // The same topology with kernel VXLAN (flannel's vxlan backend), measured now.
    let k = KernelVxlanPair::new();
    let kernel = iperf3(&k.p2.ns, &k.p1.ns, &k.p2.ip, 3);

    println!("iperf3 pod-to-pod, 1 TCP stream, 3 s: overlayd {ours:.2} Gb/s, kernel vxlan {kernel:.2} Gb/s, ratio {:.2}", ours / kernel);
    assert!(ours > 0.0 && kernel > 0.0);
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn b_overlayd_and_kernel_vxlan_node_interoperate() {
    let _load = load::shared();
    let dir = scratch_dir();
    let n1 = Netns::new("n");
    let k2 = Netns::new("k");
    link(&n1, "u1", "198.18.0.1/24", &k2, "u2", "198.18.0.2/24");
    let kmac = kernel_vxlan_node(&k2, "u2", "198.18.0.2", 1, "10.244.2.0/24", 1450);
    kernel_vxlan_route(&k2, "10.244.1.0/24", M1, "198.18.0.1");
    let peer = format!("10.244.2.0/24,198.18.0.2,{kmac}");
    let d1 = DaemonProcess::start(
        &overlayd(),
        &n1,
        dir.path(),
        "n1",
        &[
            "--subnet",
            "10.244.1.0/24",
            "--advertise-addr",
            "198.18.0.1",
            "--vtep-mac",
            M1,
            "--static-peer",
            &peer,
        ],
    );
    let p1 = Pod::attach(&n1, "ovl0", "veth1", "10.244.1.2/24", "10.244.1.1", 1450);
    let p2 = Pod::attach(&k2, "cni0", "veth2", "10.244.2.2/24", "10.244.2.1", 1450);
    assert!(
        p1.ns.ping(&p2.ip),
        "overlayd pod cannot reach kernel pod:\n{}",
        d1.log_text()
    );
    assert!(
        p2.ns.ping(&p1.ip),
        "kernel pod cannot reach overlayd pod:\n{}",
        d1.log_text()
    );
    // The kernel node's own .0 address (its source for node traffic) is reachable too.
    assert!(k2.ping(&p1.ip));
    let status = d1.status().unwrap();
    assert!(status.peers[0].rx_packets >= 3, "{status:?}");
    assert!(
        !status.dataplane.drops.contains_key("spoofed_source"),
        "{status:?}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn c_garbage_is_counted_by_reason_and_forwarding_continues() {
    let _load = load::shared();
    let t = two_nodes();
    // A stranger on the underlay, not a peer.
    let rogue = Netns::new("r");
    link(&t.n1, "u9", "198.18.0.9/24", &rogue, "r0", "198.18.0.10/24");
    // The garbage below arrives after real traffic has been flowing.
    assert!(t.p1.ns.ping(&t.p2.ip));

    let mac1 = [2, 0, 0, 0, 1, 1];
    let good = vxlan_icmp(1, mac1, [10, 244, 2, 2], [10, 244, 1, 2]);
    let mut bad_flags = good.clone();
    bad_flags[0] = 0x0c;
    let mut bad_vni = good.clone();
    bad_vni[6] = 7;
    let mut lying = good.clone();
    lying[22 + 2..22 + 4].copy_from_slice(&1400u16.to_be_bytes());
    let mut wrong_mac = good.clone();
    wrong_mac[8..14].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
    let mut arp = good.clone();
    arp[20..22].copy_from_slice(&[0x08, 0x06]);
    let spoofed = vxlan_icmp(1, mac1, [10, 244, 7, 7], [10, 244, 1, 2]);

    // From the real peer's underlay address (another port than its VXLAN socket's).
    t.n2.run(|| {
        let s = UdpSocket::bind("198.18.0.2:0").unwrap();
        for d in [
            &good[..5],
            &bad_flags,
            &bad_vni,
            &lying,
            &wrong_mac,
            &arp,
            &spoofed,
        ] {
            s.send_to(d, "198.18.0.1:4789").unwrap();
        }
    });
    // From an address that is no peer.
    rogue.run(|| {
        let s = UdpSocket::bind("198.18.0.10:0").unwrap();
        s.send_to(&good, "198.18.0.1:4789").unwrap();
    });

    let expected = [
        "short_datagram",
        "bad_flags",
        "bad_vni",
        "malformed_inner",
        "wrong_dst_mac",
        "not_ip",
        "spoofed_source",
        "unknown_sender",
    ];
    let counted = wait_until(Duration::from_secs(5), || {
        expected.iter().all(|r| t.d1.drops(r) >= 1)
    });
    let status = t.d1.status().unwrap();
    assert!(
        counted,
        "not every reason was counted: {:?}",
        status.dataplane
    );
    for r in expected {
        assert_eq!(t.d1.drops(r), 1, "{r}: {:?}", status.dataplane);
    }
    // Four of them came from the known peer after it was identified (wrong MAC, ARP,
    // lying length, spoofed source): they count against that peer.
    let peer = &status.peers[0];
    assert_eq!(peer.rx_dropped, 4, "{peer:?}");
    // The same counters on /metrics, with per-peer traffic and the peer gauge.
    let (code, metrics) = http_get(&t.n1, "127.0.0.1:9469", "/metrics");
    assert_eq!(code, 200);
    for line in [
        r#"overlayd_dataplane_drops_total{direction="rx",reason="bad_vni"} 1"#,
        r#"overlayd_dataplane_drops_total{direction="rx",reason="unknown_sender"} 1"#,
        r#"overlayd_dataplane_drops_total{direction="rx",reason="malformed_inner"} 1"#,
        r#"overlayd_peers{state="alive"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line} in:\n{metrics}"
        );
    }
    let peer_rx = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                r#"overlayd_peer_packets_total{peer="static:10.244.2.0/24",direction="rx"}"#,
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .expect("per-peer rx counter");
    assert!(peer_rx >= 3, "{metrics}");
    // The histogram is cumulative: its +Inf bucket is its count.
    let value = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
    };
    assert_eq!(
        value(r#"overlayd_dataplane_batch_size_bucket{le="+Inf",direction="rx"}"#),
        value(r#"overlayd_dataplane_batch_size_count{direction="rx"}"#),
        "{metrics}"
    );
    assert_eq!(http_get(&t.n1, "127.0.0.1:9469", "/healthz").0, 200);
    assert_eq!(http_get(&t.n1, "127.0.0.1:9469", "/nope").0, 404);

    // The daemon is alive and still forwards.
    assert!(
        t.p1.ns.ping(&t.p2.ip),
        "forwarding stopped after garbage:\n{}",
        t.d1.log_text()
    );
    assert!(t.p2.ns.ping(&t.p1.ip));
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn d_restart_repairs_setup_and_keeps_vtep_mac() {
    let _load = load::shared();
    let dir = scratch_dir();
    let n1 = Netns::new("n");
    let n2 = Netns::new("n");
    link(&n1, "u1", "198.18.0.1/24", &n2, "u2", "198.18.0.2/24");
    let mut d = DaemonProcess::start(
        &overlayd(),
        &n1,
        dir.path(),
        "n1",
        &[
            "--subnet",
            "10.244.1.0/24",
            "--advertise-addr",
            "198.18.0.1",
        ],
    );
    let mac = d.status().unwrap().node.vtep_mac.to_string();
    assert!(
        d.terminate(),
        "SIGTERM did not give a clean exit:\n{}",
        d.log_text()
    );
    // The TUN and its route are gone with the process; the bridge stays for the pods.
    assert!(!n1.ip(&["link"]).contains("ovltun0"));
    assert!(n1.ip(&["addr", "show", "ovl0"]).contains("10.244.1.1/24"));

    // Same subnet again: everything is reused.
    let mut d = DaemonProcess::start_with(
        &overlayd(),
        &n1,
        d.dirs(),
        "n1",
        &[
            "--subnet",
            "10.244.1.0/24",
            "--advertise-addr",
            "198.18.0.1",
        ],
    );
    assert_eq!(d.status().unwrap().node.vtep_mac.to_string(), mac);
    assert!(d.terminate());

    // A different subnet: the old gateway address and its route are removed. Without
    // --advertise-addr, the address of the default-route interface is used.
    n1.ip(&["route", "add", "default", "via", "198.18.0.2"]);
    let d = DaemonProcess::start_with(
        &overlayd(),
        &n1,
        d.dirs(),
        "n1",
        &["--subnet", "10.244.5.0/24"],
    );
    assert_eq!(
        d.status().unwrap().node.advertise_addr.to_string(),
        "198.18.0.1"
    );
    let addrs = n1.ip(&["addr", "show", "ovl0"]);
    assert!(
        addrs.contains("10.244.5.1/24") && !addrs.contains("10.244.1.1"),
        "{addrs}"
    );
    let routes = n1.ip(&["route"]);
    assert!(
        routes.contains("10.244.0.0/16 dev ovltun0") && !routes.contains("10.244.1.0/24"),
        "{routes}"
    );
    assert_eq!(d.status().unwrap().node.vtep_mac.to_string(), mac);
    let node = std::fs::read_to_string(d.run_dir.join("node.json")).unwrap();
    assert!(node.contains("10.244.5.0/24"), "{node}");
    assert!(n2.ping("198.18.0.1"));
}

/// CPU seconds (user + system) the process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn f_busy_poll_spins_while_traffic_flows_and_sleeps_after() {
    let _load = load::shared();
    // Node 1 polls; node 2 does not and carries the same packets (each ping crosses
    // both daemons once each way), so its CPU time is the baseline in the same run.
    let t = two_nodes_each_with(
        &["--busy-poll", "20ms", "--workers", "1"],
        &["--workers", "1"],
    );
    assert!(
        t.p1.ns.ping(&t.p2.ip),
        "pod 1 cannot reach pod 2 with --busy-poll:\n{}",
        t.d1.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(5), || t
            .d1
            .log_text()
            .contains("busy polling on")),
        "the log does not say busy polling is on:\n{}",
        t.d1.log_text()
    );
    let pid = t.d1.pid().expect("daemon 1 runs");
    let pid2 = t.d2.pid().expect("daemon 2 runs");

    // A ping every 5 ms keeps arriving within the 20 ms window: the worker polls
    // the whole time instead of sleeping between packets.
    let c0 = cpu_seconds(pid);
    let b0 = cpu_seconds(pid2);
    let out =
        t.p1.ns
            .exec(&["ping", "-c", "300", "-i", "0.005", "-q", &t.p2.ip]);
    let busy = cpu_seconds(pid) - c0;
    let baseline = cpu_seconds(pid2) - b0;
    assert!(out.contains(" 0% packet loss"), "{out}");
    // Idle: after the window the worker sleeps in poll again.
    std::thread::sleep(Duration::from_millis(300));
    let c1 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_millis(1500));
    let idle = cpu_seconds(pid) - c1;
    println!(
        "--busy-poll 20ms: {busy:.2} CPU s during 1.5 s of pings ({baseline:.2} CPU s without \
         busy polling, same packets), {idle:.2} CPU s in 1.5 s idle"
    );
    // Bounds 10x away from what this machine takes: busy 0.32-1.17 CPU s over runs here
    // (less when the cores are shared), so at least 0.03; and a daemon without busy polling
    // carrying the same pings takes about 0.01-0.03, so polling must show at least 3x that
    // (about 30x typical). Idle 0.00 (the clock ticks at 0.01 s).
    assert!(
        busy >= 0.03 && busy >= 3.0 * baseline,
        "the worker did not poll between pings: {busy:.2} CPU s in 1.5 s, against \
         {baseline:.2} CPU s for a daemon without --busy-poll"
    );
    assert!(
        idle <= 0.15,
        "the worker kept polling after traffic stopped: {idle:.2} CPU s in 1.5 s idle"
    );
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn e_each_flow_leaves_from_its_own_source_port_on_several_workers() {
    let _load = load::shared();
    let t = two_nodes_with(&["--workers", "2"]);
    assert!(t.p1.ns.ping(&t.p2.ip), "{}", t.d1.log_text());
    assert!(
        t.d1.log_text().contains("2 worker thread(s)"),
        "{}",
        t.d1.log_text()
    );
    // Capture the underlay in n2 while pod 1 sends 3 datagrams on each of 12 flows. The
    // capture is open before the first datagram leaves, and reads every segment of the
    // GSO super-packets veth hands it (flows that share an outer source port ride in
    // one).
    let capture = t.n2.run(|| VxlanCapture::open("u2"));
    t.p1.ns.run(|| {
        for port in 0..12u16 {
            let sock = UdpSocket::bind(("10.244.1.2", 41000 + port)).unwrap();
            for _ in 0..3 {
                sock.send_to(b"flow", (t.p2.ip.as_str(), 9)).unwrap();
            }
        }
    });
    let captured = capture.read_for(Duration::from_secs(3));
    // Inner source port -> the outer source ports its datagrams left from.
    let mut by_flow: std::collections::BTreeMap<u16, std::collections::BTreeSet<u16>> =
        Default::default();
    for d in captured {
        if (41000..41012).contains(&d.inner_sport) {
            by_flow
                .entry(d.inner_sport)
                .or_default()
                .insert(d.outer_sport);
        }
    }
    assert_eq!(by_flow.len(), 12, "{by_flow:?}");
    let outer: std::collections::BTreeSet<u16> = by_flow.values().flatten().copied().collect();
    for (flow, ports) in &by_flow {
        assert_eq!(ports.len(), 1, "flow {flow} left from {ports:?}");
    }
    assert!(outer.len() >= 3, "12 flows over {outer:?}");
    assert!(!outer.contains(&4789), "{outer:?}");
    // Both directions still count into one status.
    let status = t.d2.status().unwrap();
    assert!(status.dataplane.rx_packets >= 36, "{status:?}");
}
