//! (c) A plugin killed in the middle of ADD leaves a veth and a reservation behind; GC
//! with the valid attachments removes exactly those and keeps the live pod working.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn killed_add_then_gc_leaves_nothing() {
    let _load = load::shared();
    let node = host(6, 24);
    let mut conf = node.plugin_conf(json!({}));
    merge(&mut conf, json!({"cniVersion": "1.1.0", "name": "ovl"}));
    let bin = Path::new(PLUGIN);

    let live = Netns::bare("cgc");
    let r = node
        .exec_plugin(bin, &env("ADD", "gc-live", &live.path()), &conf)
        .ok();
    let live_ip = result_ip(&r);
    let live_veth = r["interfaces"][0]["name"].as_str().unwrap().to_owned();

    // Killed right after the veth exists (a deterministic point, via the test-only hook)...
    let victim = Netns::bare("cgc");
    let victim_path = victim.path();
    let mut e = env("ADD", "gc-victim", &victim_path);
    e.push(("OVERLAYD_CNI_TEST_STALL", "after-veth"));
    let mut child = node.spawn_plugin(&e, &conf);
    wait_for("the victim's veth", || node.ns.links("veth").len() == 2);
    child.kill().unwrap();
    child.wait().unwrap();
    // ...and several killed at arbitrary moments.
    let mut others = Vec::new();
    for (i, delay_ms) in [0u64, 1, 2, 3, 5, 8].into_iter().enumerate() {
        let pod = Netns::bare("cgc");
        let id = format!("gc-rand-{i}");
        let mut child = node.spawn_plugin(&env("ADD", &id, &pod.path()), &conf);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        others.push(pod);
    }
    // The interruption did leave garbage (otherwise this test would prove nothing).
    assert!(
        node.reserved("ovl").len() >= 2,
        "{:?}",
        node.reserved("ovl")
    );
    assert!(node.ns.links("veth").len() >= 2);

    let gc = |key: &str, valid: Value| {
        let mut c = conf.clone();
        merge(&mut c, json!({ key: valid }));
        node.exec_plugin(bin, &[("CNI_COMMAND", "GC"), ("CNI_PATH", REF_PLUGINS)], &c)
            .ok();
    };
    gc(
        "cni.dev/valid-attachments",
        json!([{"containerID": "gc-live", "ifname": "eth0"}]),
    );
    assert_eq!(node.reserved("ovl"), vec![live_ip.clone()]);
    assert_eq!(node.ns.links("veth"), vec![live_veth]);
    assert!(live.ping_once(&node.gateway), "GC broke the live pod");
    // A retried ADD of the victim works after GC.
    node.exec_plugin(bin, &env("ADD", "gc-victim", &victim.path()), &conf)
        .ok();

    // Older libcni sends `cni.dev/attachments`; an empty list releases everything.
    gc("cni.dev/attachments", json!([]));
    node.assert_nothing_left("ovl", "after GC of everything");
}
