//! Root-only tests of founding by agreement and of islands that merge (issue 13), with
//! real daemons in network namespaces on a shared underlay switch: seed lists with no
//! designated founder (two nodes that name each other, a ring, shared seeds in
//! different orders), a node whose only seed is down, and the four-node start with the
//! founder's gossip port blocked. Each scenario ends in one cluster with distinct
//! subnets and a full pod ping mesh, and survives a kill -9 of every node without
//! founding again. Run with
//! `cargo test --release --features netns-tests --test netns_founding -- --test-threads 1`
//! as root.

use std::time::{Duration, Instant};

use overlayd::control::DEFAULT_GOSSIP_PORT;
use overlayd_test_support::cluster::{
    all_reach_all, assert_distinct, logs, subnet_of, DaemonNode, TestCluster,
};
use overlayd_test_support::daemon::state_name;
use overlayd_test_support::rand::seq::SliceRandom as _;
use overlayd_test_support::rng::SeededRng;
use overlayd_test_support::tools::http_get;
use overlayd_test_support::{load, sh, wait_until, workspace_bin};

/// The daemon under test.
const OVERLAYD: &str = env!("CARGO_BIN_EXE_overlayd");

/// The bound on every wait for leases or pings: a guard against a hang, well over 10x
/// what this machine takes (the issue asks for 10 s; the measured time is printed).
const BOUND: Duration = Duration::from_secs(60);

/// The `--peers` value naming nodes `ids` (underlay 198.18.0.`i`), in that order.
fn seeds(ids: &[u8]) -> String {
    ids.iter()
        .map(|i| format!("198.18.0.{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Where a node stands in its cluster, per its status: the subnet it uses and the
/// founder it knows (name and cluster id, as status renders them).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    subnet: String,
    founder: String,
}

/// The placement `node` reports now, once it has both a subnet and a founder.
fn placement(node: &DaemonNode) -> Option<Placement> {
    let status = node.status()?;
    let subnet = subnet_of(&status)?;
    let founder = status.control?.founder?;
    Some(Placement { subnet, founder })
}

/// Every node's placement, or None while one has none.
fn placements(nodes: &[DaemonNode]) -> Option<Vec<Placement>> {
    nodes.iter().map(placement).collect()
}

/// Whether gossip on `node` knows every other node of `nodes` as alive (one
/// membership, no island).
fn knows_all(node: &DaemonNode, nodes: &[DaemonNode]) -> bool {
    let Some(control) = node.status().and_then(|s| s.control) else {
        return false;
    };
    nodes.iter().filter(|o| o.name != node.name).all(|o| {
        control
            .members
            .iter()
            .any(|m| m.name == o.name && state_name(&m.state) == "alive")
    })
}

/// Starts every node's daemon at once (one thread each), node `k` seeded with
/// `peers[k]`; returns when every admin socket answers.
fn launch_all(nodes: &mut [DaemonNode], peers: &[String]) {
    std::thread::scope(|s| {
        for (n, p) in nodes.iter_mut().zip(peers) {
            s.spawn(move || n.launch(p));
        }
    });
}

/// Waits for every node to lease a distinct subnet (bounded by [`BOUND`], the time
/// since `last_start` printed), to know one and the same founder and every other node
/// as an alive member; returns the placements and the time from `last_start` to every
/// node leased.
#[track_caller]
fn one_cluster(
    label: &str,
    nodes: &[DaemonNode],
    last_start: Instant,
) -> (Vec<Placement>, Duration) {
    let leased = wait_until(BOUND, || nodes.iter().all(|n| n.subnet().is_some()));
    let took = last_start.elapsed();
    assert!(
        leased,
        "{label}: not every node got a subnet {took:.1?} after the last start:\n{}",
        logs(nodes)
    );
    println!("{label}: every node leased {took:.2?} after the last start");
    assert_distinct(nodes);
    let mut found = None;
    let agreed = wait_until(BOUND, || {
        found = placements(nodes);
        found
            .as_ref()
            .is_some_and(|p| p.iter().all(|x| x.founder == p[0].founder))
            && nodes.iter().all(|n| knows_all(n, nodes))
    });
    assert!(
        agreed,
        "{label}: the nodes do not report one founder and one membership: {found:?}\n{}",
        logs(nodes)
    );
    let found = found.expect("placements");
    println!("{label}: founder {}", found[0].founder);
    (found, took)
}

/// Attaches a pod to every node and waits until every pod pings every other pod.
#[track_caller]
fn full_mesh(label: &str, nodes: &mut [DaemonNode]) {
    for n in nodes.iter_mut() {
        assert!(n.attach_pod(), "{label}: {} has no subnet", n.name);
    }
    let t = Instant::now();
    let ok = wait_until(BOUND, || all_reach_all(nodes));
    assert!(
        ok,
        "{label}: pods do not all reach each other:\n{}",
        logs(nodes)
    );
    println!(
        "{label}: full pod ping mesh {:.2?} after the pods",
        t.elapsed()
    );
}

/// Kills every daemon with -9, restarts them in a random order (seed printed), and
/// checks that every node comes back with its subnet and the same founder (so the
/// cluster was not founded again), and that every pod pings every pod again.
#[track_caller]
fn kill_all_and_restart(
    label: &str,
    nodes: &mut [DaemonNode],
    peers: &[String],
    before: &[Placement],
) {
    let mut rng = SeededRng::from_env("OVERLAYD_FOUNDING_SEED");
    for n in nodes.iter_mut() {
        n.daemon.as_mut().expect("daemon running").kill9();
    }
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.shuffle(&mut *rng);
    let names: Vec<&str> = order.iter().map(|&k| nodes[k].name.as_str()).collect();
    println!("{label}: restart order {names:?}");
    let names: Vec<String> = names.into_iter().map(str::to_string).collect();
    for &k in &order {
        nodes[k].launch(&peers[k]);
    }
    let restarted = Instant::now();
    let mut now = None;
    let back = wait_until(BOUND, || {
        now = placements(nodes);
        now.as_deref() == Some(before)
    });
    assert!(
        back,
        "{label}: after kill -9 and a restart in order {names:?}, placements {now:?}, \
         before {before:?}\n{}",
        logs(nodes)
    );
    println!(
        "{label}: every node back with its subnet and founder {:.2?} after the restarts",
        restarted.elapsed()
    );
    assert_distinct(nodes);
    let ok = wait_until(BOUND, || all_reach_all(nodes));
    assert!(
        ok,
        "{label}: pods do not all reach each other after the restart:\n{}",
        logs(nodes)
    );
    // Nothing was founded again: the founder and cluster id every node reports are
    // the ones from before the kill.
    let after = placements(nodes).expect("placements after the restart");
    assert_eq!(after, before, "{label}: placements changed");
}

/// One scenario: nodes `1..=peers.len()` started at once with their seed lists, one
/// cluster with distinct subnets, a full ping mesh, and the kill -9 restart.
fn scenario(label: &str, peers: &[String]) {
    let cluster = TestCluster::new(OVERLAYD);
    let mut nodes: Vec<DaemonNode> = (1..=peers.len() as u8).map(|i| cluster.node(i)).collect();
    launch_all(&mut nodes, peers);
    let last_start = Instant::now();
    let (before, _) = one_cluster(label, &nodes, last_start);
    full_mesh(label, &mut nodes);
    kill_all_and_restart(label, &mut nodes, peers, &before);
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn a_two_nodes_that_name_each_other_found_one_cluster() {
    let _load = load::shared();
    scenario("two that name each other", &[seeds(&[2]), seeds(&[1])]);
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn b_three_nodes_in_a_ring_found_one_cluster() {
    let _load = load::shared();
    scenario("ring of three", &[seeds(&[2]), seeds(&[3]), seeds(&[1])]);
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn c_five_nodes_given_the_same_three_seeds_in_different_orders_found_one_cluster() {
    let _load = load::shared();
    scenario(
        "five, same three seeds",
        &[
            seeds(&[1, 2, 3]),
            seeds(&[3, 1, 2]),
            seeds(&[2, 3, 1]),
            seeds(&[3, 2, 1]),
            seeds(&[1, 3, 2]),
        ],
    );
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn d_a_node_whose_only_seed_is_down_says_so_and_founds_when_it_comes_up() {
    let _load = load::shared();
    let label = "only seed down";
    let cluster = TestCluster::new(OVERLAYD);
    let peers = [seeds(&[2]), seeds(&[1])];
    let mut nodes = vec![cluster.node(1), cluster.node(2)];
    // n1 installs the CNI plugin: the binary at once, the conflist only once it has a
    // subnet (the kubelet keeps a node without a conflist NotReady).
    let cni_bin = cluster.dir().join("n1-cni-bin");
    let cni_conf = cluster.dir().join("n1-cni-conf");
    nodes[0].extra = vec![
        "--install-cni".into(),
        format!("--cni-plugin={}", workspace_bin("overlayd-cni").display()),
        format!("--cni-bin-dir={}", cni_bin.display()),
        format!("--cni-conf-dir={}", cni_conf.display()),
        format!(
            "--cni-data-dir={}",
            cluster.dir().join("n1-cni-data").display()
        ),
    ];
    let conflist = cni_conf.join("10-overlayd.conflist");
    nodes[0].launch(&peers[0]);
    // n1 knows only itself of its two initial peers: its lease line says so, naming
    // the seed it has not heard from, and /healthz gives the same reason.
    let expected = format!(
        "waiting to found: 1 of 2 initial peers present, 2 needed (198.18.0.2:{DEFAULT_GOSSIP_PORT} not heard from)"
    );
    let mut waiting = None;
    let says = wait_until(Duration::from_secs(30), || {
        waiting = nodes[0].status().and_then(|s| s.control?.waiting);
        waiting.as_deref() == Some(expected.as_str())
    });
    assert!(
        says,
        "{label}: n1 waits for {waiting:?}, not {expected:?}\n{}",
        logs(&nodes[..1])
    );
    let (code, body) = http_get(&nodes[0].ns, "127.0.0.1:9469", "/healthz");
    assert!(
        code != 200 && body.contains(&expected),
        "{label}: /healthz {code}: {body}"
    );
    // It keeps waiting: no lease while the seed is down.
    std::thread::sleep(Duration::from_secs(3));
    let status = nodes[0].status().expect("n1 answers");
    assert!(subnet_of(&status).is_none(), "{label}: n1 leased alone");
    assert_eq!(
        status.control.and_then(|c| c.waiting).as_deref(),
        Some(expected.as_str())
    );
    assert!(
        cni_bin.join("overlayd-cni").is_file(),
        "{label}: the plugin is installed at start"
    );
    assert!(
        !conflist.exists(),
        "{label}: the conflist was written before n1 had a subnet"
    );
    // The seed comes up: both found one cluster.
    nodes[1].launch(&peers[1]);
    let last_start = Instant::now();
    let (before, _) = one_cluster(label, &nodes, last_start);
    assert!(
        wait_until(Duration::from_secs(10), || conflist.is_file()),
        "{label}: no conflist once n1 has a subnet\n{}",
        logs(&nodes[..1])
    );
    full_mesh(label, &mut nodes);
    kill_all_and_restart(label, &mut nodes, &peers, &before);
    assert!(
        conflist.is_file() && cni_bin.join("overlayd-cni").is_file(),
        "{label}: a restart removed the conflist or the plugin"
    );
}

/// Drops UDP to the gossip port inside `node`'s namespace (nftables), until
/// [`unblock_gossip`].
fn block_gossip(node: &DaemonNode) {
    let port = DEFAULT_GOSSIP_PORT.to_string();
    node.ns.exec(&["nft", "add", "table", "inet", "ovfound"]);
    node.ns.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "ovfound",
        "in",
        "{ type filter hook input priority 0 ; }",
    ]);
    node.ns.exec(&[
        "nft", "add", "rule", "inet", "ovfound", "in", "udp", "dport", &port, "drop",
    ]);
}

/// Removes the rule of [`block_gossip`] from namespace `ns`.
fn unblock_gossip(ns: &str) {
    sh(&[
        "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "ovfound",
    ]);
}

#[test]
#[cfg_attr(
    not(feature = "netns-tests"),
    ignore = "needs root: run with --features netns-tests"
)]
fn e_four_nodes_with_the_founders_port_blocked_for_3s_end_in_one_cluster_every_time() {
    let _load = load::shared();
    // The start: n1 names only itself, n2 and n3 are given n1, n4 is given n3;
    // n1's gossip port is blocked for its first 3 s, so n3's first join is lost and
    // {n3, n4} start as an island, which re-announces to n1 must merge.
    let peers = [seeds(&[1]), seeds(&[1]), seeds(&[1]), seeds(&[3])];
    // 8 runs in the README's test command (about 7 s each); more with
    // OVERLAYD_FOUNDING_RUNS (docs/founding.md measured 20).
    let runs: u32 = std::env::var("OVERLAYD_FOUNDING_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(8);
    let mut times = Vec::new();
    let whole = Instant::now();
    for run in 1..=runs {
        let label = format!("four-node start, run {run}/{runs}");
        let cluster = TestCluster::new(OVERLAYD);
        let mut nodes: Vec<DaemonNode> = (1..=4u8).map(|i| cluster.node(i)).collect();
        block_gossip(&nodes[0]);
        let n1_ns = nodes[0].ns.name.clone();
        let last_start = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_secs(3));
                unblock_gossip(&n1_ns);
            });
            launch_all(&mut nodes, &peers);
            Instant::now()
        });
        let (before, took) = one_cluster(&label, &nodes, last_start);
        times.push(took);
        full_mesh(&label, &mut nodes);
        if run == runs {
            kill_all_and_restart(&label, &mut nodes, &peers, &before);
        }
        for n in nodes.iter_mut() {
            if let Some(d) = n.daemon.as_mut() {
                d.kill9();
            }
        }
    }
    times.sort();
    println!(
        "four-node start: {runs} runs in {:.1?}, each one cluster; every node leased \
         {:.2?} (median), {:.2?}-{:.2?} after the last start (n1 blocked for its first 3 s)",
        whole.elapsed(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}
