//! (d) The plugin SIGKILLed at random points during 200 ADD/DEL cycles: every DEL that
//! succeeds afterwards leaves nothing of its attachment, DEL for everything and GC leave
//! only the valid attachments, the store holds no temporary or ownerless file, and a new
//! ADD still gets an address. The RNG seed is printed; `OVERLAYD_CNI_FAULT_SEED`
//! replays a run and `OVERLAYD_CNI_FAULT_CYCLES` changes the number of cycles.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use overlayd_cni::plugin::host_veth_name;
use overlayd_test_support::rand::Rng as _;
use overlayd_test_support::rng::SeededRng;
use serde_json::{json, Value};

/// Every file in the store of `net`: (name, content).
fn store_files(node: &CniHost, net: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(node.data_dir().join(net))
        .map(|rd| {
            rd.filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let content = std::fs::read_to_string(e.path()).unwrap_or_default();
                Some((name, content))
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// What is left of attachment `id` on `node` and in `pod`, described; empty if nothing.
fn leftovers(node: &CniHost, pod: &Netns, id: &str) -> Vec<String> {
    let mut left = Vec::new();
    let veth = host_veth_name(id, "eth0");
    if node.ns.links("veth").contains(&veth) {
        left.push(format!("host veth {veth}"));
    }
    if pod.try_exec(&["ip", "link", "show", "eth0"]) {
        left.push(format!("eth0 in {}", pod.name));
    }
    for (name, content) in store_files(node, "ovlf") {
        if name.parse::<std::net::IpAddr>().is_ok() && content.lines().next() == Some(id) {
            left.push(format!("reservation {name}"));
        }
    }
    left
}

#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn killed_at_random_points_leaks_nothing() {
    let _load = load::shared();
    let cycles: usize = std::env::var("OVERLAYD_CNI_FAULT_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut rng = SeededRng::from_env("OVERLAYD_CNI_FAULT_SEED");
    let seed = rng.seed();

    let node = host(11, 24);
    let mut conf = node.plugin_conf(json!({}));
    merge(&mut conf, json!({"cniVersion": "1.1.0", "name": "ovlf"}));
    let bin = Path::new(PLUGIN);

    // Two pods stay attached throughout: GC's valid attachments. Their ADDs also time
    // an uninterrupted ADD, which sets the range of the kill delays.
    let mut live = Vec::new();
    let mut add_time = Duration::ZERO;
    for k in 0..2 {
        let pod = Netns::bare("cfl");
        let id = format!("live-{k}");
        let t = Instant::now();
        let r = node
            .exec_plugin(bin, &env("ADD", &id, &pod.path()), &conf)
            .ok();
        add_time = add_time.max(t.elapsed());
        live.push((id, pod, result_ip(&r)));
    }
    let max_delay = (add_time.as_millis() as u64 * 3 / 2).max(5);
    println!("an ADD takes {add_time:.0?}; kills come 0-{max_delay} ms after the exec");

    let pods: Vec<Netns> = (0..4).map(|_| Netns::bare("cfk")).collect();
    let (mut killed_adds, mut killed_dels, mut garbage, mut completed_adds) = (0, 0, 0, 0);
    let mut run = |cmd: &str, id: &str, pod: &Netns, kill: bool| -> Option<PluginOutput> {
        if kill {
            let mut child = node.spawn_plugin(&env(cmd, id, &pod.path()), &conf);
            std::thread::sleep(Duration::from_millis(rng.random_range(0..=max_delay)));
            let _ = child.kill();
            child.wait().unwrap();
            None
        } else {
            Some(node.exec_plugin(bin, &env(cmd, id, &pod.path()), &conf))
        }
    };
    let start = Instant::now();
    for i in 0..cycles {
        let pod = &pods[i % pods.len()];
        let id = format!("fk-{i}");
        let kill_add = i % 2 == 0;
        let kill_del = i % 3 == 0;
        match run("ADD", &id, pod, kill_add) {
            Some(out) => {
                assert_eq!(out.code, 0, "ADD {id}: {} {}", out.stdout, out.stderr);
                completed_adds += 1;
            }
            None => {
                killed_adds += 1;
                if !leftovers(&node, pod, &id).is_empty() {
                    garbage += 1;
                }
            }
        }
        if kill_del {
            run("DEL", &id, pod, true);
            killed_dels += 1;
        }
        // A runtime retries DEL until it succeeds; once it has, nothing of the
        // attachment is left.
        let out = run("DEL", &id, pod, false).unwrap();
        assert_eq!(out.code, 0, "DEL {id}: {} {}", out.stdout, out.stderr);
        let left = leftovers(&node, pod, &id);
        assert!(
            left.is_empty(),
            "cycle {i} (seed {seed}): after DEL {id}: {left:?}"
        );
    }
    println!(
        "{cycles} cycles in {:.1?}: {killed_adds} ADDs killed ({garbage} left something for DEL to \
         clean), {completed_adds} completed, {killed_dels} DELs killed",
        start.elapsed()
    );
    // The kills hit ADD in the middle often enough for this test to mean something.
    assert!(
        garbage >= killed_adds / 10,
        "only {garbage} of {killed_adds} killed ADDs left anything"
    );

    // DEL for everything again (idempotent), then GC with the live pods as valid.
    for i in 0..cycles {
        let id = format!("fk-{i}");
        let pod = &pods[i % pods.len()];
        node.exec_plugin(bin, &env("DEL", &id, &pod.path()), &conf)
            .ok();
    }
    let gc = |valid: Value| {
        let mut c = conf.clone();
        merge(&mut c, json!({ "cni.dev/valid-attachments": valid }));
        node.exec_plugin(bin, &[("CNI_COMMAND", "GC"), ("CNI_PATH", REF_PLUGINS)], &c)
            .ok();
    };
    gc(json!(live
        .iter()
        .map(|(id, _, _)| json!({"containerID": id, "ifname": "eth0"}))
        .collect::<Vec<_>>()));
    let mut want_ips: Vec<String> = live.iter().map(|(_, _, ip)| ip.clone()).collect();
    want_ips.sort();
    let mut ips = node.reserved("ovlf");
    ips.sort();
    assert_eq!(ips, want_ips, "leaked addresses");
    let mut veths = node.ns.links("veth");
    veths.sort();
    let mut want_veths: Vec<String> = live
        .iter()
        .map(|(id, _, _)| host_veth_name(id, "eth0"))
        .collect();
    want_veths.sort();
    assert_eq!(veths, want_veths, "leaked veths");
    // The store holds the lock, the cursor and the live reservations, each with its
    // owner: no temporary file, no reservation without an owner.
    let names: Vec<String> = store_files(&node, "ovlf")
        .into_iter()
        .map(|(name, content)| {
            if name.parse::<std::net::IpAddr>().is_ok() {
                let owner = overlayd_node_info::pods::Owner::parse(content.as_bytes())
                    .unwrap_or_else(|e| panic!("{name}: {content:?}: {e}"));
                assert!(
                    live.iter().any(|(id, _, _)| owner.container_id == *id
                        && owner.ifname == "eth0"
                        && owner.host_veth == Some(host_veth_name(id, "eth0"))),
                    "{name}: {content:?}"
                );
            }
            name
        })
        .collect();
    let mut want_names = vec!["last_reserved".to_string(), "lock".to_string()];
    want_names.extend(want_ips.iter().cloned());
    want_names.sort();
    assert_eq!(names, want_names);
    for pod in &pods {
        assert!(!pod.try_exec(&["ip", "link", "show", "eth0"]));
    }
    for (_, pod, _) in &live {
        assert!(pod.ping_once(&node.gateway), "a live pod lost its network");
    }

    // A new ADD gets an address and works.
    let fresh = Netns::bare("cfl");
    let r = node
        .exec_plugin(bin, &env("ADD", "fresh", &fresh.path()), &conf)
        .ok();
    let ip = result_ip(&r);
    assert!(!want_ips.contains(&ip));
    assert!(fresh.ping_once(&node.gateway));
    // GC with nothing valid removes everything.
    gc(json!([]));
    assert!(node.reserved("ovlf").is_empty());
    assert!(node.ns.links("veth").is_empty());
    let names: Vec<String> = store_files(&node, "ovlf")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["last_reserved", "lock"]);
}

#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn killed_inside_reserve_leaves_no_ownerless_address() {
    let _load = load::shared();
    let node = host(12, 24);
    let mut conf = node.plugin_conf(json!({}));
    merge(&mut conf, json!({"cniVersion": "1.1.0", "name": "ovlf"}));
    let bin = Path::new(PLUGIN);
    let pod = Netns::bare("cfr");
    // Stopped with the reservation written to its temporary file, then killed.
    let pod_path = pod.path();
    let mut e = env("ADD", "victim", &pod_path);
    e.push(("OVERLAYD_CNI_TEST_STALL", "ipam-before-link"));
    let mut child = node.spawn_plugin(&e, &conf);
    let start = Instant::now();
    while !store_files(&node, "ovlf")
        .iter()
        .any(|(n, _)| n.ends_with(".tmp"))
    {
        assert!(start.elapsed() < Duration::from_secs(10), "never stalled");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // No reservation exists yet, so none can be left without an owner.
    assert!(
        node.reserved("ovlf").is_empty(),
        "{:?}",
        store_files(&node, "ovlf")
    );
    // DEL of the victim succeeds, and the next plugin to take the lock removes the
    // temporary file.
    node.exec_plugin(bin, &env("DEL", "victim", &pod.path()), &conf)
        .ok();
    let names: Vec<String> = store_files(&node, "ovlf")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["lock"]);
    // The retried ADD works.
    let r = node
        .exec_plugin(bin, &env("ADD", "victim", &pod.path()), &conf)
        .ok();
    assert_eq!(node.reserved("ovlf"), vec![result_ip(&r)]);
    node.exec_plugin(bin, &env("DEL", "victim", &pod.path()), &conf)
        .ok();
    assert!(node.reserved("ovlf").is_empty());
}
