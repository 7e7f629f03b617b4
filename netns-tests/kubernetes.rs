//! Root-only tests of the image run from the Kubernetes manifest (issue 24): the
//! DaemonSet's pod template of `config/kubernetes/overlayd.yaml`, read field by field
//! (test-support's `kube` module), run with podman in each test node's network
//! namespace, from the image `scripts/image.sh` builds; pods added with the plugin and
//! conflist the daemon installed on each host, as that host's runtime would run it.
//! Then a rolling upgrade to the `next` image, a node of an incompatible gossip
//! protocol (`skew`), and the uninstall DaemonSet
//! (`config/kubernetes/overlayd-uninstall.yaml`).
//!
//! Each test has its own namespaces, host directories and podman store, all removed
//! at the end. Run with `cargo test --release --features netns-tests --test
//! netns_kubernetes` as root.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overlayd_test_support::cni::result_ip;
use overlayd_test_support::daemon::{state_name, StatusReport};
use overlayd_test_support::kube::{
    image, repo_root, try_http_get, Image, Manifest, NodeHost, PodTemplate, Podman, Secrets,
};
use overlayd_test_support::process::ChildGuard;
use overlayd_test_support::topology::Switch;
use overlayd_test_support::{load, scratch_dir, unique, wait_until, Netns};
use serde_json::Value;

const MANIFEST: &str = "config/kubernetes/overlayd.yaml";
const UNINSTALL: &str = "config/kubernetes/overlayd-uninstall.yaml";
/// The daemon's run and state dirs in the container (its defaults), whose host paths
/// the manifest's hostPath volumes give.
const RUN_DIR: &str = "/run/overlayd";
const STATE_DIR: &str = "/var/lib/overlayd";

fn manifest_paths(files: &[&str]) -> Vec<PathBuf> {
    files.iter().map(|f| repo_root().join(f)).collect()
}

/// One test node: a namespace on the switch, its host directories, and the
/// container that runs the DaemonSet's pod on it.
struct KubeNode {
    host: NodeHost,
    ns: Netns,
    /// The daemon container's name.
    container: String,
    /// When its current container was started.
    started: Option<Instant>,
}

/// A pod added with the installed CNI plugin.
struct KubePod {
    ns: Netns,
    /// Its address.
    ip: String,
    /// Its container id (CNI_CONTAINERID).
    id: String,
    /// The node it runs on (index).
    node: usize,
}

/// Nodes on one switch running the DaemonSet with podman. Fields drop in order: pods,
/// then the containers (podman), then the node namespaces, the switch, the files.
struct Kube {
    pods: Vec<KubePod>,
    podman: Podman,
    nodes: Vec<KubeNode>,
    _switch: Switch,
    manifest: Manifest,
    template: PodTemplate,
    secrets: Secrets,
    /// When the first container was started.
    t0: Option<Instant>,
    dir: tempfile::TempDir,
}

impl Kube {
    /// `n` nodes at 198.18.0.1..n with ip_forward on (as kubeadm requires of a node),
    /// the manifest with the ConfigMap's `peers` set to the underlay addresses of
    /// nodes `seeds` (1-based), the cluster key Secret, and `images` loaded.
    fn new(n: u8, seeds: &[u8], images: &[&Image]) -> Kube {
        let dir = scratch_dir();
        let switch = Switch::new();
        let nodes = (1..=n)
            .map(|i| {
                let ns = switch.node(i);
                ns.sysctl("net.ipv4.ip_forward", "1");
                let host = NodeHost::new(
                    dir.path(),
                    &format!("n{i}"),
                    &format!("198.18.0.{i}"),
                    &ns.name,
                );
                KubeNode {
                    container: format!("overlayd-{}", host.name),
                    host,
                    ns,
                    started: None,
                }
            })
            .collect();
        let mut manifest = Manifest::load(&manifest_paths(&[MANIFEST]));
        let peers = seeds
            .iter()
            .map(|i| format!("198.18.0.{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let cm = manifest.set_config_key("peers", &peers);
        let template = manifest.daemonset("overlayd");
        let podman = Podman::new();
        for img in images {
            podman.load(img);
        }
        // The cluster key, as the manifest tells the user to create it:
        // `kubectl create secret generic <name> --from-literal=key="$(overlayd genkey)"`.
        let key = podman.run_once(&images[0].reference, &["genkey"]);
        let mut secrets = Secrets::default();
        for name in template.secret_names() {
            secrets.insert(&name, "key", key.as_bytes());
        }
        println!(
            "manifest {MANIFEST}: {:?}; ConfigMap {cm} peers={peers}; secrets {:?}",
            manifest.objects(),
            template.secret_names()
        );
        Kube {
            pods: Vec::new(),
            podman,
            nodes,
            _switch: switch,
            manifest,
            template,
            secrets,
            t0: None,
            dir,
        }
    }

    /// Runs the DaemonSet's pod on node `i` (index) from `image`.
    fn start(&mut self, i: usize, image: &Image) {
        let node = &self.nodes[i];
        let args = self.template.podman_run(
            &self.manifest,
            &self.secrets,
            &node.host,
            &image.reference,
            &node.container,
        );
        if self.t0.is_none() {
            println!("podman {}", args.join(" "));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let now = Instant::now();
        self.podman.ok(&args);
        self.t0.get_or_insert(now);
        self.nodes[i].started = Some(now);
    }

    /// Waits until node `i`'s readiness probe answers 200; the time since its
    /// container was started. Checks the liveness probe answers 200 too.
    #[track_caller]
    fn wait_ready(&self, i: usize, timeout: Duration) -> Duration {
        self.wait_all_ready(&[i], timeout)[0]
    }

    /// Waits until the readiness probe of every node of `which` answers 200, polling
    /// them in turn (so each time is when its node was first seen ready, not when
    /// the wait for the ones before it ended); the times since their containers were
    /// started. Checks each liveness probe answers 200 too.
    #[track_caller]
    fn wait_all_ready(&self, which: &[usize], timeout: Duration) -> Vec<Duration> {
        let urls: Vec<(String, String)> = which
            .iter()
            .map(|&i| self.template.readiness_url(&self.nodes[i].host))
            .collect();
        let mut took: Vec<Option<Duration>> = vec![None; which.len()];
        let mut last = vec![None; which.len()];
        let mut polls = 0u32;
        let mut exited = false;
        let ready = wait_until(timeout, || {
            polls += 1;
            for (j, &i) in which.iter().enumerate() {
                if took[j].is_some() {
                    continue;
                }
                let node = &self.nodes[i];
                last[j] = try_http_get(&node.ns, &urls[j].0, &urls[j].1);
                if last[j].as_ref().is_some_and(|(code, _)| *code == 200) {
                    took[j] = Some(node.started.expect("started").elapsed());
                } else if polls % 10 == 0 && !self.podman.running(&node.container) {
                    // An exited container will not get ready: stop waiting (checked
                    // about once a second, as podman inspect is not free).
                    exited = true;
                }
            }
            exited || took.iter().all(Option::is_some)
        });
        for (j, &i) in which.iter().enumerate() {
            let node = &self.nodes[i];
            let (addr, path) = &urls[j];
            assert!(
                ready && took[j].is_some(),
                "{}: http://{addr}{path} never answered 200 (last: {:?}); running: {}\n{}",
                node.host.name,
                last[j],
                self.podman.running(&node.container),
                self.podman.logs(&node.container)
            );
            if let Some((addr, path)) = self.template.liveness_url(&node.host) {
                let live = try_http_get(&node.ns, &addr, &path);
                assert!(
                    live.as_ref().is_some_and(|(c, _)| *c == 200),
                    "{}: liveness http://{addr}{path}: {live:?}",
                    node.host.name
                );
            }
        }
        took.into_iter().map(Option::unwrap).collect()
    }

    /// `overlayd status --json` in node `i`'s container, typed.
    fn status(&self, i: usize) -> StatusReport {
        let out = self
            .podman
            .exec(&self.nodes[i].container, &["overlayd", "status", "--json"]);
        assert!(
            out.status.success(),
            "{}: status: {}{}",
            self.nodes[i].host.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status is not a StatusReport: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `overlayd status` (text) in node `i`'s container.
    fn status_text(&self, i: usize) -> String {
        let out = self
            .podman
            .exec(&self.nodes[i].container, &["overlayd", "status"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The container logs of every node, for failure messages.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "---- {} ----\n{}",
                    n.container,
                    self.podman.logs(&n.container)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The conflist the runtime on node `i` reads; panics if there is none.
    fn conflist(&self, i: usize) -> (PathBuf, Value) {
        self.nodes[i].host.conflist().unwrap_or_else(|| {
            panic!(
                "{}: no conflist in {}\n{}",
                self.nodes[i].host.name,
                self.nodes[i].host.cni_conf_dir().display(),
                self.logs()
            )
        })
    }

    /// The plugin binary the conflist's first plugin names, on node `i`'s host.
    fn plugin_path(&self, i: usize, conflist: &Value) -> PathBuf {
        let ty = conflist["plugins"][0]["type"]
            .as_str()
            .expect("plugins[0].type");
        self.nodes[i].host.cni_bin_dir().join(ty)
    }

    /// Adds a pod on node `i` with the installed plugin and conflist (CNI ADD, as
    /// the host's runtime runs it).
    fn add_pod(&mut self, i: usize) -> usize {
        let (_, conflist) = self.conflist(i);
        let ty = conflist["plugins"][0]["type"].as_str().unwrap().to_string();
        let conf = NodeHost::first_plugin_conf(&conflist, None);
        let ns = Netns::bare("p");
        let id = unique("ctr");
        let out = self.nodes[i]
            .host
            .exec_cni(&ty, "ADD", &id, &ns.path(), &conf);
        assert_eq!(
            out.code,
            0,
            "ADD on {}: {} {}\nplugin log: {}",
            self.nodes[i].host.name,
            out.stdout,
            out.stderr,
            std::fs::read_to_string(self.nodes[i].host.path("/var/log/overlayd-cni.log"))
                .unwrap_or_default()
        );
        let ip = result_ip(&out.json);
        self.pods.push(KubePod {
            ns,
            ip,
            id,
            node: i,
        });
        self.pods.len() - 1
    }

    /// CNI DEL of pod `p`.
    fn del_pod(&self, p: usize) {
        let pod = &self.pods[p];
        let (_, conflist) = self.conflist(pod.node);
        let ty = conflist["plugins"][0]["type"].as_str().unwrap();
        let conf = NodeHost::first_plugin_conf(&conflist, None);
        let out = self.nodes[pod.node]
            .host
            .exec_cni(ty, "DEL", &pod.id, &pod.ns.path(), &conf);
        assert_eq!(out.code, 0, "DEL: {} {}", out.stdout, out.stderr);
    }

    /// Files other than lock and cursor files in node `i`'s IPAM store.
    fn ipam_files(&self, i: usize) -> Vec<String> {
        let (_, conflist) = self.conflist(i);
        let data_dir = conflist["plugins"][0]["dataDir"]
            .as_str()
            .expect("plugins[0].dataDir");
        let net = conflist["name"].as_str().expect("conflist name");
        self.nodes[i].host.ipam_files(data_dir, net)
    }

    /// Waits (up to `timeout`) until every pod pings every other pod on another node.
    #[track_caller]
    fn assert_all_reach_all(&self, timeout: Duration) {
        for a in &self.pods {
            for b in &self.pods {
                if a.node == b.node {
                    continue;
                }
                let ok = wait_until(timeout, || a.ns.ping_once(&b.ip));
                assert!(
                    ok,
                    "pod on {} cannot ping pod {} on {}\n{}",
                    self.nodes[a.node].host.name,
                    b.ip,
                    self.nodes[b.node].host.name,
                    self.logs()
                );
            }
        }
    }

    /// Stops node `i`'s container as the kubelet does (SIGTERM, SIGKILL after the
    /// grace period).
    fn stop(&self, i: usize) {
        self.podman
            .stop(&self.nodes[i].container, self.template.grace_secs);
    }
}

fn subnet_of(s: &StatusReport) -> String {
    s.node
        .subnet
        .map(|s| s.to_string())
        .unwrap_or_else(|| "none".into())
}

/// Peer name -> state (`alive`, `suspect`, `dead`) in `s`.
fn peer_states(s: &StatusReport) -> BTreeMap<String, String> {
    s.peers
        .iter()
        .map(|p| (p.name.clone(), state_name(&p.state)))
        .collect()
}

/// The nftables tables in `ns` (`inet overlayd`, ...).
fn nft_tables(ns: &Netns) -> Vec<String> {
    ns.exec(&["nft", "list", "tables"])
        .lines()
        .filter_map(|l| l.strip_prefix("table "))
        .map(str::to_string)
        .collect()
}

/// Whether `tables` holds the daemon's table (`overlayd`, in any family).
fn has_overlayd_table(tables: &[String]) -> bool {
    tables
        .iter()
        .any(|t| t.split_whitespace().last() == Some("overlayd"))
}

/// The line of `text` that contains every one of `parts`.
fn line_with<'a>(text: &'a str, parts: &[&str]) -> Option<&'a str> {
    text.lines().find(|l| parts.iter().all(|p| l.contains(p)))
}

/// A ping running from `from` to `dst` every 50 ms until stopped, its output (with
/// timestamps, and a line for each probe still unanswered when the next one goes) in
/// a file.
struct ContinuousPing {
    child: ChildGuard,
    out: PathBuf,
}

/// What a [`ContinuousPing`] saw.
struct PingReport {
    sent: u64,
    received: u64,
    /// When the first and the last lost probe were sent, in seconds since the mark
    /// passed to [`ContinuousPing::stop`] (negative: before it).
    lost_window: Option<(f64, f64)>,
}

impl ContinuousPing {
    fn start(from: &Netns, dst: &str, out: PathBuf) -> ContinuousPing {
        let file = std::fs::File::create(&out).unwrap();
        let child = from
            .command("ping")
            .args(["-D", "-O", "-i", "0.05", "-W", "1", dst])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        ContinuousPing {
            child: ChildGuard::new(child),
            out,
        }
    }

    /// Stops it (SIGINT, so it prints its summary) and reads what it saw; times are
    /// relative to `mark`.
    fn stop(self, mark: std::time::SystemTime) -> PingReport {
        self.child.signal(libc::SIGINT);
        let _ = self.child.into_inner().expect("ping runs").wait();
        let text = std::fs::read_to_string(&self.out).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary: {text}"));
        let nums: Vec<u64> = line
            .split(',')
            .take(2)
            .map(|f| {
                f.split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("ping summary: {line}"))
            })
            .collect();
        // `[<unix time>] ... icmp_seq=<n> ...`: replies, and `no answer yet` lines
        // printed when the next probe goes (one interval after the unanswered one).
        let parse = |l: &str| -> Option<(f64, u64)> {
            let ts = l
                .strip_prefix('[')?
                .split(']')
                .next()?
                .parse::<f64>()
                .ok()?;
            let seq = l.split("icmp_seq=").nth(1)?.split_whitespace().next()?;
            Some((ts, seq.parse().ok()?))
        };
        let mut answered = std::collections::BTreeSet::new();
        let mut unanswered = BTreeMap::new();
        for l in text.lines() {
            if let Some((ts, seq)) = parse(l) {
                if l.contains("no answer yet") {
                    unanswered.entry(seq).or_insert(ts - 0.05);
                } else if l.contains("bytes from") {
                    answered.insert(seq);
                }
            }
        }
        let mark = mark
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let lost: Vec<f64> = unanswered
            .iter()
            .filter(|(seq, _)| !answered.contains(*seq))
            .map(|(_, ts)| ts - mark)
            .collect();
        PingReport {
            sent: nums[0],
            received: nums[1],
            lost_window: lost.first().zip(lost.last()).map(|(a, b)| (*a, *b)),
        }
    }
}

/// Checks every `period` that each of `paths` exists, until dropped; reports what it
/// found missing.
struct PresenceWatch {
    stop: Arc<AtomicBool>,
    missing: Arc<Mutex<Vec<String>>>,
    checks: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PresenceWatch {
    fn start(paths: Vec<PathBuf>, period: Duration) -> PresenceWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let missing = Arc::new(Mutex::new(Vec::new()));
        let checks = Arc::new(Mutex::new(0));
        let (s, m, c) = (stop.clone(), missing.clone(), checks.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for p in &paths {
                    if !p.exists() {
                        m.lock().unwrap().push(p.display().to_string());
                    }
                }
                *c.lock().unwrap() += 1;
                std::thread::sleep(period);
            }
        });
        PresenceWatch {
            stop,
            missing,
            checks,
            thread: Some(thread),
        }
    }

    /// Stops watching; (number of checks, paths seen missing).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let checks = *self.checks.lock().unwrap();
        let mut m = self.missing.lock().unwrap().clone();
        m.dedup();
        (checks, m)
    }
}

impl Drop for PresenceWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts `images[i]` on node `i` for every node, then waits for each to be ready;
/// prints and returns the times to ready.
fn start_all(k: &mut Kube, images: &[&Image]) -> Vec<Duration> {
    for (i, img) in images.iter().enumerate() {
        k.start(i, img);
    }
    let all: Vec<usize> = (0..images.len()).collect();
    k.wait_all_ready(&all, Duration::from_secs(60))
}

fn fmt_durations(d: &[Duration]) -> String {
    d.iter()
        .enumerate()
        .map(|(i, d)| format!("n{} {:.2}s", i + 1, d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn a_three_nodes_from_the_manifest_lease_install_the_plugin_and_pods_ping() {
    // The image is built (or found cached) before the lock: a build is a long
    // compile, during which no other test needs to wait.
    let img = image("current");
    let _load = load::shared();
    let mut k = Kube::new(3, &[1, 2, 3], &[&img]);
    let ready = start_all(&mut k, &[&img, &img, &img]);

    let statuses: Vec<StatusReport> = (0..3).map(|i| k.status(i)).collect();
    let subnets: Vec<String> = statuses.iter().map(subnet_of).collect();
    for (i, s) in statuses.iter().enumerate() {
        assert!(s.node.subnet.is_some(), "n{}: no subnet: {s:?}", i + 1);
        assert_eq!(
            format!("{}", s.path.mode),
            "kernel",
            "n{}: the kernel dataplane (nft in the image) is not active: {:?}\n{}",
            i + 1,
            s.path,
            k.logs()
        );
    }
    let mut distinct = subnets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "subnets {subnets:?}");

    for i in 0..3 {
        let (path, conflist) = k.conflist(i);
        assert_eq!(
            conflist["plugins"][0]["type"],
            "overlayd-cni",
            "{}: {conflist}",
            path.display()
        );
        let plugin = k.plugin_path(i, &conflist);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&plugin)
            .unwrap_or_else(|e| panic!("{}: {e}", plugin.display()))
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{}: mode {mode:o}", plugin.display());
        if i == 0 {
            println!(
                "installed on n1: {} and {}",
                path.strip_prefix(k.dir.path()).unwrap_or(&path).display(),
                plugin
                    .strip_prefix(k.dir.path())
                    .unwrap_or(&plugin)
                    .display()
            );
        }
    }

    for i in 0..3 {
        k.add_pod(i);
    }
    let t0 = k.t0.unwrap();
    let first = wait_until(Duration::from_secs(30), || {
        k.pods[0].ns.ping_once(&k.pods[1].ip)
    });
    let first_ping = t0.elapsed();
    assert!(first, "n1's pod never reached n2's pod\n{}", k.logs());
    k.assert_all_reach_all(Duration::from_secs(10));
    let ips: Vec<&str> = k.pods.iter().map(|p| p.ip.as_str()).collect();
    for (p, s) in k.pods.iter().zip(&subnets) {
        let net: ipnet::IpNet = s.parse().unwrap();
        assert!(
            net.contains(&p.ip.parse::<std::net::IpAddr>().unwrap()),
            "pod {} not in its node's subnet {s}",
            p.ip
        );
    }

    for p in 0..k.pods.len() {
        assert!(!k.ipam_files(k.pods[p].node).is_empty());
        k.del_pod(p);
    }
    for i in 0..3 {
        let left = k.ipam_files(i);
        assert!(
            left.is_empty(),
            "n{}: IPAM store after DEL: {left:?}",
            i + 1
        );
    }

    println!(
        "image {} size {}; podman run to /healthz 200: {}; first container start to \
         first cross-node pod ping: {:.2}s; subnets {subnets:?}; pods {ips:?}",
        img.reference,
        img.size,
        fmt_durations(&ready),
        first_ping.as_secs_f64()
    );
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn b_rolling_upgrade_to_next_keeps_subnets_addresses_and_the_plugin() {
    let (cur, next) = (image("current"), image("next"));
    // Heavy: the lost-ping figures are only meaningful without other tests beside.
    let _load = load::heavy();
    let mut k = Kube::new(3, &[1, 2, 3], &[&cur, &next]);
    let ready = start_all(&mut k, &[&cur, &cur, &cur]);
    println!("current image ready: {}", fmt_durations(&ready));
    for i in 0..3 {
        k.add_pod(i);
    }
    k.assert_all_reach_all(Duration::from_secs(30));
    let before: Vec<String> = (0..3).map(|i| subnet_of(&k.status(i))).collect();
    let macs: Vec<String> = (0..3)
        .map(|i| k.status(i).node.vtep_mac.to_string())
        .collect();
    let reserved: Vec<Vec<String>> = (0..3).map(|i| k.ipam_files(i)).collect();
    let mut watched = Vec::new();
    for i in 0..3 {
        let (path, conflist) = k.conflist(i);
        watched.push(k.plugin_path(i, &conflist));
        watched.push(path);
    }
    let watch = PresenceWatch::start(watched, Duration::from_millis(20));

    let mut figures = Vec::new();
    // (node replaced, node whose pod pings it), by index.
    for (r, from) in [(1usize, 0usize), (2, 0), (0, 1)] {
        let name = k.nodes[r].host.name.clone();
        let pinger = ContinuousPing::start(
            &k.pods[from].ns,
            &k.pods[r].ip,
            k.dir.path().join(format!("ping-{name}.txt")),
        );
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        let mark = std::time::SystemTime::now();
        k.stop(r);
        let stopped = t.elapsed();
        k.podman.rm(&k.nodes[r].container);
        k.start(r, &next);
        let run_at = k.nodes[r].started.unwrap();
        let ready = k.wait_ready(r, Duration::from_secs(60));
        let back = wait_until(Duration::from_secs(15), || {
            k.pods[from].ns.ping_once(&k.pods[r].ip)
        });
        let replaced = t.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let ping = pinger.stop(mark);
        assert!(
            back,
            "{name}: its pod {} is not reachable after the upgrade\n{}",
            k.pods[r].ip,
            k.logs()
        );
        let s = k.status(r);
        assert_eq!(
            subnet_of(&s),
            before[r],
            "{name} changed its subnet in the upgrade"
        );
        assert_eq!(
            s.node.vtep_mac.to_string(),
            macs[r],
            "{name} changed its VTEP MAC in the upgrade"
        );
        assert_eq!(
            s.control.as_ref().map(|c| c.protocol),
            Some(3),
            "{name} on the next image: {:?}",
            s.control
        );
        let text = k.status_text(r);
        assert!(
            line_with(&text, &["gossip protocol 3"]).is_some(),
            "{name} on the next image does not show gossip protocol 3:\n{text}"
        );
        let others: Vec<String> = (0..3)
            .filter(|&j| j != r)
            .map(|j| k.nodes[j].host.name.clone())
            .collect();
        let mut states = BTreeMap::new();
        let alive = wait_until(Duration::from_secs(30), || {
            states = peer_states(&k.status(r));
            others
                .iter()
                .all(|o| states.get(o).is_some_and(|st| st == "alive"))
        });
        assert!(
            alive,
            "{name} after the upgrade sees {states:?}\n{}",
            k.logs()
        );
        let lost = ping.sent - ping.received;
        println!(
            "upgrade {name}: stop {:.2}s, rm and podman run {:.2}s, run to ready {:.2}s, \
             stop to pod reachable {:.2}s; pings {} -> {name} every 50 ms: {} sent, {lost} \
             lost{}",
            stopped.as_secs_f64(),
            (run_at - t - stopped).as_secs_f64(),
            ready.as_secs_f64(),
            replaced.as_secs_f64(),
            k.nodes[from].host.name,
            ping.sent,
            ping.lost_window
                .map(|(a, b)| format!(", sent from {a:+.2}s to {b:+.2}s of the stop"))
                .unwrap_or_default()
        );
        figures.push((name, lost));
    }
    let (checks, missing) = watch.finish();
    assert!(
        missing.is_empty(),
        "missing during the upgrade ({checks} checks): {missing:?}"
    );
    let after: Vec<String> = (0..3).map(|i| subnet_of(&k.status(i))).collect();
    assert_eq!(before, after, "subnets changed");
    // Every pod keeps its address: the same reservations, the same IPs reachable.
    let reserved_after: Vec<Vec<String>> = (0..3).map(|i| k.ipam_files(i)).collect();
    assert_eq!(reserved, reserved_after, "IPAM stores changed");
    k.assert_all_reach_all(Duration::from_secs(10));
    println!(
        "rolling upgrade: subnets {after:?} kept; plugin and conflist present in all \
         {checks} checks; pings lost per replacement {figures:?}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn c_a_skewed_gossip_protocol_is_refused_and_the_others_carry_on() {
    let (cur, skew) = (image("current"), image("skew"));
    let _load = load::shared();
    let mut k = Kube::new(4, &[1, 2, 3], &[&cur, &skew]);
    let ready = start_all(&mut k, &[&cur, &cur, &cur]);
    println!("current nodes ready: {}", fmt_durations(&ready));
    for i in 0..3 {
        k.add_pod(i);
    }
    k.start(3, &skew);
    let skew_addr = k.nodes[3].host.host_ip.clone();

    let mut warned = None;
    let found = wait_until(Duration::from_secs(30), || {
        warned = (0..3).find_map(|i| {
            let logs = k.podman.logs(&k.nodes[i].container);
            line_with(
                &logs,
                &["gossip protocol 9", "this node speaks gossip protocol 2"],
            )
            .map(|l| (i, l.to_string()))
        });
        warned.is_some()
    });
    assert!(found, "no current node logged the refusal\n{}", k.logs());
    let (wi, line) = warned.unwrap();
    println!("n{} logged: {line}", wi + 1);
    let text = k.status_text(wi);
    let status_line = line_with(&text, &["gossip protocol 9", &skew_addr]).unwrap_or_else(|| {
        panic!(
            "status on n{} names no refused peer at {skew_addr}:\n{text}",
            wi + 1
        )
    });
    assert!(
        status_line.contains("protocol 2"),
        "status line without our version: {status_line}"
    );
    println!("n{} status: {}", wi + 1, status_line.trim());
    let s = k.status(wi);
    let refused = &s.control.as_ref().expect("gossip status").refused_versions;
    assert!(
        refused
            .iter()
            .any(|r| r.version == 9 && r.from.ip().to_string() == skew_addr),
        "n{}: refused {refused:?}",
        wi + 1
    );

    // The current nodes still lease, see each other alive, never the skewed node.
    let names: Vec<String> = (0..3).map(|i| k.nodes[i].host.name.clone()).collect();
    for i in 0..3 {
        let s = k.status(i);
        assert!(s.node.subnet.is_some(), "n{} lost its subnet", i + 1);
        let states = peer_states(&s);
        for (j, other) in names.iter().enumerate() {
            if j != i {
                assert_eq!(
                    states.get(other).map(String::as_str),
                    Some("alive"),
                    "n{}: {states:?}",
                    i + 1
                );
            }
        }
        assert!(
            !states.contains_key(&k.nodes[3].host.name),
            "n{} took the skewed node as a peer: {states:?}",
            i + 1
        );
    }
    k.assert_all_reach_all(Duration::from_secs(10));
    let skew_ready = k.template.readiness_url(&k.nodes[3].host).clone();
    println!(
        "skewed node n4: readiness {:?}",
        try_http_get(&k.nodes[3].ns, &skew_ready.0, &skew_ready.1)
    );
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn d_stop_keeps_forwarding_and_the_uninstall_daemonset_removes_everything() {
    let img = image("current");
    let _load = load::shared();
    let mut k = Kube::new(3, &[1, 2, 3], &[&img]);
    start_all(&mut k, &[&img, &img, &img]);
    for i in 0..3 {
        k.add_pod(i);
    }
    k.assert_all_reach_all(Duration::from_secs(30));
    let installed: Vec<(PathBuf, PathBuf)> = (0..3)
        .map(|i| {
            let (path, conflist) = k.conflist(i);
            (path, k.plugin_path(i, &conflist))
        })
        .collect();

    // A plain stop (an upgrade, a node drain) removes nothing, and the kernel keeps
    // forwarding.
    for i in 0..3 {
        k.stop(i);
    }
    for (i, n) in k.nodes.iter().enumerate() {
        let (conf, plugin) = &installed[i];
        assert!(
            conf.is_file() && plugin.is_file(),
            "{}: removed on stop",
            n.host.name
        );
        let links = n.ns.ip(&["-o", "link"]);
        for dev in ["ovl0", "ovlvx0"] {
            assert!(
                links.contains(&format!(": {dev}:")),
                "{}: {dev} gone on stop:\n{links}",
                n.host.name
            );
        }
        let tables = nft_tables(&n.ns);
        assert!(has_overlayd_table(&tables), "{}: {tables:?}", n.host.name);
    }
    k.assert_all_reach_all(Duration::from_secs(10));
    println!("daemons stopped: devices, nft table, plugin and conflist kept; pods still ping");

    let mut manifest = Manifest::load(&manifest_paths(&[MANIFEST, UNINSTALL]));
    let peers = k.manifest.config_value("peers");
    manifest.set_config_key("peers", &peers);
    let uninstall = manifest.daemonset("overlayd-uninstall");
    let run_host = k
        .template
        .host_path_of(RUN_DIR)
        .expect("a run dir hostPath");
    let state_host = k
        .template
        .host_path_of(STATE_DIR)
        .expect("a state dir hostPath");
    for i in 0..3 {
        let node = &k.nodes[i];
        let name = format!("overlayd-uninstall-{}", node.host.name);
        let args = uninstall.podman_run(&manifest, &k.secrets, &node.host, &img.reference, &name);
        if i == 0 {
            println!("podman {}", args.join(" "));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = Instant::now();
        k.podman.ok(&args);
        let mut logs = String::new();
        let done = wait_until(Duration::from_secs(60), || {
            logs = k.podman.logs(&name);
            logs.contains("uninstalled")
        });
        assert!(
            done,
            "{}: uninstall never logged `uninstalled`:\n{logs}",
            node.host.name
        );
        println!(
            "{}: uninstalled in {:.2}s: {}",
            node.host.name,
            t.elapsed().as_secs_f64(),
            line_with(&logs, &["uninstalled"])
                .unwrap_or_default()
                .trim()
        );
        k.podman.stop(&name, uninstall.grace_secs);
    }

    for (i, n) in k.nodes.iter().enumerate() {
        let who = &n.host.name;
        let (conf, plugin) = &installed[i];
        assert!(!conf.exists(), "{who}: {} left", conf.display());
        assert!(!plugin.exists(), "{who}: {} left", plugin.display());
        let links = n.ns.ip(&["-o", "link"]);
        for dev in ["ovl0", "ovlvx0", "ovltun0"] {
            assert!(
                !links.contains(&format!(": {dev}:")) && !links.contains(&format!(": {dev}@")),
                "{who}: {dev} left:\n{links}"
            );
        }
        let routes = n.ns.ip(&["route", "show", "root", "10.244.0.0/16"]);
        let all_routes = n.ns.ip(&["route", "show", "table", "all"]);
        assert!(
            routes.trim().is_empty() && !all_routes.contains("10.244."),
            "{who}: routes left:\n{all_routes}"
        );
        let tables = nft_tables(&n.ns);
        assert!(!has_overlayd_table(&tables), "{who}: nft {tables:?}");
        if i == 0 {
            println!("{who} after uninstall: nft tables {tables:?}");
        }
        for dir in [&run_host, &state_host] {
            let p = n.host.path(dir);
            let left: Vec<String> = std::fs::read_dir(&p)
                .map(|rd| {
                    rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
            assert!(left.is_empty(), "{who}: {dir} holds {left:?}");
        }
    }
    println!(
        "uninstall: no conflist, plugin, ovl0/ovlvx0/ovltun0, 10.244.0.0/16 route or nft \
         table on any node; {run_host} and {state_host} empty"
    );
}
