//! Root-only fault tests with real daemons in network namespaces: kill -9 under load,
//! a full or read-only state dir, a flood of garbage on the gossip port, a flood
//! signed with a wrong key beside a rogue daemon, and a soak with packet loss on the
//! underlay. Run with
//! `cargo test --release --features netns-tests --test netns_faults` as root; the long
//! loss soak is `netns-tests/loss-soak.sh`.
//!
//! Everything stays inside namespaces the tests create (underlay 198.18.0.0/15, pods
//! 10.244.0.0/16). The state-dir test mounts a small tmpfs on a temporary directory (a
//! filesystem, not network configuration) and unmounts it on drop.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlayd_test_support::cluster::{
    all_reach_all, lease_and_attach, logs, pod_ping, subnet_of, DaemonNode, TestCluster,
};
use overlayd_test_support::daemon::state_name;
use overlayd_test_support::rand::Rng as _;
use overlayd_test_support::rng::SeededRng;
use overlayd_test_support::tools::http_get;
use overlayd_test_support::{load, sh, try_sh, wait_until, Netns};

/// The daemon under test.
const OVERLAYD: &str = env!("CARGO_BIN_EXE_overlayd");

/// `ip -j <args>` in `ns`, parsed.
fn ip_json(ns: &Netns, args: &[&str]) -> serde_json::Value {
    let mut v = vec!["-j"];
    v.extend_from_slice(args);
    serde_json::from_str(&ns.ip(&v)).unwrap_or(serde_json::Value::Null)
}

/// File names in `dir`.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A TCP connect from `from`'s namespace to `addr` within `timeout`.
fn tcp_connects(from: &Netns, addr: SocketAddr, timeout: Duration) -> bool {
    from.run(|| TcpStream::connect_timeout(&addr, timeout).is_ok())
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn a_kill9_under_iperf3_load_then_restart_keeps_subnet_and_mac() {
    // Heavy: runs alone (see overlayd_test_support::load).
    let _load = load::heavy();
    let cluster = TestCluster::new(OVERLAYD);
    let mut nodes = vec![cluster.start(1, ""), cluster.start(2, "198.18.0.1")];
    lease_and_attach(&mut nodes, Duration::from_secs(45));
    assert!(
        wait_until(Duration::from_secs(10), || all_reach_all(&nodes)),
        "{}",
        logs(&nodes.iter().collect::<Vec<_>>())
    );
    let before = nodes[1].status().unwrap();
    let subnet = subnet_of(&before).unwrap();
    let mac = before.node.vtep_mac.to_string();
    let node_json = std::fs::read_to_string(nodes[1].dirs.run_dir.join("node.json")).unwrap();
    let link_index = |n: &DaemonNode, name: &str| {
        ip_json(&n.ns, &["link", "show"])
            .as_array()
            .and_then(|links| links.iter().find(|l| l["ifname"] == name).cloned())
            .and_then(|l| l["ifindex"].as_u64())
    };
    let bridge_index = link_index(&nodes[1], "ovl0").expect("bridge ovl0");

    // A TCP listener in n2's pod for the "traffic is back" probe (sockets keep the
    // namespace they were made in).
    let pod2 = nodes[1].pod().ip.clone();
    let probe_addr: SocketAddr = format!("{pod2}:5301").parse().unwrap();
    let listener = nodes[1]
        .pod()
        .ns
        .run(|| TcpListener::bind(("0.0.0.0", 5301)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            listener.set_nonblocking(true).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    };

    // iperf3 pod1 -> pod2 for 16 s at up to 2 Gbit/s (load, without starving the
    // tests running beside this one); n2 is killed 3 s in.
    let mut server = nodes[1]
        .pod()
        .ns
        .command("iperf3")
        .args(["-s", "-1", "-B", &pod2])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        nodes[1]
            .pod()
            .ns
            .command("ss")
            .args(["-Hltn", "sport = :5201"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    }));
    let client = nodes[0]
        .pod()
        .ns
        .command("iperf3")
        .args(["-c", &pod2, "-t", "16", "-b", "2G", "-J"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let load_start = Instant::now();
    std::thread::sleep(Duration::from_secs(3));

    nodes[1].daemon.as_mut().unwrap().kill9();
    let killed = Instant::now();
    let killed_at = load_start.elapsed();
    // What a killed daemon leaves: the bridge stays, the TUN goes with the process.
    assert!(wait_until(Duration::from_secs(2), || link_index(
        &nodes[1], "ovltun0"
    )
    .is_none()));
    assert_eq!(link_index(&nodes[1], "ovl0"), Some(bridge_index));
    std::thread::sleep(Duration::from_millis(500));
    let restart = Instant::now();
    nodes[1].launch("198.18.0.1");
    let socket_up = restart.elapsed();
    // Traffic is back 1.0 s after the restart here: the figure is printed, and the wait
    // bounds it at 15 s.
    let back = wait_until(Duration::from_secs(15), || {
        tcp_connects(&nodes[0].pod().ns, probe_addr, Duration::from_millis(250))
    });
    let to_traffic = restart.elapsed();
    let down_for = killed.elapsed();
    let back_at = load_start.elapsed();
    assert!(
        back,
        "no pod traffic 15 s after the restart:\n{}",
        logs(&[&nodes[1]])
    );
    println!(
        "kill -9 at {killed_at:.1?} into the load; restarted daemon answered status after {socket_up:.2?}; \
         pod-to-pod TCP connect works {to_traffic:.2?} after the restart ({down_for:.2?} after the kill)"
    );

    // Same subnet and VTEP MAC, by status, node.json, and as n1 sees it. The restarted
    // node reports its subnet once its lease is confirmed, about 1 s after the start,
    // which may be just after traffic is back (the dataplane forwards meanwhile).
    let reported = wait_until(Duration::from_secs(10), || {
        nodes[1].status().is_some_and(|s| subnet_of(&s).is_some())
    });
    assert!(reported, "{}", logs(&[&nodes[1]]));
    let after = nodes[1].status().unwrap();
    assert_eq!(subnet_of(&after).as_deref(), Some(subnet.as_str()));
    assert_eq!(after.node.vtep_mac.to_string(), mac);
    assert_eq!(
        std::fs::read_to_string(nodes[1].dirs.run_dir.join("node.json")).unwrap(),
        node_json
    );
    let seen = wait_until(Duration::from_secs(10), || {
        nodes[0].status().is_some_and(|s| {
            let n2: Vec<_> = s.peers.iter().filter(|p| p.name == "n2").collect();
            n2.len() == 1
                && state_name(&n2[0].state) == "alive"
                && n2[0].vtep_mac.to_string() == mac
                && n2[0].subnet.to_string() == subnet
        })
    });
    assert!(
        seen,
        "n1's view of n2: {:?}",
        nodes[0].status().unwrap().peers
    );

    // Nothing stale or duplicated: the same bridge (reused, not recreated), one TUN,
    // one gateway address, one cluster route, the pod still on the bridge, and no
    // temporary files in the state or run dir.
    assert_eq!(link_index(&nodes[1], "ovl0"), Some(bridge_index));
    let links = ip_json(&nodes[1].ns, &["link", "show"]);
    let names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["eth0", "lo", "ovl0", "ovltun0", "veth0"],
        "{names:?}"
    );
    let veth = ip_json(&nodes[1].ns, &["link", "show", "veth0"]);
    assert_eq!(veth[0]["master"], "ovl0", "{veth}");
    let addrs = ip_json(&nodes[1].ns, &["-4", "addr", "show", "dev", "ovl0"]);
    let gw: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(gw, [format!("{}.1/24", subnet.trim_end_matches(".0/24"))]);
    let routes = ip_json(&nodes[1].ns, &["-4", "route", "show", "10.244.0.0/16"]);
    assert_eq!(routes.as_array().unwrap().len(), 1, "{routes}");
    assert_eq!(routes[0]["dev"], "ovltun0", "{routes}");
    assert_eq!(files(&nodes[1].dirs.state_dir), ["lease.json", "vtep_mac"]);
    assert_eq!(
        files(&nodes[1].dirs.run_dir),
        ["node.json", "overlayd.sock"]
    );

    // The TCP stream under load survived: iperf3 finished, and moved data in the
    // seconds after traffic came back.
    let out = client.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    stop.store(true, Ordering::Relaxed);
    acceptor.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "iperf3 failed: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let intervals: Vec<(f64, f64)> = v["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["sum"]["end"].as_f64().unwrap(),
                i["sum"]["bits_per_second"].as_f64().unwrap() / 1e9,
            )
        })
        .collect();
    // TCP retransmits with exponential backoff: allow it 4 s to notice the path is back
    // (it moves data again within about 0.5 s of the restart here).
    let resumed_by = (back_at + Duration::from_secs(4)).as_secs_f64();
    let late: Vec<&(f64, f64)> = intervals
        .iter()
        .filter(|(end, _)| *end > resumed_by + 1.0)
        .collect();
    println!(
        "iperf3 Gbit/s per second: {}",
        intervals
            .iter()
            .map(|(_, g)| format!("{g:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert!(!late.is_empty(), "{intervals:?}");
    assert!(
        late.iter().all(|(_, g)| *g > 0.0),
        "the iperf3 stream did not resume: {intervals:?}"
    );
}

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn new(parent: &Path, name: &str, size: &str) -> Tmpfs {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
            dir.to_str().unwrap(),
        ]);
        Tmpfs { dir }
    }

    /// Fills the filesystem with `filler` until it is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = [0u8; 512];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        let _ = f.sync_all();
        path
    }

    fn remount(&self, mode: &str) {
        sh(&[
            "mount",
            "-o",
            &format!("remount,{mode}"),
            self.dir.to_str().unwrap(),
        ]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let dir = self.dir.to_str().unwrap_or_default();
        if !try_sh(&["umount", dir]) {
            let _ = try_sh(&["umount", "-l", dir]);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The lease state file, parsed (panics if it is not valid JSON).
fn lease_file(state: &Path) -> serde_json::Value {
    let path = state.join("lease.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} is corrupt: {e}: {bytes:?}", path.display()))
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn b_full_or_read_only_state_dir() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);

    // 1. Full at start-up: a clear error naming the file, and nothing half-written.
    let full = Tmpfs::new(cluster.dir(), "full", "16k");
    full.fill();
    let mut n9 = cluster.node(9);
    n9.dirs.state_dir = full.dir.join("state");
    let (ok, out) = n9.launch_expect_exit("");
    assert!(!ok);
    let vtep = n9.dirs.state_dir.join("vtep_mac");
    assert!(
        out.contains(&vtep.display().to_string()) && out.contains("No space left on device"),
        "{out}"
    );
    assert!(
        files(&n9.dirs.state_dir).is_empty(),
        "left behind: {:?}",
        files(&n9.dirs.state_dir)
    );
    println!(
        "full state dir at start-up: {}",
        out.lines()
            .rfind(|l| l.starts_with("overlayd:"))
            .unwrap_or_default()
    );
    drop(full);

    // n1 founds the cluster with its state dir on a 64 KiB tmpfs.
    let fs = Tmpfs::new(cluster.dir(), "n1fs", "64k");
    let mut n1 = cluster.node(1);
    n1.dirs.state_dir = fs.dir.join("state");
    n1.launch("");
    let mut nodes = vec![n1];
    lease_and_attach(&mut nodes, Duration::from_secs(10));
    let subnet1 = nodes[0].subnet().unwrap();

    // 2. Full while running: n2 joins and asks n1 for a subnet, which n1 must save
    // before it hands it out. n1 keeps running and forwarding with its subnet, says
    // why in status and metrics, and its lease.json stays as it was.
    let filler = fs.fill();
    let saved = lease_file(&nodes[0].dirs.state_dir);
    nodes.push(cluster.start(2, "198.18.0.1"));
    let lease_path = nodes[0]
        .dirs
        .state_dir
        .join("lease.json")
        .display()
        .to_string();
    let reported = wait_until(Duration::from_secs(15), || {
        nodes[0].status().is_some_and(|s| {
            s.control
                .and_then(|c| c.state_error)
                .is_some_and(|e| e.contains(&lease_path) && e.contains("No space left on device"))
        })
    });
    assert!(reported, "{}", logs(&[&nodes[0]]));
    let hold = Instant::now();
    let mut slowest = Duration::ZERO;
    while hold.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        let s = nodes[0].status().expect("n1 answers status");
        slowest = slowest.max(t.elapsed());
        // A status answer takes well under 100 ms here: the 1 s bound is 10x that.
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "status took {:?}",
            t.elapsed()
        );
        assert_eq!(subnet_of(&s).as_deref(), Some(subnet1.as_str()));
        assert_eq!(
            lease_file(&nodes[0].dirs.state_dir),
            saved,
            "lease.json changed"
        );
        assert_eq!(nodes[1].subnet(), None, "n2 got a subnet n1 could not save");
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("full state dir while running: slowest status {slowest:.0?}");
    let status_text = Command::new(OVERLAYD)
        .args(["status", "--run-dir"])
        .arg(&nodes[0].dirs.run_dir)
        .output()
        .unwrap();
    let status_text = String::from_utf8_lossy(&status_text.stdout).into_owned();
    assert!(
        status_text.contains("NOT SAVED") && status_text.contains(&lease_path),
        "{status_text}"
    );
    assert_eq!(nodes[0].metric("overlayd_lease_state_unsaved "), Some(1.0));
    assert!(
        nodes[0]
            .metric("overlayd_lease_messages_held_total ")
            .unwrap_or(0.0)
            > 0.0,
        "{}\n{:?}",
        http_get(&nodes[0].ns, "127.0.0.1:9469", "/metrics").1,
        nodes[0].status().unwrap()
    );
    let log = logs(&[&nodes[0]]);
    assert!(
        log.contains("cannot save the lease state") && log.contains(&lease_path),
        "{log}"
    );
    assert!(
        nodes[0].pod().ns.try_exec(&[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-q",
            &format!("{}.1", subnet1.trim_end_matches(".0/24"))
        ]),
        "n1's pod lost its gateway"
    );
    println!(
        "full state dir while running: {}",
        status_text
            .lines()
            .find(|l| l.contains("NOT SAVED"))
            .unwrap_or_default()
            .trim()
    );

    // Space again: n1 saves within a second or two, n2 gets its subnet, pods ping.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let recovered = wait_until(Duration::from_secs(45), || nodes[1].subnet().is_some());
    assert!(recovered, "{}", logs(&[&nodes[0], &nodes[1]]));
    println!(
        "space freed: n2 leased a subnet {:.1?} later",
        freed.elapsed()
    );
    assert!(nodes[0]
        .status()
        .is_some_and(|s| s.control.and_then(|c| c.state_error).is_none()));
    assert_eq!(nodes[0].metric("overlayd_lease_state_unsaved "), Some(0.0));
    assert_ne!(lease_file(&nodes[0].dirs.state_dir), saved);
    assert!(nodes[1].attach_pod());
    assert!(
        wait_until(Duration::from_secs(10), || all_reach_all(&nodes)),
        "{}",
        logs(&[&nodes[0], &nodes[1]])
    );

    // 3. Read-only while running: same story with EROFS and n3.
    fs.remount("ro");
    let saved = lease_file(&nodes[0].dirs.state_dir);
    nodes.push(cluster.start(3, "198.18.0.1"));
    let reported = wait_until(Duration::from_secs(15), || {
        nodes[0].status().is_some_and(|s| {
            s.control
                .and_then(|c| c.state_error)
                .is_some_and(|e| e.contains(&lease_path) && e.contains("Read-only file system"))
        })
    });
    assert!(reported, "{}", logs(&[&nodes[0], &nodes[2]]));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(nodes[2].subnet(), None);
    assert_eq!(nodes[0].subnet().as_deref(), Some(subnet1.as_str()));
    assert_eq!(lease_file(&nodes[0].dirs.state_dir), saved);
    assert!(pod_ping(&nodes[1], &nodes[0], 2), "n1 stopped forwarding");
    fs.remount("rw");
    assert!(
        wait_until(Duration::from_secs(45), || nodes[2].subnet().is_some()),
        "{}",
        logs(&[&nodes[0], &nodes[2]])
    );

    // 4. Read-only at start-up, with state from before: a clear error naming
    // lease.json, which is left as it was; writable again, n1 comes back with its
    // subnet.
    let n1 = &mut nodes[0];
    assert!(n1.daemon.as_mut().unwrap().terminate());
    n1.daemon = None;
    let before = std::fs::read(n1.dirs.state_dir.join("lease.json")).unwrap();
    fs.remount("ro");
    let (ok, out) = n1.launch_expect_exit("");
    assert!(!ok);
    assert!(
        out.contains(&lease_path) && out.contains("Read-only file system"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(n1.dirs.state_dir.join("lease.json")).unwrap(),
        before
    );
    println!(
        "read-only state dir at start-up: {}",
        out.lines()
            .rfind(|l| l.starts_with("overlayd:"))
            .unwrap_or_default()
    );
    fs.remount("rw");
    n1.launch("");
    assert!(
        wait_until(Duration::from_secs(15), || n1.subnet().as_deref()
            == Some(subnet1.as_str())),
        "n1 came back with {:?}",
        n1.subnet()
    );
    assert_eq!(files(&n1.dirs.state_dir), ["lease.json", "vtep_mac"]);
    for n in nodes.iter_mut() {
        if let Some(mut d) = n.daemon.take() {
            d.terminate();
        }
    }
}

/// Counts of the UDP receive-buffer overflows in `ns` (`/proc/net/snmp`).
fn udp_rcvbuf_errors(ns: &Netns) -> u64 {
    let snmp = ns.exec(&["cat", "/proc/net/snmp"]);
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(head), Some(vals)) = (udp.next(), udp.next()) else {
        return 0;
    };
    head.split_whitespace()
        .zip(vals.split_whitespace())
        .find(|(h, _)| *h == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// One garbage datagram for the gossip port: random bytes, or frames that pass the
/// first checks (magic, version) and fail later.
fn garbage(rng: &mut SeededRng, buf: &mut Vec<u8>) {
    buf.clear();
    let header: &[u8] = b"OVLD\x01";
    match rng.random_range(0..10u32) {
        // Random bytes of any length.
        0..=3 => {
            let len = rng.random_range(0..1400usize);
            buf.extend((0..len).map(|_| rng.random::<u8>()));
        }
        // A valid header (membership or lease) with a random body.
        4..=7 => {
            buf.extend_from_slice(header);
            buf.push(1 + rng.random_range(0..2u8));
            buf.push(0);
            let len = rng.random_range(0..600usize);
            buf.extend((0..len).map(|_| rng.random::<u8>()));
        }
        // A truncated header.
        8 => buf.extend_from_slice(&header[..rng.random_range(0..=header.len())]),
        // A wrong version, or an unknown kind, or an auth length past the end.
        _ => {
            buf.extend_from_slice(b"OVLD");
            match rng.random_range(0..3u32) {
                0 => buf.extend_from_slice(&[2, 1, 0]),
                1 => buf.extend_from_slice(&[1, 9, 0]),
                _ => buf.extend_from_slice(&[1, 1, 200, 1, 2, 3]),
            }
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn c_gossip_flood_of_garbage() {
    // Heavy: runs alone (see overlayd_test_support::load).
    let _load = load::heavy();
    let cluster = TestCluster::new(OVERLAYD);
    let mut nodes = vec![cluster.start(1, "")];
    for i in 2..=3u8 {
        nodes.push(cluster.start(i, "198.18.0.1"));
    }
    lease_and_attach(&mut nodes, Duration::from_secs(45));
    assert!(
        wait_until(Duration::from_secs(10), || all_reach_all(&nodes)),
        "{}",
        logs(&nodes.iter().collect::<Vec<_>>())
    );
    let rate: u64 = std::env::var("OVERLAYD_FLOOD_PPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let secs: u64 = std::env::var("OVERLAYD_FLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    // n1 and n2 are flooded, n3 is not.
    let targets: Vec<SocketAddr> = vec![
        "198.18.0.1:7946".parse().unwrap(),
        "198.18.0.2:7946".parse().unwrap(),
    ];
    let dropped = |n: &DaemonNode| {
        n.status()
            .and_then(|s| s.control.map(|c| c.gossip_dropped))
            .unwrap_or(0)
    };
    let dropped_before: Vec<u64> = nodes.iter().map(dropped).collect();
    let rcvbuf_before: Vec<u64> = nodes.iter().map(|n| udp_rcvbuf_errors(&n.ns)).collect();

    let flooder = cluster.switch.node(200);
    let socket = flooder.run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    let mut rng = SeededRng::from_env("OVERLAYD_FAULT_SEED");
    let flood = std::thread::spawn(move || {
        let mut sent = [0u64; 2];
        let mut buf = Vec::with_capacity(1500);
        let start = Instant::now();
        let tick = Duration::from_millis(5);
        let per_tick = (rate * 5 / 1000).max(1);
        let mut next = start;
        while start.elapsed() < Duration::from_secs(secs) {
            for k in 0..per_tick {
                let t = (k % 2) as usize;
                garbage(&mut rng, &mut buf);
                if socket.send_to(&buf, targets[t]).is_ok() {
                    sent[t] += 1;
                }
            }
            next += tick;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        (sent, start.elapsed())
    });

    // While the flood runs: status answers within 1 s, nobody is declared dead, pods
    // keep pinging across nodes.
    let mut samples = 0;
    let mut slowest = Duration::ZERO;
    let mut pings = (0, 0);
    while !flood.is_finished() {
        for n in &nodes {
            let t = Instant::now();
            let states = n.peer_states().expect("status answers during the flood");
            let took = t.elapsed();
            slowest = slowest.max(took);
            // The slowest status during the flood takes about 25 ms here (printed): the
            // 1 s bound is 40x that.
            assert!(
                took < Duration::from_secs(1),
                "{} status took {took:?}",
                n.name
            );
            assert!(
                states.len() == 2 && states.values().all(|s| s != "dead"),
                "{}: {states:?}\n{}",
                n.name,
                logs(&nodes.iter().collect::<Vec<_>>())
            );
        }
        for (a, b) in [(0, 1), (1, 2), (2, 0)] {
            pings.1 += 1;
            if pod_ping(&nodes[a], &nodes[b], 2) {
                pings.0 += 1;
            }
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (sent, took) = flood.join().unwrap();
    // The last datagrams in flight settle.
    std::thread::sleep(Duration::from_millis(500));
    let total: u64 = sent.iter().sum();
    println!(
        "flood: {total} datagrams in {took:.1?} ({:.0}/s) to n1 {} and n2 {}; {samples} samples, \
         slowest status {slowest:.0?}, pod pings {}/{}",
        total as f64 / took.as_secs_f64(),
        sent[0],
        sent[1],
        pings.0,
        pings.1
    );
    assert!(samples >= 3, "only {samples} samples during the flood");
    assert_eq!(pings.0, pings.1, "pod pings were lost during the flood");

    // The daemons counted what they read; what they did not read, the kernel counted.
    for (i, n) in nodes.iter().enumerate() {
        let counted = dropped(n) - dropped_before[i];
        let overflow = udp_rcvbuf_errors(&n.ns) - rcvbuf_before[i];
        let metric = n.metric("overlayd_gossip_dropped_total ").unwrap_or(0.0) as u64;
        println!(
            "{}: sent {}, dropped by overlayd {counted} (metric {metric}), socket overflows {overflow}",
            n.name,
            sent.get(i).copied().unwrap_or(0)
        );
        assert!(i >= sent.len() || metric > 0, "{}: metric {metric}", n.name);
        match sent.get(i) {
            Some(&s) => {
                assert!(
                    counted + overflow >= s * 98 / 100 && counted <= s + 50,
                    "{}: sent {s}, counted {counted}, overflowed {overflow}",
                    n.name
                );
                assert!(counted >= s / 2, "{}: most garbage was never read", n.name);
            }
            None => assert!(counted <= 5, "{} was not flooded", n.name),
        }
        assert!(n.peer_states().unwrap().values().all(|s| s == "alive"));
        assert_eq!(n.metric("overlayd_gossip_peer_deaths_total "), Some(0.0));
    }
    assert!(all_reach_all(&nodes));
}

/// Drops `pct` % of the packets leaving `dev` in `ns`: netem when the kernel has it,
/// otherwise an nftables rule with a random number per packet. Returns which.
fn add_loss(ns: &Netns, dev: &str, pct: u32) -> &'static str {
    let _ = try_sh(&["modprobe", "sch_netem"]);
    if ns.try_exec(&[
        "tc",
        "qdisc",
        "add",
        "dev",
        dev,
        "root",
        "netem",
        "loss",
        &format!("{pct}%"),
    ]) {
        return "netem";
    }
    ns.exec(&["nft", "add", "table", "inet", "ovloss"]);
    ns.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "ovloss",
        "out",
        "{ type filter hook output priority 0 ; }",
    ]);
    ns.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "ovloss",
        "out",
        "oifname",
        dev,
        "numgen",
        "random",
        "mod",
        "100",
        "<",
        &pct.to_string(),
        "counter",
        "drop",
    ]);
    "nftables"
}

/// (packets dropped by the loss rule, packets sent) on `dev` in `ns`.
fn loss_counts(ns: &Netns, dev: &str, how: &str) -> (u64, u64) {
    let sent = ip_json(ns, &["-s", "link", "show", dev])[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or(0);
    let dropped = if how == "netem" {
        let out = ns.exec(&["tc", "-s", "qdisc", "show", "dev", dev]);
        out.split("dropped ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    } else {
        let out = ns.exec(&["nft", "list", "table", "inet", "ovloss"]);
        out.split("counter packets ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    (dropped, sent)
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn d_loss_soak_no_false_deaths() {
    // Heavy: runs alone (see overlayd_test_support::load).
    let _load = load::heavy();
    let secs: u64 = std::env::var("OVERLAYD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let n: u8 = std::env::var("OVERLAYD_SOAK_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
        .clamp(3, 5);
    let pct: u32 = std::env::var("OVERLAYD_SOAK_LOSS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let cluster = TestCluster::new(OVERLAYD);
    let mut nodes = vec![cluster.start(1, "")];
    for i in 2..=n {
        nodes.push(cluster.start(i, "198.18.0.1"));
    }
    lease_and_attach(&mut nodes, Duration::from_secs(45));
    let all_alive = |nodes: &[DaemonNode]| {
        nodes.iter().all(|a| {
            a.peer_states()
                .is_some_and(|s| s.len() == nodes.len() - 1 && s.values().all(|st| st == "alive"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || all_alive(&nodes)),
        "{}",
        logs(&nodes.iter().collect::<Vec<_>>())
    );

    let mut how = "";
    for n in &nodes {
        how = add_loss(&n.ns, "eth0", pct);
    }
    println!("{n} nodes, {pct} % loss on every node's underlay egress ({how}), {secs} s");
    let start = Instant::now();
    let mut samples = 0u64;
    let mut suspects = 0u64;
    let mut dead_seen: Vec<String> = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        let tick = Instant::now();
        let at = start.elapsed().as_secs_f64();
        for a in &nodes {
            let s = a
                .status()
                .unwrap_or_else(|| panic!("{} does not answer status", a.name));
            // The forwarding table: every other node, alive or suspect.
            let fib: BTreeMap<&str, String> = s
                .peers
                .iter()
                .map(|p| (p.name.as_str(), state_name(&p.state)))
                .collect();
            for b in nodes.iter().filter(|b| b.name != a.name) {
                let state = fib.get(b.name.as_str()).map(String::as_str);
                if !matches!(state, Some("alive" | "suspect")) {
                    dead_seen.push(format!("{at:.1}s: {} has {} as {state:?}", a.name, b.name));
                }
            }
            // Membership as of now: suspicion is live here, the FIB only follows changes.
            let c = s
                .control
                .as_ref()
                .expect("a leased node reports its control plane");
            let (alive, suspect, dead) = (c.alive as u64, c.suspect as u64, c.dead as u64);
            if suspect > 0 {
                suspects += suspect;
                println!("{at:>5.1}s: {} suspects {suspect} peer(s)", a.name);
            }
            if dead > 0 || alive + suspect != nodes.len() as u64 - 1 {
                dead_seen.push(format!(
                    "{at:.1}s: {}: {alive} alive, {suspect} suspect, {dead} dead",
                    a.name
                ));
            }
        }
        samples += 1;
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let deaths: Vec<(String, f64)> = nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.metric("overlayd_gossip_peer_deaths_total ")
                    .unwrap_or(-1.0),
            )
        })
        .collect();
    let (lost, sent) = nodes
        .iter()
        .map(|n| loss_counts(&n.ns, "eth0", how))
        .fold((0, 0), |(l, s), (a, b)| (l + a, s + b));
    println!(
        "{samples} samples of {} pairs over {:.0?}: {suspects} suspect observations, {} not alive; \
         deaths per node (metric): {deaths:?}; loss rule dropped {lost} of {} underlay packets ({:.1} %)",
        n as u64 * (n as u64 - 1),
        start.elapsed(),
        dead_seen.len(),
        lost + sent,
        100.0 * lost as f64 / (lost + sent).max(1) as f64
    );
    assert!(
        dead_seen.is_empty(),
        "false deaths: {dead_seen:#?}\n{}",
        logs(&nodes.iter().collect::<Vec<_>>())
    );
    assert!(deaths.iter().all(|(_, d)| *d == 0.0), "{deaths:?}");
    // The loss was real: roughly pct % of what left each node was dropped.
    let rate = 100.0 * lost as f64 / (lost + sent).max(1) as f64;
    assert!(
        (pct as f64 * 0.6..pct as f64 * 1.4).contains(&rate),
        "loss rule dropped {rate:.1} %"
    );
    // A tick's work (a status per node, each well under 50 ms here) is a tenth of the
    // tick or less: only ticks 10x slower than that lose samples.
    assert!(samples + 2 >= secs, "only {samples} samples in {secs} s");
    // The dataplane still works end to end (each ping may be lost: retry).
    let reach = nodes.iter().all(|a| {
        nodes
            .iter()
            .all(|b| a.name == b.name || (0..10).any(|_| pod_ping(a, b, 1)))
    });
    assert!(reach, "pods do not reach each other under loss");
}

/// Raises this process's open-file limit to its hard limit (the flooder opens a socket
/// per source address).
fn raise_nofile() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn e_wrong_key_flood_and_rogue_daemon() {
    // Heavy: runs alone (see overlayd_test_support::load).
    let _load = load::heavy();
    use overlayd::control::message::{emit_frame_header, Kind};
    use overlayd::control::{Authenticator, KeySet};
    const KEY_A: &str = "fault-test cluster key A, 32 bytes";
    const KEY_B: &str = "fault-test rogue key B, 32 bytes!";
    raise_nofile();
    let cluster = TestCluster::new(OVERLAYD);
    let key_file = |name: &str, key: &str| {
        let p = cluster.dir().join(name);
        std::fs::write(&p, format!("{key}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        p.display().to_string()
    };
    let (fa, fb) = (key_file("key-a", KEY_A), key_file("key-b", KEY_B));
    let mut nodes = vec![cluster.node(1), cluster.node(2)];
    let key_args = ["--secret-file", fa.as_str()];
    let launch = |n: &mut DaemonNode, peers: &str, extra: &[&str]| {
        n.extra = extra.iter().map(|s| s.to_string()).collect();
        n.launch(peers);
    };
    launch(&mut nodes[0], "", &key_args);
    launch(&mut nodes[1], "198.18.0.1", &key_args);
    lease_and_attach(&mut nodes, Duration::from_secs(45));
    assert!(wait_until(Duration::from_secs(10), || all_reach_all(
        &nodes
    )));
    // A real daemon with the wrong key, given n1 as its seed.
    let mut rogue = cluster.node(3);
    launch(&mut rogue, "198.18.0.1", &["--secret-file", &fb]);

    let rejected = |n: &DaemonNode| {
        let s = n.status().unwrap();
        let r = s.control.map(|c| c.gossip_rejected).unwrap_or_default();
        (
            r.get("unknown_key").copied().unwrap_or(0),
            r.get("bad_tag").copied().unwrap_or(0),
        )
    };
    let rejected_logs = |n: &DaemonNode| {
        logs(&[n])
            .lines()
            .filter(|l| l.contains("rejected gossip from"))
            .count()
    };
    let before = rejected(&nodes[0]);
    let logs_before = rejected_logs(&nodes[0]);
    let overflow_before = udp_rcvbuf_errors(&nodes[0].ns);

    // The flooder signs with key B (unknown to the cluster) or forges key A's id with
    // a wrong tag, from 1,200 source addresses in turn.
    let flooder = cluster.switch.node(200);
    const SOURCES: usize = 1200;
    let batch: String = (0..SOURCES)
        .map(|k| format!("addr add 198.19.{}.{}/32 dev eth0\n", k / 250, k % 250 + 1))
        .collect();
    let mut ip = Command::new("ip")
        .args(["-n", &flooder.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    ip.stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    assert!(ip.wait().unwrap().success());
    let sockets: Vec<UdpSocket> = flooder.run(|| {
        (0..SOURCES)
            .map(|k| {
                let src = format!("198.19.{}.{}:7946", k / 250, k % 250 + 1);
                UdpSocket::bind(src.as_str()).unwrap_or_else(|e| panic!("bind {src}: {e}"))
            })
            .collect()
    });
    let rate: u64 = std::env::var("OVERLAYD_FLOOD_PPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let secs: u64 = 8;
    let mut rng = SeededRng::from_env("OVERLAYD_FAULT_SEED");
    let target: SocketAddr = "198.18.0.1:7946".parse().unwrap();
    let flood = std::thread::spawn(move || {
        let mut wrong = Authenticator::new(KeySet::parse(KEY_B).ok(), rng.random::<u64>());
        let mut forger = Authenticator::new(KeySet::parse(KEY_A).ok(), rng.random::<u64>());
        let (mut unknown, mut forged) = (0u64, 0u64);
        let start = Instant::now();
        let per_tick = (rate * 5 / 1000).max(1);
        let mut next = start;
        let mut k = 0usize;
        while start.elapsed() < Duration::from_secs(secs) {
            for _ in 0..per_tick {
                let mut frame = Vec::with_capacity(400);
                let kind = if rng.random_range(0..4u32) == 0 {
                    Kind::Lease
                } else {
                    Kind::Membership
                };
                emit_frame_header(kind, &mut frame);
                let len = 40 + rng.random_range(0..300usize);
                frame.extend((0..len).map(|_| rng.random::<u8>()));
                let forge = rng.random_range(0..3u32) == 0;
                let frame = if forge {
                    let mut f = forger.seal(frame, unix_ms());
                    // The tag is the last 16 bytes of the 44-byte auth field.
                    for b in &mut f[7 + 28..7 + 44] {
                        *b ^= 0x5a;
                    }
                    f
                } else {
                    wrong.seal(frame, unix_ms())
                };
                if sockets[k % SOURCES].send_to(&frame, target).is_ok() {
                    if forge {
                        forged += 1;
                    } else {
                        unknown += 1;
                    }
                }
                k += 1;
            }
            next += Duration::from_millis(5);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        (unknown, forged, start.elapsed())
    });

    let mut samples = 0;
    let mut slowest = Duration::ZERO;
    while !flood.is_finished() {
        for n in &nodes {
            let t = Instant::now();
            let states = n.peer_states().expect("status answers during the flood");
            slowest = slowest.max(t.elapsed());
            // About 20 ms here at the slowest (printed): the 1 s bound is 50x that.
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "{} status took {:?}",
                n.name,
                t.elapsed()
            );
            let others: Vec<&String> = states.keys().collect();
            assert_eq!(others.len(), 1, "{}: {states:?}", n.name);
            assert!(
                states.values().all(|s| s == "alive"),
                "{}: {states:?}",
                n.name
            );
        }
        assert_eq!(rogue.subnet(), None, "the rogue got a subnet");
        assert!(pod_ping(&nodes[0], &nodes[1], 2) && pod_ping(&nodes[1], &nodes[0], 2));
        samples += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let (unknown, forged, took) = flood.join().unwrap();
    assert!(
        unknown + forged >= rate * secs * 9 / 10,
        "the flooder sent only {} datagrams",
        unknown + forged
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = rejected(&nodes[0]);
    let overflow = udp_rcvbuf_errors(&nodes[0].ns) - overflow_before;
    let logged = rejected_logs(&nodes[0]) - logs_before;
    println!(
        "wrong-key flood: {} datagrams in {took:.1?} ({:.0}/s) from {SOURCES} addresses to n1: \
         {unknown} signed with an unknown key, {forged} with a forged tag; n1 counted \
         unknown_key +{}, bad_tag +{}; socket overflows {overflow}; {samples} samples, slowest \
         status {slowest:.0?}; {logged} rejection log lines",
        unknown + forged,
        (unknown + forged) as f64 / took.as_secs_f64(),
        after.0 - before.0,
        after.1 - before.1
    );
    // Every forged datagram that was read is counted as such; the rogue's own gossip
    // adds a little to unknown_key.
    let counted = (after.0 - before.0) + (after.1 - before.1);
    assert!(
        counted + overflow >= (unknown + forged) * 98 / 100,
        "counted {counted} + overflow {overflow} of {}",
        unknown + forged
    );
    assert!(after.1 - before.1 <= forged, "more bad tags than forged");
    assert!(after.1 - before.1 >= forged / 2);
    assert!(after.0 - before.0 >= unknown / 2);
    // The log says what happens without a line per datagram.
    assert!(
        logged <= 50,
        "{logged} rejection lines logged during the flood:\n{}",
        logs(&[&nodes[0]])
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The rogue never joined: not a peer anywhere, no subnet, and it knows why.
    for n in &nodes {
        assert!(!n.peer_states().unwrap().contains_key("n3"));
        assert_eq!(n.metric("overlayd_gossip_peer_deaths_total "), Some(0.0));
    }
    assert_eq!(rogue.subnet(), None);
    assert!(all_reach_all(&nodes));
}
