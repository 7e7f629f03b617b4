//! Root-only tests of gossip membership and subnet leases with real daemons in
//! network namespaces on a shared underlay switch. Run with
//! `cargo test --features netns-tests --test netns_control` as root.

use std::time::{Duration, Instant};

use overlayd_test_support::cluster::{
    all_reach_all, assert_distinct, lease_and_attach, logs, pod_ping, DaemonNode, TestCluster,
};
use overlayd_test_support::daemon::{peer, DaemonProcess};
use overlayd_test_support::tools::{http_get, ping_output, vxlan_icmp};
use overlayd_test_support::{load, wait_until};

/// The daemon under test.
const OVERLAYD: &str = env!("CARGO_BIN_EXE_overlayd");

/// `overlayd diagnose IP --json` against `node`: (exit success, verdict).
fn diagnose(node: &DaemonNode, ip: &str) -> (bool, serde_json::Value) {
    let out = std::process::Command::new(OVERLAYD)
        .args(["diagnose", ip, "--json", "--run-dir"])
        .arg(&node.daemon().run_dir)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "diagnose {ip}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn a_five_nodes_one_seed_each_get_distinct_subnets_and_all_pods_ping() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let start = Instant::now();
    // n1 founds the cluster (it lists itself first); every other node knows one other node.
    let mut nodes = vec![cluster.start(1, "198.18.0.1,198.18.0.5")];
    for i in 2..=5u8 {
        nodes.push(cluster.start(i, &format!("198.18.0.{}", i - 1)));
    }
    let refs: Vec<&DaemonNode> = nodes.iter().collect();
    // Every bound below is a guard against a hang, 10x or more what this machine takes
    // (wait_until prints each wait beside its bound): leases 2.4-2.9 s (a join after a
    // key rotation 3.7 s), the whole five-node mesh 3.5 s, a death 6 s.
    let leased = wait_until(Duration::from_secs(45), || {
        refs.iter().all(|n| n.subnet().is_some())
    });
    assert!(leased, "not every node got a subnet:\n{}", logs(&refs));
    assert_distinct(&refs);
    for n in nodes.iter_mut() {
        assert!(n.attach_pod());
    }
    let refs: Vec<&DaemonNode> = nodes.iter().collect();
    let ok = wait_until(
        Duration::from_secs(60)
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(1)),
        || all_reach_all(&refs),
    );
    let took = start.elapsed();
    assert!(
        ok,
        "pods do not all reach each other {took:?} after the start:\n{}",
        logs(&refs)
    );
    // The figure to watch (3.5 s here) is printed; the wait above bounds it at 60 s.
    println!("five nodes: distinct subnets and a full ping mesh {took:.1?} after the start");

    // /metrics on n1: leases, peers by state and gossip traffic.
    let metrics_ok = wait_until(Duration::from_secs(10), || {
        let (_, m) = http_get(&nodes[0].ns, "127.0.0.1:9469", "/metrics");
        let value = |name: &str| {
            m.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        value("overlayd_leases_used ") == Some(5.0)
            && value("overlayd_leases_free ") == Some(251.0)
            && value(r#"overlayd_peers{state="alive"}"#) == Some(4.0)
            && value(r#"overlayd_gossip_messages_total{direction="rx"}"#).is_some_and(|v| v > 0.0)
            && value(r#"overlayd_gossip_bytes_total{direction="tx"}"#).is_some_and(|v| v > 0.0)
    });
    assert!(
        metrics_ok,
        "{}",
        http_get(&nodes[0].ns, "127.0.0.1:9469", "/metrics").1
    );
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn b_killed_node_is_declared_dead_and_comes_back_with_its_subnet() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let mut nodes = vec![cluster.start(1, "")];
    for i in 2..=3u8 {
        nodes.push(cluster.start(i, "198.18.0.1"));
    }
    let refs: Vec<&DaemonNode> = nodes.iter().collect();
    assert!(
        wait_until(Duration::from_secs(45), || refs
            .iter()
            .all(|n| n.subnet().is_some())),
        "{}",
        logs(&refs)
    );
    for n in nodes.iter_mut() {
        assert!(n.attach_pod());
    }
    let refs: Vec<&DaemonNode> = nodes.iter().collect();
    assert!(
        wait_until(Duration::from_secs(10), || all_reach_all(&refs)),
        "{}",
        logs(&refs)
    );
    let subnet3 = nodes[2].subnet().unwrap();
    let pod3 = nodes[2].pod_ip().to_string();

    // kill -9 n3: the others declare it dead (5.9 s here, printed) and stop forwarding
    // to it.
    nodes[2].daemon.as_mut().unwrap().kill9();
    let killed = Instant::now();
    let dead = wait_until(Duration::from_secs(90), || {
        nodes[0].peer_state("n3").as_deref() == Some("dead")
            && nodes[1].peer_state("n3").as_deref() == Some("dead")
    });
    assert!(
        dead,
        "n3 not declared dead within 90 s: {:?}\n{}",
        nodes[0].peer_state("n3"),
        logs(&[&nodes[0], &nodes[1]])
    );
    println!("n3 declared dead {:.1?} after kill -9", killed.elapsed());
    // diagnose explains it, and tells a healthy pod, an unowned address and a
    // non-cluster address apart.
    let (ok, d) = diagnose(&nodes[0], &pod3);
    assert!(
        !ok && d["verdict"].as_str().unwrap().contains("declared dead") && d["owner"] == "n3",
        "{d}"
    );
    let (ok, d) = diagnose(&nodes[0], nodes[1].pod_ip());
    assert!(ok && d["reachable"] == true && d["owner"] == "n2", "{d}");
    let (ok, d) = diagnose(&nodes[0], "10.244.250.9");
    assert!(
        !ok && d["verdict"].as_str().unwrap().contains("no node owns"),
        "{d}"
    );
    let (ok, d) = diagnose(&nodes[0], "192.0.2.1");
    assert!(
        !ok && d["verdict"].as_str().unwrap().contains("not a pod address"),
        "{d}"
    );
    let (ok, d) = diagnose(&nodes[0], nodes[0].pod_ip());
    assert!(
        ok && d["verdict"].as_str().unwrap().contains("local pod"),
        "{d}"
    );
    // The parts of status: peers with their state and last-heard time, and leases.
    let peers = std::process::Command::new(OVERLAYD)
        .args(["status", "peers", "--run-dir"])
        .arg(&nodes[0].daemon().run_dir)
        .output()
        .unwrap();
    let peers = String::from_utf8_lossy(&peers.stdout);
    assert!(
        peers.contains("LAST HEARD")
            && peers
                .lines()
                .any(|l| l.contains("n3") && l.contains("dead")),
        "{peers}"
    );
    let leases = std::process::Command::new(OVERLAYD)
        .args(["status", "leases", "--run-dir"])
        .arg(&nodes[0].daemon().run_dir)
        .output()
        .unwrap();
    let leases = String::from_utf8_lossy(&leases.stdout);
    assert!(
        leases.contains("lease") && leases.contains("subnets in use"),
        "{leases}"
    );

    // A pod that pings the dead node's pod hears "host unreachable" from its gateway.
    let out = ping_output(&nodes[0].pod.as_ref().unwrap().ns, &pod3);
    assert!(out.contains("Host Unreachable"), "{out}");
    let before = nodes[0].daemon().drops("peer_dead");
    assert!(!nodes[0]
        .pod
        .as_ref()
        .unwrap()
        .ns
        .try_exec(&["ping", "-c", "1", "-W", "1", "-q", &pod3]));
    assert!(
        nodes[0].daemon().drops("peer_dead") > before,
        "traffic to the dead peer was not counted as peer_dead"
    );
    let status = nodes[0].status().unwrap();
    let n3 = peer(&status, "n3");
    assert!(n3.tx_dropped > 0, "{n3:?}");

    // VXLAN from the dead node's underlay address (a node that gossip has given up
    // on, or someone sending as it) is dropped as dead_sender, not forwarded.
    let before = nodes[0].daemon().drops("dead_sender");
    let rx_before = n3.rx_dropped;
    let mac = status.node.vtep_mac.0;
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let datagram = vxlan_icmp(1, mac, ip(&pod3), ip(nodes[0].pod_ip()));
    nodes[2].ns.run(|| {
        let s = std::net::UdpSocket::bind("198.18.0.3:0").unwrap();
        for _ in 0..5 {
            s.send_to(&datagram, "198.18.0.1:4789").unwrap();
        }
    });
    assert!(
        wait_until(Duration::from_secs(5), || nodes[0]
            .daemon()
            .drops("dead_sender")
            >= before + 5),
        "datagrams from the dead n3 were not counted as dead_sender: {} -> {}",
        before,
        nodes[0].daemon().drops("dead_sender")
    );
    let status = nodes[0].status().unwrap();
    let n3 = peer(&status, "n3");
    assert!(n3.rx_dropped >= rx_before + 5, "{n3:?}");

    // Restart n3 with its state: it gets the same subnet, and traffic resumes.
    drop(nodes[2].daemon.take());
    nodes[2].launch("198.18.0.1");
    assert!(
        wait_until(Duration::from_secs(15), || nodes[2].subnet().is_some()),
        "{}",
        logs(&[&nodes[2]])
    );
    assert_eq!(
        nodes[2].subnet().unwrap(),
        subnet3,
        "n3 came back with another subnet"
    );
    let refs: Vec<&DaemonNode> = nodes.iter().collect();
    assert!(
        wait_until(Duration::from_secs(15), || all_reach_all(&refs)),
        "traffic did not resume:\n{}",
        logs(&refs)
    );
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn c_partition_with_joins_on_both_sides_then_heal() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let mut nodes = vec![cluster.start(1, "")];
    for i in 2..=5u8 {
        nodes.push(cluster.start(i, "198.18.0.1"));
    }
    let refs: Vec<&DaemonNode> = nodes.iter().collect();
    assert!(
        wait_until(Duration::from_secs(45), || refs
            .iter()
            .all(|n| n.subnet().is_some())),
        "{}",
        logs(&refs)
    );
    assert_distinct(&refs);

    // Cut {n1,n2} from {n3,n4,n5}; start n6 on the small side and n7 on the large one.
    cluster.switch.plug(1, "br1");
    cluster.switch.plug(2, "br1");
    let n6 = cluster.start(6, "198.18.0.1");
    cluster.switch.plug(6, "br1");
    nodes.push(n6);
    nodes.push(cluster.start(7, "198.18.0.3"));
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        assert_distinct(&nodes.iter().collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(300));
    }

    // Heal, then every node has a distinct subnet and every pod reaches every pod.
    for i in [1, 2, 6] {
        cluster.switch.plug(i, "br0");
    }
    let refs: Vec<&DaemonNode> = nodes.iter().collect();
    let leased = wait_until(Duration::from_secs(20), || {
        assert_distinct(&refs);
        refs.iter().all(|n| n.subnet().is_some())
    });
    assert!(
        leased,
        "after the heal not every node has a subnet:\n{}",
        logs(&refs)
    );
    for n in nodes.iter_mut() {
        assert!(n.attach_pod());
    }
    let refs: Vec<&DaemonNode> = nodes.iter().collect();
    assert!(
        wait_until(Duration::from_secs(15), || all_reach_all(&refs)),
        "pods do not all reach each other after the heal:\n{}",
        logs(&refs)
    );
    assert_distinct(&refs);
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn d_leave_releases_the_subnet_and_stops_the_daemon() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let mut nodes = vec![cluster.start(1, "")];
    for i in 2..=3u8 {
        nodes.push(cluster.start(i, "198.18.0.1"));
    }
    let refs: Vec<&DaemonNode> = nodes.iter().collect();
    assert!(
        wait_until(Duration::from_secs(45), || refs
            .iter()
            .all(|n| n.subnet().is_some())),
        "{}",
        logs(&refs)
    );
    let used = |n: &DaemonNode| {
        n.daemon()
            .status()
            .and_then(|s| s.control.map(|c| c.leases_used))
    };
    assert!(
        wait_until(Duration::from_secs(10), || used(&nodes[0]) == Some(3)),
        "{:?}",
        used(&nodes[0])
    );

    let run3 = nodes[2].daemon().run_dir.clone();
    let out = std::process::Command::new(OVERLAYD)
        .args(["leave", "--run-dir"])
        .arg(&run3)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "overlayd leave: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon stops, and no longer offers its subnet to pods.
    assert!(
        wait_until(Duration::from_secs(10), || nodes[2]
            .daemon()
            .status()
            .is_none()),
        "n3 still answers after leave"
    );
    assert!(
        !run3.join("node.json").exists(),
        "node.json left behind after leave"
    );
    // The others see the subnet handed back.
    let released = wait_until(Duration::from_secs(15), || used(&nodes[0]) == Some(2));
    assert!(
        released,
        "n1 still counts {:?} leases:\n{}",
        used(&nodes[0]),
        logs(&[&nodes[0]])
    );
    // `leave` on a daemon that is gone says so.
    let out = std::process::Command::new(OVERLAYD)
        .args(["leave", "--run-dir"])
        .arg(&run3)
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not running"));
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn e_cluster_key_keeps_out_other_keys_and_rotates_on_sighup() {
    let _load = load::shared();
    const K1: &str = "e-test cluster key one, 32 bytes";
    const K2: &str = "e-test cluster key two, 32 bytes";
    let cluster = TestCluster::new(OVERLAYD);
    let keyfile = |name: &str, text: &str| {
        let p = cluster.dir().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (f1, f2) = (keyfile("k1", K1), keyfile("k2", K1));
    let f3 = keyfile("k3", &format!("{K2}\n{K1}\n"));
    let mut nodes = vec![
        cluster.start_extra(1, "", &["--secret-file", &f1]),
        cluster.start_extra(2, "198.18.0.1", &["--secret-file", &f2]),
    ];
    let refs: Vec<&DaemonNode> = nodes.iter().collect();
    assert!(
        wait_until(Duration::from_secs(45), || refs
            .iter()
            .all(|n| n.subnet().is_some())),
        "{}",
        logs(&refs)
    );
    // n3 signs with K2 (and accepts K1); n4 has no key at all.
    nodes.push(cluster.start_extra(3, "198.18.0.1", &["--secret-file", &f3]));
    nodes.push(cluster.start(4, "198.18.0.1"));
    let rejected = |n: &DaemonNode, reason: &str| {
        n.daemon()
            .status()
            .and_then(|s| s.control?.gossip_rejected.get(reason).copied())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(10), || rejected(
            &nodes[0],
            "unknown_key"
        ) > 0
            && rejected(&nodes[0], "unsigned") > 0),
        "n1 did not count the rejections:\n{}",
        logs(&[&nodes[0]])
    );
    std::thread::sleep(Duration::from_secs(5));
    for outsider in &nodes[2..] {
        assert_eq!(outsider.subnet(), None, "{} got a subnet", outsider.name);
        assert_eq!(nodes[0].peer_state(&outsider.name), None);
    }
    let log1 = nodes[0].daemon().log_text();
    assert!(
        log1.contains("rejected gossip from 198.18.0.3")
            && log1.contains("not in our --secret-file"),
        "{log1}"
    );
    assert!(
        log1.contains("rejected gossip from 198.18.0.4") && log1.contains("unsigned gossip"),
        "{log1}"
    );
    assert!(nodes[3]
        .daemon()
        .log_text()
        .contains("gossip is NOT authenticated"));
    let text = |n: &DaemonNode| {
        let out = std::process::Command::new(OVERLAYD)
            .args(["status", "--run-dir"])
            .arg(&n.daemon().run_dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(text(&nodes[3]).contains("WARNING: gossip is not authenticated"));
    assert!(
        text(&nodes[0]).contains("cluster key "),
        "{}",
        text(&nodes[0])
    );
    let (_, metrics) = http_get(&nodes[0].ns, "127.0.0.1:9469", "/metrics");
    assert!(
        metrics.contains("overlayd_gossip_rejected_total{reason=\"unknown_key\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("overlayd_gossip_auth_keys 1"), "{metrics}");

    assert_least_privilege(nodes[0].daemon());

    // Rotation step 1 on the cluster: accept K2 as well, reloaded with SIGHUP.
    std::fs::write(&f1, format!("{K1}\n{K2}\n")).unwrap();
    std::fs::write(&f2, format!("{K1}\n{K2}\n")).unwrap();
    nodes[0].daemon().signal(libc::SIGHUP);
    nodes[1].daemon().signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(60), || nodes[2].subnet().is_some()),
        "n3 did not join after the rotation:\n{}",
        logs(&[&nodes[0], &nodes[2]])
    );
    assert!(nodes[0]
        .daemon()
        .log_text()
        .contains("SIGHUP: reloaded the cluster key"));
    assert_eq!(nodes[3].subnet(), None, "the keyless node got in");
    let members = [&nodes[0], &nodes[1], &nodes[2]];
    assert_distinct(&members);
    for n in nodes[..3].iter_mut() {
        assert!(n.attach_pod());
    }
    let members = [&nodes[0], &nodes[1], &nodes[2]];
    assert!(
        wait_until(Duration::from_secs(10), || all_reach_all(&members)),
        "pods do not reach each other after the rotation:\n{}",
        logs(&members)
    );
    // A bad file on SIGHUP keeps the keys in use.
    std::fs::write(&f1, "short\n").unwrap();
    nodes[0].daemon().signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || nodes[0]
        .daemon()
        .log_text()
        .contains("keeping the keys in use")));
    assert!(wait_until(Duration::from_secs(5), || all_reach_all(
        &members
    )));
}

/// Every thread of the daemon holds CAP_NET_ADMIN only (effective, permitted,
/// bounding), nothing ambient, with no_new_privs; its files are root's alone.
fn assert_least_privilege(d: &DaemonProcess) {
    use std::os::unix::fs::PermissionsExt;
    let pid = d.pid().expect("daemon runs");
    let net_admin = 1u64 << 12;
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(tasks.len() > 1, "expected several threads");
    for t in &tasks {
        let st = std::fs::read_to_string(t.join("status")).unwrap();
        let field = |k: &str| {
            let l = st.lines().find(|l| l.starts_with(k)).unwrap();
            u64::from_str_radix(l[k.len()..].trim(), 16).unwrap()
        };
        for k in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(field(k), net_admin, "{} {k} in\n{st}", t.display());
        }
        assert_eq!(field("CapAmb:"), 0);
        assert_eq!(field("CapInh:"), 0);
        assert!(st.contains("NoNewPrivs:\t1"), "{st}");
    }
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.state_dir), 0o700);
    assert_eq!(mode(&d.run_dir), 0o700);
    for f in ["lease.json", "vtep_mac"] {
        assert_eq!(mode(&d.state_dir.join(f)), 0o600, "{f}");
    }
    for f in ["node.json", "overlayd.sock"] {
        assert_eq!(mode(&d.run_dir.join(f)), 0o600, "{f}");
    }
    println!(
        "least privilege: {} threads hold CAP_NET_ADMIN only; files 0600 in 0700 dirs",
        tasks.len()
    );
}

/// The metric families of a `/metrics` page, by their `# TYPE` lines, named as the docs
/// name them: a counter with `_total`, an info with `_info`, others as they are.
fn metric_names(page: &str) -> std::collections::BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut f = rest.split_whitespace();
            let (name, kind) = (f.next()?, f.next()?);
            Some(match kind {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_string(),
            })
        })
        .collect()
}

/// The metric names of docs/operating.md's `/metrics` table.
fn documented_metrics() -> std::collections::BTreeSet<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operating.md")).unwrap();
    let table = doc
        .split("`/metrics` on `--metrics-addr` exports:")
        .nth(1)
        .expect("the metrics table in docs/operating.md");
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(|m| m.split('{').next().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|m| m.starts_with("overlayd_"))
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn f_every_exported_metric_is_in_the_docs_table_and_every_row_is_exported() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let scrape = |n: &DaemonNode| http_get(&n.ns, "127.0.0.1:9469", "/metrics").1;
    let mut seen = std::collections::BTreeSet::new();
    // A kernel-mode node that waits for a second founder (the lease_waiting metric),
    // with the plugin's store (the pod metrics).
    let store = cluster.dir().join("n1-cni-data");
    let extra = [
        "--bootstrap-expect",
        "2",
        "--dataplane",
        "kernel",
        "--cni-data-dir",
        store.to_str().unwrap(),
    ];
    let n1 = cluster.start_extra(1, "198.18.0.2", &extra);
    assert!(
        wait_until(Duration::from_secs(10), || scrape(&n1)
            .contains("overlayd_lease_waiting{")),
        "n1 does not say it waits:\n{}",
        scrape(&n1)
    );
    seen.extend(metric_names(&scrape(&n1)));
    let n2 = cluster.start_extra(2, "198.18.0.1", &extra[..4]);
    assert!(
        wait_until(Duration::from_secs(30), || n1.subnet().is_some()
            && n2.subnet().is_some()),
        "{}",
        logs(&[&n1, &n2])
    );
    // The kernel dataplane samples its device's counters every few seconds.
    assert!(
        wait_until(Duration::from_secs(20), || scrape(&n1)
            .contains("overlayd_kernel_device_errors_total{")),
        "n1 exports no device counters:\n{}",
        scrape(&n1)
    );
    seen.extend(metric_names(&scrape(&n1)));
    // Two encrypted nodes (the WireGuard metrics), a cluster of their own.
    let key = cluster.secret_file();
    let enc = ["--encrypt", "--secret-file", key.to_str().unwrap()];
    let mut pair = vec![
        cluster.start_extra(3, "198.18.0.4", &enc),
        cluster.start_extra(4, "198.18.0.3", &enc),
    ];
    lease_and_attach(&mut pair, Duration::from_secs(60));
    // The first pings may go while the pair still hands shake or learns the other's
    // key: ping until one comes back.
    assert!(
        wait_until(Duration::from_secs(30), || pod_ping(&pair[0], &pair[1], 2)),
        "{}",
        logs(&pair)
    );
    assert!(
        wait_until(Duration::from_secs(10), || scrape(&pair[0])
            .contains("overlayd_wg_handshake_age_seconds{")),
        "no WireGuard handshake between n3 and n4:\n{}",
        scrape(&pair[0])
    );
    seen.extend(metric_names(&scrape(&pair[0])));
    let documented = documented_metrics();
    let undocumented: Vec<&String> = seen.difference(&documented).collect();
    let unexported: Vec<&String> = documented.difference(&seen).collect();
    println!("{} metric names exported and documented", seen.len());
    assert!(
        undocumented.is_empty() && unexported.is_empty(),
        "exported but not in docs/operating.md's table: {undocumented:?}\n\
         in the table but exported by none of the nodes: {unexported:?}"
    );
}
