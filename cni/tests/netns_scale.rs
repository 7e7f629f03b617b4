//! (b) 100 concurrent ADDs in separate namespaces get 100 distinct addresses; after 100
//! concurrent DELs no address, veth or allocation file is left.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::*;
use serde_json::json;

const PODS: usize = 100;

#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn hundred_concurrent_adds_then_dels() {
    // Heavy: runs alone (see overlayd_test_support::load).
    let _load = load::heavy();
    let node = host(5, 24);
    let mut conf = node.plugin_conf(json!({}));
    merge(&mut conf, json!({"cniVersion": "1.1.0", "name": "ovl"}));
    let pods: Vec<Netns> = (0..PODS).map(|_| Netns::bare("cscale")).collect();

    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || {
                    let id = format!("scale-{i}");
                    node.exec_plugin(Path::new(PLUGIN), &env("ADD", &id, &pod.path()), conf)
                        .ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: HashSet<String> = results.iter().map(result_ip).collect();
    assert_eq!(ips.len(), PODS, "duplicate addresses handed out");
    assert!(
        !ips.contains(&node.gateway)
            && !ips.contains("10.244.5.0")
            && !ips.contains("10.244.5.255")
    );
    assert_eq!(node.reserved("ovl").len(), PODS);
    assert_eq!(node.ns.links("veth").len(), PODS);
    // The addresses work: first and last pod reach each other.
    assert!(pods[0].ping_once(&result_ip(&results[PODS - 1])));

    std::thread::scope(|s| {
        for (i, pod) in pods.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            s.spawn(move || {
                let id = format!("scale-{i}");
                node.exec_plugin(Path::new(PLUGIN), &env("DEL", &id, &pod.path()), conf)
                    .ok()
            });
        }
    });
    node.assert_nothing_left("ovl", "left after 100 DELs");
    // Only the store's lock and cursor remain; no allocation file.
    let files: Vec<String> = std::fs::read_dir(node.data_dir().join("ovl"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "lock" && n != "last_reserved")
        .collect();
    assert!(files.is_empty(), "store files left: {files:?}");
    for pod in &pods {
        assert!(
            !pod.try_exec(&["ip", "link", "show", "eth0"]),
            "eth0 left in {}",
            pod.name
        );
    }
}
