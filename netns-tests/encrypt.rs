//! Root-only tests of the encrypted dataplane (`--encrypt`): WireGuard between
//! overlayd nodes and with a plain `wireguard-go` peer, what the underlay sees, key
//! checks, replay, restarts and key rotation. Each test creates and deletes its own
//! namespaces. Run with `cargo test --features netns-tests --test netns_encrypt` as
//! root.

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use overlayd_test_support::capture::{udp_frame, RawCapture, UdpFrame};
use overlayd_test_support::cluster::{
    all_reach_all, lease_and_attach, logs, pod_ping, DaemonNode, TestCluster,
};
use overlayd_test_support::daemon::{peer, StatusReport};
use overlayd_test_support::process::ChildGuard;
use overlayd_test_support::tools::iperf3;
use overlayd_test_support::{load, wait_until, Netns};

const OVERLAYD: &str = env!("CARGO_BIN_EXE_overlayd");
/// The WireGuard port (the default of `--wg-port`).
const WG_PORT: u16 = 51820;

/// `--encrypt --secret-file <the cluster's key>`.
fn encrypt_flags(cluster: &TestCluster) -> Vec<String> {
    vec![
        "--encrypt".into(),
        "--secret-file".into(),
        cluster.secret_file().display().to_string(),
    ]
}

/// Gossip nodes 1..=`n`, each seeded with the others, encrypted, leased, with pods
/// that all reach each other.
fn encrypted_nodes(cluster: &TestCluster, n: u8) -> Vec<DaemonNode> {
    encrypted_nodes_with(cluster, n, |_| &[])
}

/// [`encrypted_nodes`], node `i` with the flags `more(i)` too.
fn encrypted_nodes_with(
    cluster: &TestCluster,
    n: u8,
    more: impl Fn(u8) -> &'static [&'static str],
) -> Vec<DaemonNode> {
    let flags = encrypt_flags(cluster);
    let mut nodes: Vec<DaemonNode> = (1..=n)
        .map(|i| {
            let peers: Vec<String> = (1..=n)
                .filter(|j| *j != i)
                .map(|j| format!("198.18.0.{j}"))
                .collect();
            let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
            extra.extend_from_slice(more(i));
            cluster.start_extra(i, &peers.join(","), &extra)
        })
        .collect();
    lease_and_attach(&mut nodes, Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(20), || all_reach_all(&nodes)),
        "pods do not reach each other:\n{}\n{}",
        sessions(&nodes),
        logs(&nodes)
    );
    nodes
}

/// Every node's view of its WireGuard sessions, for failure messages.
fn sessions(nodes: &[DaemonNode]) -> String {
    nodes
        .iter()
        .map(|n| {
            let s = n.status();
            let lines: Vec<String> = s
                .iter()
                .flat_map(|s| s.peers.iter())
                .map(|p| format!("  {} {:?} {:?}", p.name, p.underlay, p.wg))
                .collect();
            format!(
                "{}: drops {:?}\n{}",
                n.name,
                s.map(|s| s.dataplane.drops),
                lines.join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The base64 public key of the node whose state dir is `dir`, as `overlayd pubkey`
/// prints it.
fn pubkey(dir: &std::path::Path) -> String {
    let out = std::process::Command::new(OVERLAYD)
        .args(["pubkey", "--state-dir"])
        .arg(dir)
        .output()
        .expect("overlayd pubkey");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The UDP frames of a capture.
fn udp_frames(frames: &[Vec<u8>]) -> Vec<UdpFrame> {
    frames.iter().filter_map(|f| udp_frame(f)).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn a_three_encrypted_nodes_reach_each_other_and_the_underlay_carries_no_clear_text() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    // Node 3 asks for the kernel dataplane: encrypted traffic takes the userspace one.
    let nodes = encrypted_nodes_with(&cluster, 3, |i| {
        if i == 3 {
            &["--dataplane", "kernel"]
        } else {
            &[]
        }
    });
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let s3 = nodes[2].status().unwrap();
    assert_eq!(s3.path.mode.to_string(), "encrypted", "{s3:?}");
    assert!(
        s3.path
            .reason
            .contains("encrypted traffic takes the userspace dataplane"),
        "{}",
        s3.path.reason
    );
    assert!(
        nodes[2].log_text().contains(
            "--dataplane kernel with --encrypt: encrypted traffic takes the userspace dataplane"
        ),
        "the log says so too"
    );
    // The timer thread samples session state every 100 ms.
    let established = wait_until(Duration::from_secs(2), || {
        n1.status().is_some_and(|s| {
            s.peers.iter().all(|p| {
                p.wg.as_ref()
                    .is_some_and(|w| w.session.session == "established")
            })
        })
    });
    assert!(established, "{}", sessions(&nodes));
    let s1 = n1.status().unwrap();
    assert_eq!(s1.path.mode.to_string(), "encrypted", "{s1:?}");
    let wg = s1.path.wg.as_ref().expect("status shows our WireGuard key");
    assert_eq!(wg.port, WG_PORT);
    assert_eq!(wg.public_key, pubkey(&n1.dirs.state_dir));
    assert_eq!(
        s1.node.mtu, 1440,
        "underlay 1500 less 60 bytes of WireGuard"
    );
    for p in &s1.peers {
        let w = p.wg.as_ref().expect("every peer has a key");
        assert_eq!(w.session.session, "established", "{p:?}");
        assert_eq!(p.underlay.port(), WG_PORT, "{p:?}");
    }
    let key_file = n1.dirs.state_dir.join("wg_private_key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key_file.display());

    // Pod 1 sends a marker to pod 2 while the underlay is captured on node 1.
    let marker = b"OVERLAYD-CLEARTEXT-MARKER-5b0c";
    let capture = n1.ns.run(|| RawCapture::open("eth0"));
    let receiver = n2
        .pod()
        .ns
        .run(|| UdpSocket::bind((n2.pod_ip(), 5555)).unwrap());
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let to = format!("{}:5555", n2.pod_ip());
    n1.pod().ns.run(|| {
        let s = UdpSocket::bind((n1.pod_ip(), 0)).unwrap();
        for size in [64usize, 600, 1300] {
            let mut msg = marker.to_vec();
            msg.resize(size, b'x');
            for _ in 0..5 {
                s.send_to(&msg, &to).unwrap();
            }
        }
    });
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = receiver.recv_from(&mut buf) {
        assert!(buf[..n].starts_with(marker));
        got += 1;
        if got == 15 {
            break;
        }
    }
    let frames = capture.frames_for(Duration::from_millis(500));
    let udp = udp_frames(&frames);
    let wg: Vec<&UdpFrame> = udp.iter().filter(|f| f.dst.port() == WG_PORT).collect();
    let vxlan = udp.iter().filter(|f| f.dst.port() == 4789).count();
    let clear = frames.iter().filter(|f| contains(f, marker)).count();
    println!(
        "delivered {got}/15 marked datagrams; captured {} frames on n1's underlay: {} WireGuard, {vxlan} VXLAN, {clear} with the marker in clear",
        frames.len(),
        wg.len()
    );
    assert_eq!(got, 15, "the marked datagrams reach pod 2");
    // GSO: datagrams of one size leave in one super-packet, one frame here.
    let wg_bytes: usize = wg.iter().map(|f| f.payload.len()).sum();
    assert!(
        wg_bytes >= 5 * (64 + 600 + 1300),
        "the traffic crossed the underlay as WireGuard ({wg_bytes} bytes)"
    );
    assert!(
        wg.iter().all(|f| f.payload.first() == Some(&4)),
        "data messages (type 4)"
    );
    assert_eq!(vxlan, 0, "no VXLAN on the underlay of an encrypted cluster");
    assert_eq!(clear, 0, "the marker never crosses the underlay in clear");

    // Sessions, counters and metrics per peer.
    let s1 = n1.status().unwrap();
    let p2 = peer(&s1, &n2.name);
    assert!(p2.tx_packets >= 15 && p2.rx_packets > 0, "{p2:?}");
    let age = p2.wg.as_ref().unwrap().session.handshake_age_ms;
    assert!(age.is_some(), "{p2:?}");
    let up = n1.metric(&format!(
        "overlayd_wg_session_established{{peer=\"{}\"}}",
        n2.name
    ));
    assert_eq!(up, Some(1.0));
    let diagnose = n1.daemon().client(&["diagnose", n2.pod_ip()]);
    let text = String::from_utf8_lossy(&diagnose.stdout);
    assert!(text.starts_with("OK:"), "{text}");
    assert!(text.contains("handshake"), "{text}");
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn b_only_the_published_key_is_accepted_and_a_forged_key_is_counted() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let nodes = encrypted_nodes(&cluster, 2);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    // A host on the underlay with a key of its own claims to be in n2's subnet and
    // hands shakes with n1, knowing n1's public key (it is no secret).
    let forger = WgGo::start(&cluster, 9, "10.244.250.1/24");
    forger.peer(&pubkey(&n1.dirs.state_dir), "198.18.0.1", "10.244.0.0/16");
    let before = n1.daemon().drops("unknown_key");
    forger
        .ns
        .try_exec(&["ping", "-c", "2", "-W", "1", "-q", n1.pod_ip()]);
    let counted = wait_until(Duration::from_secs(10), || {
        n1.daemon().drops("unknown_key") > before
    });
    let s1 = n1.status().unwrap();
    println!(
        "n1 drops after the forged handshakes: {:?}",
        s1.dataplane.drops
    );
    assert!(
        counted,
        "a handshake from an unknown key is counted:\n{}",
        sessions(&nodes)
    );
    assert_eq!(
        forger.handshakes(),
        0,
        "the forger never completes a handshake"
    );
    // The real peers are unaffected.
    assert!(pod_ping(n1, n2, 2) && pod_ping(n2, n1, 2));
    assert_eq!(
        peer(&s1, &n2.name).wg.as_ref().unwrap().session.session,
        "established"
    );
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn c_a_replayed_datagram_is_dropped_and_counted() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let nodes = encrypted_nodes(&cluster, 2);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    // Capture a data message n2 sends n1 (a ping reply).
    let capture = n1.ns.run(|| RawCapture::open("eth0"));
    assert!(pod_ping(n1, n2, 2));
    let frames = capture.frames_for(Duration::from_millis(300));
    let data = udp_frames(&frames)
        .into_iter()
        .find(|f| {
            f.src.ip().octets() == [198, 18, 0, 2]
                && f.dst.port() == WG_PORT
                && f.payload.first() == Some(&4)
                && f.payload.len() > 32
        })
        .expect("a WireGuard data message from n2");
    let delivered = n1.status().unwrap().dataplane.rx_packets;
    let before = n1.daemon().drops("replay");
    // Replay it from n2's underlay address, three times.
    n2.ns.run(|| {
        let s = UdpSocket::bind("198.18.0.2:0").unwrap();
        for _ in 0..3 {
            s.send_to(&data.payload, ("198.18.0.1", WG_PORT)).unwrap();
        }
    });
    let counted = wait_until(Duration::from_secs(5), || {
        n1.daemon().drops("replay") >= before + 3
    });
    let s1 = n1.status().unwrap();
    println!("n1 drops after 3 replays: {:?}", s1.dataplane.drops);
    assert!(counted, "replays are counted:\n{}", sessions(&nodes));
    assert_eq!(
        s1.dataplane.rx_packets, delivered,
        "no replayed packet reaches a pod"
    );
    let failures = &peer(&s1, &n2.name).wg.as_ref().unwrap().session.failures;
    assert!(
        failures.get("replay").copied().unwrap_or(0) >= 3,
        "{failures:?}"
    );
    assert!(pod_ping(n1, n2, 2), "the session still works");
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn d_kill9_and_restart_hands_shake_again_and_traffic_is_back_within_5s() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let mut nodes = encrypted_nodes(&cluster, 2);
    let subnet = nodes[0].subnet();
    let key = pubkey(&nodes[0].dirs.state_dir);
    nodes[0].daemon.as_mut().unwrap().kill9();
    nodes[0].launch("198.18.0.2");
    let up = Instant::now();
    assert!(wait_until(Duration::from_secs(30), || nodes[0]
        .subnet()
        .is_some()));
    assert_eq!(
        nodes[0].subnet(),
        subnet,
        "the same subnet after the restart"
    );
    assert_eq!(
        pubkey(&nodes[0].dirs.state_dir),
        key,
        "the same key after the restart"
    );
    let leased = up.elapsed();
    // The handshake is what this test is about: the 5 s of issue 15 count from the
    // moment the restarted node has its lease again (about 1 s after the start, the
    // lease protocol's own time), so a loaded machine's slower start does not count.
    let since_lease = Instant::now();
    let back = wait_until(Duration::from_secs(30), || {
        pod_ping(&nodes[0], &nodes[1], 1) && pod_ping(&nodes[1], &nodes[0], 1)
    });
    let took = since_lease.elapsed();
    println!(
        "after kill -9: lease back {:.2}s after the restart, traffic both ways {:.2}s after that ({:.2}s after the restart)",
        leased.as_secs_f64(),
        took.as_secs_f64(),
        up.elapsed().as_secs_f64()
    );
    assert!(
        back,
        "traffic is back:\n{}\n{}",
        sessions(&nodes),
        logs(&nodes)
    );
    assert!(
        took <= Duration::from_secs(5),
        "traffic took {took:?} after the lease to come back (issue 15 asks for 5 s):\n{}",
        sessions(&nodes)
    );
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn e_a_wireguard_go_peer_reaches_pods_both_ways() {
    let _load = load::heavy();
    let cluster = TestCluster::new(OVERLAYD);
    let wg = WgGo::start(&cluster, 9, "10.244.9.1/24");
    let flags = encrypt_flags(&cluster);
    let static_peer = format!("10.244.9.0/24,198.18.0.9:{WG_PORT},wg-key={}", wg.public);
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend(["--subnet", "10.244.1.0/24", "--static-peer", &static_peer]);
    let mut n1 = cluster.start_extra(1, "", &extra);
    assert!(n1.attach_pod());
    // Before the WireGuard host knows n1's key it ignores n1's handshakes; after two
    // unanswered initiations (WireGuard retries after 5 s), diagnose says why.
    n1.pod()
        .ns
        .try_exec(&["ping", "-c", "1", "-W", "1", "-q", "10.244.9.1"]);
    // WireGuard retries an initiation after 5 s (Rekey-Timeout, a protocol timer).
    let failed = wait_until(Duration::from_secs(30), || {
        n1.status().is_some_and(|s| {
            s.peers[0]
                .wg
                .as_ref()
                .is_some_and(|w| w.session.initiations >= 2)
        })
    });
    assert!(failed, "{:?}", n1.status().map(|s| s.peers));
    let out = n1.daemon().client(&["diagnose", "10.244.9.1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        text.starts_with("PROBLEM: handshake with static:10.244.9.0/24 failed: no answer to"),
        "{text}"
    );
    // The plain WireGuard peer takes n1's key from `overlayd pubkey`.
    wg.peer(&pubkey(&n1.dirs.state_dir), "198.18.0.1", "10.244.1.0/24");
    let both = wait_until(Duration::from_secs(15), || {
        n1.pod().ns.ping("10.244.9.1") && wg.ns.ping(n1.pod_ip())
    });
    assert!(
        both,
        "ping both ways:\n{}\n{}",
        wg.ns.exec(&["wg", "show"]),
        n1.log_text()
    );
    assert!(wg.handshakes() > 0, "{}", wg.ns.exec(&["wg", "show"]));
    let to_wg = iperf3(&wg.ns, &n1.pod().ns, "10.244.9.1", 3);
    let from_wg = iperf3(&n1.pod().ns, &wg.ns, n1.pod_ip(), 3);
    println!(
        "iperf3 TCP pod -> wireguard-go {to_wg:.2} Gb/s, wireguard-go -> pod {from_wg:.2} Gb/s"
    );
    assert!(to_wg > 0.0 && from_wg > 0.0);
    let s1 = n1.status().unwrap();
    let p = &s1.peers[0];
    assert_eq!(p.wg.as_ref().unwrap().session.session, "established");
    assert!(p.rx_bytes > 1_000_000 && p.tx_bytes > 1_000_000, "{p:?}");
    drop(n1);
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn f_rotate_key_keeps_traffic_flowing() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let nodes = encrypted_nodes(&cluster, 2);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let old = pubkey(&n1.dirs.state_dir);
    // 100 pings 20 ms apart (2 s) from pod 2 to pod 1 across the rotation.
    let pinger = n2
        .pod()
        .ns
        .command("ping")
        .args(["-c", "100", "-i", "0.02", "-W", "1", "-q", n1.pod_ip()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pinger = ChildGuard::new(pinger);
    std::thread::sleep(Duration::from_millis(400));
    let out = n1.daemon().client(&["rotate-key"]);
    assert!(out.status.success(), "{out:?}");
    let new = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(new, old);
    assert_eq!(pubkey(&n1.dirs.state_dir), new, "the new key is kept");
    let out = pinger.into_inner().unwrap().wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let received: u32 = text
        .split(", ")
        .find_map(|p| p.strip_suffix(" received")?.parse().ok())
        .unwrap_or(0);
    let lost = 100 - received;
    println!(
        "rotate-key: {lost} of 100 pings 20 ms apart lost ({} ms of traffic)",
        lost * 20
    );
    assert!(
        lost * 20 <= 1000,
        "at most 1 s of loss across a key rotation: {text}\n{}",
        sessions(&nodes)
    );
    // n2 learned the new key through gossip, and both ways work with it.
    let learned = wait_until(Duration::from_secs(5), || {
        n2.status().is_some_and(|s| {
            peer(&s, &n1.name).wg.as_ref().map(|w| w.public_key.clone()) == Some(new.clone())
        })
    });
    assert!(learned, "{}", sessions(&nodes));
    assert!(pod_ping(n1, n2, 2) && pod_ping(n2, n1, 2));
    let s1: StatusReport = n1.status().unwrap();
    assert_eq!(s1.path.wg.as_ref().unwrap().public_key, new);
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn g_a_node_that_does_not_encrypt_is_refused_with_both_values_named() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let key = cluster.secret_file().display().to_string();
    // n1 founds an encrypted cluster alone; n2, without --encrypt, is refused and
    // exits (a new node refused by an established cluster does), naming both values.
    let n1 = cluster.start_extra(1, "", &["--encrypt", "--secret-file", &key]);
    assert!(wait_until(Duration::from_secs(20), || n1
        .subnet()
        .is_some()));
    let mut n2 = cluster.node(2);
    n2.extra = vec!["--secret-file".into(), key.clone()];
    let (ok, text) = n2.launch_expect_exit("198.18.0.1");
    assert!(!ok, "{text}");
    assert!(
        text.contains("encryption (--encrypt) on here, off on n2")
            || text.contains("encryption (--encrypt) off here, on on n1"),
        "{text}"
    );
    let s = n1.status().unwrap();
    assert!(s.peers.is_empty(), "n1 must not route to n2: {:?}", s.peers);
    // And --encrypt without a cluster key does not start.
    let n3 = cluster.node(3);
    let mut bare = n3;
    bare.extra = vec!["--encrypt".into()];
    let (ok, text) = bare.launch_expect_exit("198.18.0.1");
    assert!(
        !ok && text.contains("--encrypt") && text.contains("--secret-file"),
        "{text}"
    );
}

/// A plain WireGuard host on the underlay: `wireguard-go` in node namespace
/// 198.18.0.`i`, its address `addr` on its interface, listening on [`WG_PORT`].
struct WgGo {
    ns: Netns,
    public: String,
    /// The interface: unique, because wireguard-go's control socket
    /// (`/var/run/wireguard/NAME.sock`) is one file for every namespace.
    dev: String,
    process: Option<ChildGuard>,
}

impl Drop for WgGo {
    /// Stops wireguard-go, then removes its control socket, which it leaves behind.
    fn drop(&mut self) {
        drop(self.process.take());
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.dev));
    }
}

impl WgGo {
    fn start(cluster: &TestCluster, i: u8, addr: &str) -> WgGo {
        let ns = cluster.switch.node(i);
        ns.ip(&["link", "set", "lo", "up"]);
        let dev = format!("owg{}x{i}", std::process::id() % 100_000);
        let child = ns
            .command("wireguard-go")
            .args(["-f", &dev])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("wireguard-go (Debian package wireguard-go)");
        let process = ChildGuard::new(child);
        assert!(
            wait_until(Duration::from_secs(5), || ns
                .try_exec(&["ip", "link", "show", &dev])),
            "wireguard-go made no {dev}"
        );
        let key_file = cluster.dir().join(format!("wg{i}.key"));
        let private = ns.exec(&["wg", "genkey"]);
        std::fs::write(&key_file, private.trim()).unwrap();
        let public = ns
            .command("wg")
            .arg("pubkey")
            .stdin(std::fs::File::open(&key_file).unwrap())
            .output()
            .unwrap();
        let public = String::from_utf8(public.stdout).unwrap().trim().to_string();
        let port = WG_PORT.to_string();
        let key = key_file.display().to_string();
        ns.exec(&["wg", "set", &dev, "private-key", &key, "listen-port", &port]);
        ns.ip(&["addr", "add", addr, "dev", &dev]);
        ns.ip(&["link", "set", &dev, "mtu", "1420", "up"]);
        WgGo {
            ns,
            public,
            dev,
            process: Some(process),
        }
    }

    /// Adds overlayd node `endpoint` with key `key` as a peer owning `allowed`, and
    /// routes `allowed` through the interface.
    fn peer(&self, key: &str, endpoint: &str, allowed: &str) {
        let endpoint = format!("{endpoint}:{WG_PORT}");
        self.ns.exec(&[
            "wg",
            "set",
            &self.dev,
            "peer",
            key,
            "allowed-ips",
            allowed,
            "endpoint",
            &endpoint,
        ]);
        self.ns.ip(&["route", "replace", allowed, "dev", &self.dev]);
    }

    /// Handshakes completed with any peer (from `wg show DEV latest-handshakes`).
    fn handshakes(&self) -> usize {
        self.ns
            .exec(&["wg", "show", &self.dev, "latest-handshakes"])
            .lines()
            .filter(|l| l.split_whitespace().nth(1).is_some_and(|t| t != "0"))
            .count()
    }
}
