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

/// A node of a [`TestCluster`] with its daemon (which installed the plugin and the
/// conflist into `cni`) and its containerd. Fields drop in order: containerd (its
/// pods' DELs still find the daemon's node.json), then the daemon.
struct CriNode {
    containerd: Containerd,
    cni: CniDirs,
    node: DaemonNode,
    /// The node's veths before any pod (its underlay `eth0` is one).
    own_veths: Vec<String>,
}

/// Starts daemon `i` with `--dataplane <dataplane>` and `--install-cni` into its own
/// CNI dirs, seeded with `peers`; no containerd yet.
fn start_daemon(
    cluster: &TestCluster,
    i: u8,
    peers: &str,
    dataplane: &str,
) -> (DaemonNode, CniDirs) {
    let cni = CniDirs::under(cluster.dir(), &format!("n{i}"));
    let mut flags = vec!["--dataplane".to_string(), dataplane.to_string()];
    flags.extend(cni.install_flags(&workspace_bin("overlayd-cni")));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    (cluster.start_extra(i, peers, &flags), cni)
}

/// Waits for every daemon's lease and installed conflist, then starts a containerd on
/// each node.
fn with_containerd(daemons: Vec<(DaemonNode, CniDirs)>) -> Vec<CriNode> {
    let ok = wait_until(Duration::from_secs(60), || {
        daemons
            .iter()
            .all(|(n, cni)| n.subnet().is_some() && cni.has_conflist())
    });
    let nodes: Vec<&DaemonNode> = daemons.iter().map(|(n, _)| n).collect();
    assert!(
        ok,
        "not every node leased a subnet and installed its conflist:\n{}",
        logs(&nodes)
    );
    daemons
        .into_iter()
        .map(|(node, cni)| CriNode {
            containerd: Containerd::start(&node.ns, &cni),
            own_veths: node.ns.links("veth"),
            cni,
            node,
        })
        .collect()
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
    let nodes = with_containerd(vec![
        start_daemon(&cluster, 1, "198.18.0.2", "auto"),
        start_daemon(&cluster, 2, "198.18.0.1", "auto"),
        start_daemon(&cluster, 3, "198.18.0.1", "userspace"),
    ]);
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
    let nodes = with_containerd(vec![start_daemon(&cluster, 1, "", "auto")]);
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
    let nodes = with_containerd(vec![start_daemon(&cluster, 1, "", "auto")]);
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
    let (o, r) = (
        median(&ovl.containerd.timings(CriCall::RunPodSandbox)),
        median(&reference.timings(CriCall::RunPodSandbox)),
    );
    println!(
        "  RunPodSandbox median ratio overlayd-cni / bridge+host-local: {:.2}",
        o.as_secs_f64() / r.as_secs_f64()
    );
}
