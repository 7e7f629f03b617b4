//! Runs the control-plane simulator at scale.
//!
//! ```text
//! cargo run --release --example gossip_sim -- converge 1000     # convergence + bandwidth
//! cargo run --release --example gossip_sim -- schedules 2000 9  # random schedules, invariant
//! cargo run --release --example gossip_sim -- bootstraps 1000 7  # founding schedules
//! cargo run --release --example gossip_sim -- found 100          # time to every node leased
//! ```
//!
//! `found N [SEED] [LOSS]` founds a new cluster by agreement: two nodes that name each
//! other (N = 2), or N nodes all given the same three seeds in their own orders, started
//! at random instants within 2 s. It reports the time from the last start to a
//! decided founder and to every node using a subnet.
//!
//! `converge N` starts N nodes 5 ms apart (200 ms gossip interval, 1 s probes, 1 s
//! lease beats), lets them settle, starts one more node, and reports when each running
//! node learned the new node's lease, plus bytes sent per node per second over a
//! quiet 20 s window (UDP payload + 28 bytes of IP/UDP header).

use std::time::{Duration, Instant};

use overlayd::control::sim::{check_bootstrap, random_schedule, run_schedule, Op, Sim, SimConfig};

fn converge(n: usize, seed: u64, loss: f64) {
    let wall = Instant::now();
    let mut cfg = SimConfig::fast(seed);
    cfg.loss = loss;
    cfg.size_hint = n as u32;
    cfg.full_check = false;
    cfg.cidr = "10.0.0.0/8".parse().expect("literal");
    cfg.lease = cfg
        .lease
        .clone()
        .with_reclaim_after(Duration::from_secs(3600));
    let mut sim = Sim::new(cfg, n + 1);
    for i in 0..n {
        sim.schedule(Duration::from_millis(5 * i as u64), Op::Start(i));
    }
    let settle = Duration::from_millis(5 * n as u64) + Duration::from_secs(40);
    sim.run_until(settle);
    let with = (0..n).filter(|i| sim.using(*i).is_some()).count();
    let b0 = sim.bytes_sent();
    let window = Duration::from_secs(20);
    sim.run_until(settle + window);
    let b1 = sim.bytes_sent();
    let per_node: Vec<f64> = (0..n)
        .map(|i| (b1[i] - b0[i]) as f64 / window.as_secs_f64())
        .collect();
    let mean = per_node.iter().sum::<f64>() / n as f64;
    let max = per_node.iter().cloned().fold(0.0, f64::max);

    let t0 = settle + window + Duration::from_secs(1);
    sim.watch_lease_of(n);
    sim.schedule(t0, Op::Start(n));
    sim.run_until(t0 + Duration::from_secs(30));
    let leased = sim.node(n).and_then(|x| x.lease().state().lease);
    let all = sim.learned_all();
    // The new node's own entry is when it published its lease: measure from there.
    let got = all[n].map_or(f64::INFINITY, |t| (t - t0).as_secs_f64());
    let mut learned: Vec<f64> = (0..n)
        .filter(|i| sim.running(*i))
        .map(|i| all[i].map_or(f64::INFINITY, |t| (t - t0).as_secs_f64()))
        .collect();
    learned.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        let i = ((learned.len() as f64 * p).ceil() as usize).clamp(1, learned.len()) - 1;
        learned[i] - got
    };
    let within2 = learned.iter().filter(|t| **t - got <= 2.0).count();
    println!(
        "nodes={n} seed={seed} loss={loss} leased={with}/{n} new_lease={leased:?} lease_after={got:.3}s"
    );
    println!(
        "  convergence after the new node's lease: p50={:.3}s p99={:.3}s p99.99={:.3}s max={:.3}s, {}/{} ({:.2}%) within 2s",
        pct(0.5),
        pct(0.99),
        pct(0.9999),
        pct(1.0),
        within2,
        learned.len(),
        100.0 * within2 as f64 / learned.len() as f64
    );
    println!(
        "  bandwidth per node: mean={:.0} B/s max={:.0} B/s",
        mean, max
    );
    let knows = sim.node(n).map_or(0, |x| {
        x.peers()
            .iter()
            .filter(|p| p.state != overlayd::control::MemberState::Dead)
            .count()
    });
    println!("  the new node knows the leases of {knows}/{n} peers 30 s after it started");
    println!(
        "  steps={} delivered={} wall={:.1}s",
        sim.steps,
        sim.delivered,
        wall.elapsed().as_secs_f64()
    );
}

fn schedules(seeds: u64, n: usize, secs: u64) {
    let wall = Instant::now();
    let mut steps = 0;
    for seed in 0..seeds {
        let ops = random_schedule(seed, n, secs);
        let sim = run_schedule(SimConfig::fast(seed), n, &ops, Duration::from_secs(30));
        steps += sim.steps;
    }
    println!(
        "{seeds} schedules of {n} nodes over {secs}s: invariant held at all {steps} steps ({:.1}s)",
        wall.elapsed().as_secs_f64()
    );
}

fn bootstraps(seeds: u64, n: usize) {
    let wall = Instant::now();
    let mut steps = 0;
    let mut failed = Vec::new();
    // A failure prints its first line (the verdict), not the whole trace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or("panic");
        eprintln!("{}", msg.lines().next().unwrap_or(""));
    }));
    for seed in 0..seeds {
        match std::panic::catch_unwind(|| check_bootstrap(seed, n).steps) {
            Ok(s) => steps += s,
            Err(_) => failed.push(seed),
        }
    }
    println!(
        "{seeds} founding schedules of {n} nodes: {} failed {failed:?}; the others held the invariant at all {steps} steps, with one founder where quorums intersect and every node leased after the faults ({:.1}s)",
        failed.len(),
        wall.elapsed().as_secs_f64()
    );
}

fn found(n: usize, seed: u64, loss: f64) {
    let wall = Instant::now();
    let mut cfg = SimConfig::fast(seed);
    cfg.loss = loss;
    cfg.size_hint = n as u32;
    cfg.full_check = n <= 20;
    let seeds: Vec<Vec<usize>> = if n == 2 {
        vec![vec![1], vec![0]]
    } else {
        let orders = [
            [0, 1, 2],
            [2, 0, 1],
            [1, 2, 0],
            [2, 1, 0],
            [0, 2, 1],
            [1, 0, 2],
        ];
        (0..n).map(|i| orders[i % orders.len()].to_vec()).collect()
    };
    cfg.seeds = Some(seeds);
    let mut sim = Sim::new(cfg, n);
    let mut last = Duration::ZERO;
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = Duration::from_millis(x % 2000);
        last = last.max(at);
        sim.schedule(at, Op::Start(i));
    }
    let mut founded = None;
    let mut leased = None;
    while sim.now() < last + Duration::from_secs(60) {
        let t = sim.now() + Duration::from_millis(10);
        sim.run_until(t);
        if founded.is_none() && !sim.founders().is_empty() && sim.now() >= last {
            founded = Some(sim.now());
        }
        if sim.now() >= last && sim.all_leased(0..n) {
            leased = Some(sim.now());
            break;
        }
    }
    let since = |t: Option<Duration>| t.map(|t| format!("{:.2}s", (t - last).as_secs_f64()));
    println!(
        "found {n} nodes (seed {seed}, loss {loss}): last start at {:.2}s; founder decided {} (founders: {}); every node leased {} after the last start ({:.1}s wall)",
        last.as_secs_f64(),
        since(founded).unwrap_or_else(|| "never".into()),
        sim.founders().len(),
        since(leased).unwrap_or_else(|| "NOT within 60s".into()),
        wall.elapsed().as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match args.first().map(String::as_str) {
        Some("converge") => converge(
            num(1, 1000) as usize,
            num(2, 1),
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0.0),
        ),
        Some("schedules") => schedules(num(1, 500), num(2, 9) as usize, num(3, 120)),
        Some("bootstraps") => bootstraps(num(1, 500), num(2, 7) as usize),
        Some("found") => found(
            num(1, 100) as usize,
            num(2, 1),
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0.0),
        ),
        _ => eprintln!(
            "usage: gossip_sim converge NODES [SEED] [LOSS] | schedules SEEDS [NODES] [SECS] | bootstraps SEEDS [NODES] | found NODES [SEED] [LOSS]"
        ),
    }
}
