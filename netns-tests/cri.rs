//! Root-only tests of the kubelet's path to overlayd-cni (issue 25): Debian's containerd
//! 1.6 on each node, driven through its CRI (`RunPodSandbox`, `PodSandboxStatus`,
//! `StopPodSandbox`, `RemovePodSandbox`) as the kubelet drives it, runs the plugin that
//! `overlayd --install-cni` installed (see `overlayd_test_support::cri`). Each test
//! creates and removes its own namespaces, daemons and containerds.
//!
//! Run as root, with overlayd-cni built in the same profile:
//! `cargo build --release -p overlayd-cni && cargo test --release --features netns-tests
//! --test netns_cri -- --show-output`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use overlayd_test_support::cluster::{logs, DaemonNode, TestCluster};
use overlayd_test_support::cri::{median, CniDirs, Containerd, CriCall, PodId, PodStatus};
use overlayd_test_support::rand::Rng;
use overlayd_test_support::rng::SeededRng;
use overlayd_test_support::{load, wait_until, workspace_bin, Netns};

const OVERLAYD: &str = env!("CARGO_BIN_EXE_overlayd");

/// The reference network of the benchmark: bridge + host-local.
const REF_CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"ref","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.250.0/24"}]]}}]}"#;

/// A node of a [`TestCluster`] with its containerd and its daemon (which installed
/// the plugin and the conflist into `cni`). The daemon runs in containerd's mount
/// namespace, as a DaemonSet's pod with hostPath volumes sees the host: the pods'
/// netns under `/var/run/netns` and the plugin's store under `/var/lib/cni` are where
/// the plugin records them. Fields drop in order: containerd (its pods' DELs still
/// find the daemon's node.json; it then ends every process in its mount namespace,
/// the daemon too), then the daemon.
struct CriNode {
    containerd: Containerd,
    cni: CniDirs,
    node: DaemonNode,
    /// The node's veths before any pod (its underlay `eth0` is one).
    own_veths: Vec<String>,
}

/// Starts, for each `(i, peers, dataplane)`, containerd on node `i`, then daemon `i`
/// in containerd's mount namespace with `--dataplane <dataplane>`, `--install-cni`
/// into the node's CNI dirs and `extra`; waits until every daemon has a lease and has
/// installed its conflist.
fn start_nodes(cluster: &TestCluster, specs: &[(u8, &str, &str)], extra: &[&str]) -> Vec<CriNode> {
    let mut nodes: Vec<CriNode> = specs
        .iter()
        .map(|&(i, peers, dataplane)| {
            let cni = CniDirs::under(cluster.dir(), &format!("n{i}"));
            let mut node = cluster.node(i);
            let containerd = Containerd::start(&node.ns, &cni);
            let mut flags = vec!["--dataplane".to_string(), dataplane.to_string()];
            flags.extend(cni.install_flags(&workspace_bin("overlayd-cni")));
            flags.extend(extra.iter().map(|s| s.to_string()));
            node.extra = flags;
            node.mount_of = Some(containerd.mount_anchor());
            node.launch(peers);
            CriNode {
                containerd,
                cni,
                node,
                own_veths: Vec::new(),
            }
        })
        .collect();
    let ok = wait_until(Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| n.node.subnet().is_some() && n.cni.has_conflist())
    });
    assert!(
        ok,
        "not every node leased a subnet and installed its conflist:\n{}",
        logs(&nodes.iter().map(|n| &n.node).collect::<Vec<_>>())
    );
    for n in &mut nodes {
        n.own_veths = n.node.ns.links("veth");
    }
    nodes
}

impl CriNode {
    /// The installed conflist.
    fn conflist(&self) -> serde_json::Value {
        let path = self.cni.conf_dir.join("10-overlayd.conflist");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    /// The plugin's IPAM store of the installed network: `<dataDir>/<name>`, with
    /// `dataDir` under `/var/lib/cni` as containerd's mount namespace sees it.
    fn store(&self) -> PathBuf {
        let conf = self.conflist();
        let data_dir = conf["plugins"][0]["dataDir"].as_str().expect("dataDir");
        let rel = data_dir
            .strip_prefix("/var/lib/cni")
            .unwrap_or_else(|| panic!("dataDir {data_dir} is not under /var/lib/cni"));
        self.containerd
            .var_lib_cni()
            .join(rel.trim_start_matches('/'))
            .join(conf["name"].as_str().expect("name"))
    }

    /// The addresses reserved in the store, sorted.
    fn reserved(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.store())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        v.sort();
        v
    }

    /// What a pod could leave behind on this node: reserved addresses, host veths,
    /// files of the libcni result cache, files in the store other than its lock and
    /// cursors.
    fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .reserved()
            .into_iter()
            .map(|a| format!("address {a}"))
            .collect();
        left.extend(
            self.node
                .ns
                .links("veth")
                .into_iter()
                .filter(|l| !self.own_veths.contains(l))
                .map(|l| format!("veth {l}")),
        );
        let store = self.store();
        let store_rel = store
            .strip_prefix(self.containerd.var_lib_cni())
            .unwrap()
            .display()
            .to_string();
        for f in self.containerd.cni_files() {
            let in_store = f.strip_prefix(&format!("{store_rel}/"));
            let kept = matches!(in_store, Some(n) if n == "lock" || n.starts_with("last_reserved"));
            if !kept && (f.starts_with("results/") || in_store.is_some()) {
                left.push(format!("file /var/lib/cni/{f}"));
            }
        }
        left
    }

    /// The plugin's log.
    fn plugin_log(&self) -> String {
        std::fs::read_to_string(self.containerd.var_log().join("overlayd-cni.log"))
            .unwrap_or_default()
    }
}

/// One pod started through the CRI.
struct CriPod {
    node: usize,
    id: PodId,
    name: String,
    status: PodStatus,
}

/// The plugin's own ADD times, and those of each pod's first DEL (StopPodSandbox: the
/// real work) and second DEL (RemovePodSandbox: nothing left to do), from its log
/// lines (`ADD container=ID ok in 7.3 ms`).
fn plugin_times(log: &str) -> [Vec<Duration>; 3] {
    let mut out: [Vec<Duration>; 3] = Default::default();
    let mut dels_seen: HashMap<String, usize> = HashMap::new();
    for line in log.lines() {
        let Some((head, ms)) = line.split_once(" ok in ") else {
            continue;
        };
        let Some(ms) = ms
            .strip_suffix(" ms")
            .and_then(|m| m.trim().parse::<f64>().ok())
        else {
            continue;
        };
        let d = Duration::from_secs_f64(ms / 1e3);
        if head.contains(" Info ADD container=") {
            out[0].push(d);
        } else if let Some((_, id)) = head.split_once(" Info DEL container=") {
            let n = dels_seen.entry(id.to_string()).or_default();
            *n += 1;
            out[if *n == 1 { 1 } else { 2 }].push(d);
        }
    }
    out
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Median, min and max of `xs`, in ms.
fn summary(xs: &[Duration]) -> String {
    let (min, max) = (
        xs.iter().min().copied().unwrap_or_default(),
        xs.iter().max().copied().unwrap_or_default(),
    );
    format!(
        "median {} (min {}, max {}, n={})",
        fmt_ms(median(xs)),
        fmt_ms(min),
        fmt_ms(max),
        xs.len()
    )
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn a_three_nodes_pods_get_our_addresses_ping_and_both_dels_free_them() {
    let _load = load::shared();
    let cluster = TestCluster::new(OVERLAYD);
    let nodes = start_nodes(
        &cluster,
        &[
            (1, "198.18.0.2", "auto"),
            (2, "198.18.0.1", "auto"),
            (3, "198.18.0.1", "userspace"),
        ],
        &[],
    );
    for n in &nodes {
        let s = n.node.status().unwrap();
        println!(
            "{}: subnet {:?}, dataplane {}",
            n.node.name, s.node.subnet, s.path.mode
        );
    }
    let modes: Vec<String> = nodes
        .iter()
        .map(|n| n.node.status().unwrap().path.mode.to_string())
        .collect();
    assert_eq!(
        modes,
        ["kernel", "kernel", "userspace"],
        "--dataplane auto picks the kernel one here"
    );

    // Two pods per node, with namespace, name and UID, as the kubelet asks for them.
    let mut pods = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for k in 0..2 {
            let name = format!("web-{}-{k}", n.node.name);
            let uid = format!("0000000{i}-0000-4000-8000-00000000000{k}");
            let id = n.containerd.run_pod("cri-test", &name, &uid);
            let status = n.containerd.pod_status(&id);
            assert!(status.ready, "{name}: {status:?}");
            pods.push(CriPod {
                node: i,
                id,
                name,
                status,
            });
        }
    }

    // PodSandboxStatus reports the address our plugin reserved, in the node's subnet.
    for n in nodes.iter().enumerate() {
        let (i, n) = n;
        let mut reported: Vec<String> = pods
            .iter()
            .filter(|p| p.node == i)
            .map(|p| {
                assert_eq!(p.status.ips.len(), 1, "{}: {:?}", p.name, p.status);
                p.status.ip().to_string()
            })
            .collect();
        reported.sort();
        assert_eq!(
            n.reserved(),
            reported,
            "{}: the store {} holds what PodSandboxStatus reports\n{}",
            n.node.name,
            n.store().display(),
            n.plugin_log()
        );
        let subnet: ipnet::Ipv4Net = n.node.subnet().unwrap().parse().unwrap();
        for ip in &reported {
            assert!(
                subnet.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()),
                "{ip} not in {subnet}"
            );
        }
    }
    for p in &pods {
        println!(
            "{} on n{}: {} (sandbox {}, pause pid {:?}, netns {:?})",
            p.name,
            p.node + 1,
            p.status.ip(),
            &p.id.0[..12],
            p.status.pid,
            p.status.netns
        );
    }

    // `overlayd pods` lists each pod with its namespace/name, address, container and
    // host veth, as running; the metric counts them; `diagnose NAMESPACE/NAME` finds
    // a pod of this node and says plainly that it knows no pod of another.
    for (i, n) in nodes.iter().enumerate() {
        let out = n.node.daemon().client(&["pods"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "overlayd pods: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{} overlayd pods:\n{text}", n.node.name);
        let out = n.node.daemon().client(&["pods", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed = json["pods"].as_array().unwrap();
        let mine: Vec<&CriPod> = pods.iter().filter(|p| p.node == i).collect();
        assert_eq!(listed.len(), mine.len(), "{json}");
        for p in mine {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("cri-test/{} ", p.name)))
                .unwrap_or_else(|| panic!("{} is not in overlayd pods:\n{text}", p.name));
            assert!(
                line.contains(p.status.ip()) && line.ends_with("running"),
                "{line}"
            );
            let entry = listed
                .iter()
                .find(|e| e["name"] == p.name.as_str())
                .unwrap();
            assert_eq!(entry["namespace"], "cri-test");
            assert_eq!(entry["container_id"], p.id.0.as_str());
            assert_eq!(entry["ips"][0], p.status.ip());
            assert_eq!(entry["state"], "running");
            assert_eq!(entry["netns"].as_str(), p.status.netns.as_deref());
            let veth = entry["host_veth"].as_str().unwrap();
            assert!(
                n.node.ns.links("veth").iter().any(|l| l == veth),
                "{veth} is not a veth of {}",
                n.node.name
            );
        }
        assert_eq!(n.node.metric("overlayd_pods "), Some(2.0));
    }
    let p = &pods[0];
    let out = nodes[0]
        .node
        .daemon()
        .client(&["diagnose", &format!("cri-test/{}", p.name)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "pod cri-test/{}, address {}:",
            p.name,
            p.status.ip()
        )) && text.contains("local pod"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = nodes[0]
        .node
        .daemon()
        .client(&["diagnose", "cri-test/web-n2-0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no pod cri-test/web-n2-0 on this node"),
        "{err}"
    );

    // Every pod pings every pod, across kernel and userspace nodes.
    let mut missing: Vec<(usize, usize)> = (0..pods.len())
        .flat_map(|a| {
            (0..pods.len())
                .filter(move |&b| b != a)
                .map(move |b| (a, b))
        })
        .collect();
    let ok = wait_until(Duration::from_secs(30), || {
        missing.retain(|&(a, b)| {
            let (from, to) = (&pods[a], &pods[b]);
            !nodes[from.node].containerd.pod_exec(
                &from.status,
                &["ping", "-c", "1", "-W", "2", "-q", to.status.ip()],
            )
        });
        missing.is_empty()
    });
    let missing_names: Vec<String> = missing
        .iter()
        .map(|&(a, b)| format!("{} -> {}", pods[a].name, pods[b].name))
        .collect();
    assert!(
        ok,
        "pods that cannot reach each other: {missing_names:?}\n{}",
        logs(&nodes.iter().map(|n| &n.node).collect::<Vec<_>>())
    );
    println!(
        "every pod reached every pod ({} pairs)",
        pods.len() * (pods.len() - 1)
    );

    // StopPodSandbox (DEL with netns and prevResult) frees the address and the veth;
    // RemovePodSandbox (DEL without either) succeeds and changes nothing.
    for p in &pods {
        let n = &nodes[p.node];
        n.containerd.stop_pod(&p.id);
        assert!(
            !n.reserved().contains(&p.status.ip().to_string()),
            "{}: {} still reserved after StopPodSandbox",
            p.name,
            p.status.ip()
        );
        let stored = n.reserved();
        n.containerd.remove_pod(&p.id);
        assert_eq!(
            n.reserved(),
            stored,
            "RemovePodSandbox of {} changed the store",
            p.name
        );
        assert!(
            n.containerd.try_pod_status(&p.id).is_err(),
            "{} is still known after RemovePodSandbox",
            p.name
        );
    }
    for n in &nodes {
        let left = n.leftovers();
        assert!(
            left.is_empty(),
            "{}: left after both DELs: {left:?}\n{}",
            n.node.name,
            n.plugin_log()
        );
        for call in [
            CriCall::RunPodSandbox,
            CriCall::StopPodSandbox,
            CriCall::RemovePodSandbox,
        ] {
            println!(
                "{} {call:?}: {}",
                n.node.name,
                summary(&n.containerd.timings(call))
            );
        }
    }
}

/// Where a churned pod is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    New,
    Running,
    Stopped,
    Removed,
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn b_churn_30_pods_at_random_leaves_nothing() {
    let _load = load::heavy();
    const PODS: usize = 30;
    const THREADS: usize = 4;
    let mut rng = SeededRng::from_env("OVERLAYD_CRI_CHURN_SEED");
    let seed = rng.seed();
    let cluster = TestCluster::new(OVERLAYD);
    let nodes = start_nodes(&cluster, &[(1, "", "auto")], &[]);
    let n = &nodes[0];
    // Pod -> thread, at random; each thread then walks its pods' lives in a random
    // interleaving (run, stop, remove, in that order for each pod).
    let mut share: Vec<Vec<usize>> = vec![Vec::new(); THREADS];
    for p in 0..PODS {
        share[rng.random_range(0..THREADS)].push(p);
    }
    // Addresses of running pods -> pod: no two running pods may ever share one.
    let live: Mutex<HashMap<String, usize>> = Mutex::new(HashMap::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for (t, mine) in share.iter().enumerate() {
            let live = &live;
            s.spawn(move || {
                let mut rng = SeededRng::new(seed ^ (t as u64 + 1));
                let mut stage: Vec<(usize, Stage, Option<PodId>, String)> =
                    mine.iter().map(|&p| (p, Stage::New, None, String::new())).collect();
                loop {
                    let open: Vec<usize> = (0..stage.len()).filter(|&k| stage[k].1 != Stage::Removed).collect();
                    if open.is_empty() {
                        break;
                    }
                    let k = open[rng.random_range(0..open.len())];
                    let (p, st, id, ip) = &mut stage[k];
                    match st {
                        Stage::New => {
                            let pod = n.containerd.run_pod("churn", &format!("churn-{p}"), &format!("uid-churn-{seed}-{p}"));
                            let status = n.containerd.pod_status(&pod);
                            assert_eq!(status.ips.len(), 1, "churn-{p}: {status:?}");
                            *ip = status.ip().to_string();
                            if let Some(other) = live.lock().unwrap().insert(ip.clone(), *p) {
                                panic!("churn-{p} got {ip}, which running churn-{other} holds (seed {seed})");
                            }
                            assert!(n.reserved().contains(ip), "churn-{p}: {ip} not in the store");
                            *id = Some(pod);
                            *st = Stage::Running;
                        }
                        Stage::Running => {
                            live.lock().unwrap().remove(ip.as_str());
                            n.containerd.stop_pod(id.as_ref().unwrap());
                            *st = Stage::Stopped;
                        }
                        Stage::Stopped => {
                            n.containerd.remove_pod(id.as_ref().unwrap());
                            *st = Stage::Removed;
                        }
                        Stage::Removed => unreachable!(),
                    }
                }
            });
        }
    });
    println!(
        "churn: {PODS} pods run, stopped and removed by {THREADS} threads in {:.2?} (seed {seed})",
        started.elapsed()
    );
    assert!(
        n.containerd.list_pods().is_empty(),
        "containerd still lists pods"
    );
    let left = n.leftovers();
    assert!(
        left.is_empty(),
        "left after the churn (seed {seed}): {left:?}\n{}",
        n.plugin_log()
    );
    for call in [
        CriCall::RunPodSandbox,
        CriCall::StopPodSandbox,
        CriCall::RemovePodSandbox,
    ] {
        println!("churn {call:?}: {}", summary(&n.containerd.timings(call)));
    }
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn c_bench_run_pod_sandbox_overlayd_cni_against_bridge_host_local() {
    // Timings: alone on the machine.
    let _load = load::heavy();
    const RUNS: usize = 20;
    let cluster = TestCluster::new(OVERLAYD);
    let nodes = start_nodes(&cluster, &[(1, "", "auto")], &[]);
    let ovl = &nodes[0];
    let ref_ns = Netns::new("crir");
    let ref_cni = CniDirs::under(cluster.dir(), "ref");
    std::fs::write(ref_cni.conf_dir.join("10-ref.conflist"), REF_CONFLIST).unwrap();
    let reference = Containerd::start(&ref_ns, &ref_cni);

    // One pod each first, not counted: the first RunPodSandbox creates the bridge and
    // the stores.
    let warm = [
        (
            &ovl.containerd,
            ovl.containerd.run_pod("bench", "warm", "uid-warm-ovl"),
        ),
        (
            &reference,
            reference.run_pod("bench", "warm", "uid-warm-ref"),
        ),
    ];
    ovl.containerd.clear_timings();
    reference.clear_timings();
    // Interleaved, so both see the same machine.
    let mut ids = Vec::new();
    for k in 0..RUNS {
        for c in [&ovl.containerd, &reference] {
            let id = c.run_pod("bench", &format!("bench-{k}"), &format!("uid-bench-{k}"));
            ids.push((c, id));
        }
    }
    for c in [&ovl.containerd, &reference] {
        let st = c.pod_status(&ids.iter().find(|(x, _)| std::ptr::eq(*x, c)).unwrap().1);
        assert!(st.ready && !st.ips.is_empty(), "{st:?}");
    }
    for (c, id) in ids.iter().chain(warm.iter()) {
        c.stop_pod(id);
        c.remove_pod(id);
    }
    let left = ovl.leftovers();
    assert!(left.is_empty(), "left after the benchmark: {left:?}");
    println!("RunPodSandbox, {RUNS} pods each, interleaved (printed, not asserted):");
    for (what, c) in [
        ("overlayd-cni         ", &ovl.containerd),
        ("bridge + host-local  ", &reference),
    ] {
        println!(
            "  {what} RunPodSandbox {}",
            summary(&c.timings(CriCall::RunPodSandbox))
        );
        println!(
            "  {what} StopPodSandbox {}",
            summary(&c.timings(CriCall::StopPodSandbox))
        );
        println!(
            "  {what} RemovePodSandbox {}",
            summary(&c.timings(CriCall::RemovePodSandbox))
        );
    }
    let [adds, first_dels, second_dels] = plugin_times(&ovl.plugin_log());
    println!("  overlayd-cni's own times, from its log (every pod of the test):");
    println!("    ADD {}", summary(&adds));
    println!("    DEL at StopPodSandbox {}", summary(&first_dels));
    println!("    DEL at RemovePodSandbox {}", summary(&second_dels));
    let (o, r) = (
        median(&ovl.containerd.timings(CriCall::RunPodSandbox)),
        median(&reference.timings(CriCall::RunPodSandbox)),
    );
    println!(
        "  RunPodSandbox median ratio overlayd-cni / bridge+host-local: {:.2}",
        o.as_secs_f64() / r.as_secs_f64()
    );
}

/// The parent of `pid` (from `/proc/<pid>/stat`).
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn d_lost_dels_are_reclaimed_and_a_running_pod_keeps_its_address() {
    let _load = load::shared();
    const GRACE_SECS: u64 = 5;
    let cluster = TestCluster::new(OVERLAYD);
    let mut nodes = start_nodes(
        &cluster,
        &[(1, "", "auto")],
        &["--reclaim-pod-after", &format!("{GRACE_SECS}s")],
    );
    let n = &mut nodes[0];
    let mut pods = Vec::new();
    for (k, name) in ["lost-a", "lost-b", "kept"].into_iter().enumerate() {
        let id = n.containerd.run_pod(
            "lost",
            name,
            &format!("00000000-0000-4000-8000-00000000001{k}"),
        );
        let status = n.containerd.pod_status(&id);
        assert!(
            status.ready && status.pid.is_some() && status.netns.is_some(),
            "{status:?}"
        );
        pods.push((name, id, status));
    }
    let ip = |k: usize| pods[k].2.ip().to_string();
    let json = |n: &CriNode| -> serde_json::Value {
        serde_json::from_slice(&n.node.daemon().client(&["pods", "--json"]).stdout).unwrap()
    };
    let veth_of = |j: &serde_json::Value, name: &str| -> String {
        j["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["host_veth"].as_str())
            .unwrap_or_else(|| panic!("{name} not listed: {j}"))
            .to_string()
    };
    let listing = json(n);
    let lost_veths = [veth_of(&listing, "lost-a"), veth_of(&listing, "lost-b")];

    // A crash, as a node's would be: containerd and the daemon are killed; so are the
    // lost pods' pause processes and shims, and their netns files are removed by hand.
    // No DEL runs.
    n.containerd.kill9();
    n.node.daemon.as_mut().unwrap().kill9();
    for (name, _, status) in &pods[..2] {
        let pause = status.pid.unwrap();
        let shim = ppid(pause).unwrap();
        for pid in [pause, shim] {
            // SAFETY: kill(2) on pids this test's containerd started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let netns = status.netns.as_deref().unwrap();
        n.containerd.delete_netns(netns);
        assert!(
            !n.containerd.path_exists(netns),
            "{name}: {netns} is still there"
        );
    }
    let gone = wait_until(Duration::from_secs(10), || {
        let links = n.node.ns.links("veth");
        lost_veths.iter().all(|v| !links.contains(v))
    });
    assert!(
        gone,
        "the lost pods' host veths {lost_veths:?} are still there"
    );
    n.containerd.restart();
    n.node.launch("");
    let crashed = Instant::now();
    let reserved_then = n.reserved();
    assert!(
        [ip(0), ip(1), ip(2)]
            .iter()
            .all(|a| reserved_then.contains(a)),
        "before the grace, every address is still reserved: {reserved_then:?}"
    );
    let listing = json(n);
    println!("after the crash: {listing}");

    // Within the grace period plus a minute, the lost pods' addresses are free; the
    // running pod keeps its own.
    let reclaimed = wait_until(Duration::from_secs(GRACE_SECS + 60), || {
        let r = n.reserved();
        !r.contains(&ip(0)) && !r.contains(&ip(1))
    });
    let took = crashed.elapsed();
    assert!(
        reclaimed,
        "the lost pods' addresses are still reserved after {took:?}: {:?}\n{}",
        n.reserved(),
        n.node.log_text()
    );
    println!(
        "lost DELs: addresses reclaimed {:.1} s after the crash (--reclaim-pod-after {GRACE_SECS}s; printed, not asserted)",
        took.as_secs_f64()
    );
    assert_eq!(
        n.reserved(),
        vec![ip(2)],
        "the running pod keeps its address"
    );
    let log = n.node.log_text();
    for (name, id, _) in &pods[..2] {
        assert!(
            log.lines().any(|l| l.contains("reclaimed the addresses")
                && l.contains(&format!("lost/{name}"))
                && l.contains(&id.0)),
            "no reclaim of lost/{name} in the log:\n{log}"
        );
    }
    assert_eq!(n.node.metric("overlayd_pods_reclaimed_total"), Some(2.0));
    assert_eq!(n.node.metric("overlayd_pods "), Some(1.0));
    let listing = json(n);
    let names: Vec<&str> = listing["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["kept"], "{listing}");
    assert_eq!(listing["pods"][0]["state"], "running");

    // A new pod gets a free address, never the running pod's, and reaches it.
    let id = n
        .containerd
        .run_pod("lost", "new", "00000000-0000-4000-8000-000000000020");
    let new = n.containerd.pod_status(&id);
    assert_ne!(new.ip(), ip(2), "a new pod got the running pod's address");
    assert!(
        n.containerd
            .pod_exec(&new, &["ping", "-c", "1", "-W", "2", "-q", &ip(2)]),
        "the new pod cannot reach the running one"
    );
    let mut want = vec![ip(2), new.ip().to_string()];
    want.sort();
    assert_eq!(n.reserved(), want);

    // The lost sandboxes' DELs come at last (the kubelet stops and removes them): they
    // free nothing (a DEL frees only what its own container ID holds).
    for (name, id, _) in &pods[..2] {
        let stop = n.containerd.try_stop_pod(id);
        let remove = n.containerd.try_remove_pod(id);
        println!("late StopPodSandbox/RemovePodSandbox of lost/{name}: {stop:?} / {remove:?}");
    }
    assert_eq!(n.reserved(), want, "a late DEL freed a live pod's address");
    println!("overlayd-cni log:\n{}", n.plugin_log());
    for id in [&pods[2].1, &id] {
        n.containerd.stop_pod(id);
        n.containerd.remove_pod(id);
    }
    let left = n.leftovers();
    assert!(left.is_empty(), "left at the end: {left:?}");
}
