//! The plugin as containerd's CRI drives it (issue 25): `CNI_ARGS` with the pod's
//! identity in a changing key order, stored with each address; the reference
//! `loopback` ADD run at the same time as ours; and the two DELs of a pod, one at
//! StopPodSandbox (netns and cached `prevResult`) and one at RemovePodSandbox (empty
//! `CNI_NETNS`, no `prevResult`).

mod common;

use std::path::Path;

use common::*;
use overlayd_node_info::pods::{self, PodIdentity};
use serde_json::{json, Value};

/// `CNI_ARGS` of pod `name` as containerd 1.6 passes them; `flip` picks the other key order.
fn cri_args(id: &str, name: &str, flip: bool) -> String {
    let uid = format!("uid-{name}");
    if flip {
        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID={uid}")
    } else {
        format!("K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID={uid};IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
    }
}

/// Everything a DEL could change on the host: store files with their content, links.
fn snapshot(node: &CniHost) -> (Vec<(String, Vec<u8>)>, String) {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(node.data_dir().join("ovl"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    (files, node.ns.exec(&["ip", "-br", "link"]))
}

#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn cri_identity_loopback_and_both_dels() {
    let _load = load::shared();
    let node = host(15, 24);
    let bin = Path::new(PLUGIN);
    let mut conf = node.plugin_conf(json!({}));
    merge(&mut conf, json!({"cniVersion": "1.0.0", "name": "ovl"}));
    let lo_conf = json!({"cniVersion": "1.0.0", "name": "ovl-lo", "type": "loopback"});
    let lo_bin = node.plugins.bin("loopback");

    // Three pods; ours and loopback's ADDs at the same time, as containerd runs them.
    let pods: Vec<Netns> = (0..3).map(|_| Netns::bare("ccri")).collect();
    let mut results: Vec<Value> = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let id = format!("cri-sandbox-{i}");
        let args = cri_args(&id, &format!("web-{i}"), i % 2 == 1);
        let netns = pod.path();
        let mut e = env("ADD", &id, &netns);
        e.push(("CNI_ARGS", &args));
        let (ours, lo) = std::thread::scope(|s| {
            let ours = s.spawn(|| node.exec_plugin(bin, &e, &conf));
            let lo = s.spawn(|| node.exec_plugin(&lo_bin, &e, &lo_conf));
            (ours.join().unwrap(), lo.join().unwrap())
        });
        assert_eq!(lo.code, 0, "loopback ADD: {} {}", lo.stdout, lo.stderr);
        let r = ours.ok();
        assert!(pod.ping_once(&node.gateway), "pod {i}");
        assert!(pod.ping_once("127.0.0.1"), "pod {i}: lo is not up");
        results.push(r);
    }

    // Each address has its pod's identity, veth and creation time in the store, for the
    // daemon's `overlayd pods` and reclaim.
    let listing = pods::list(&node.data_dir(), "ovl").unwrap();
    assert!(listing.malformed.is_empty(), "{:?}", listing.malformed);
    assert_eq!(listing.records.len(), 3);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (i, r) in results.iter().enumerate() {
        let ip: std::net::IpAddr = result_ip(r).parse().unwrap();
        let rec = listing.records.iter().find(|p| p.ip == ip).unwrap();
        let id = format!("cri-sandbox-{i}");
        assert_eq!(rec.owner.container_id, id);
        assert_eq!(rec.owner.ifname, "eth0");
        assert_eq!(
            rec.owner.host_veth.as_deref(),
            r["interfaces"][0]["name"].as_str()
        );
        let created = rec.owner.created.unwrap();
        assert!(created <= now && now - created < 300, "created {created}");
        assert_eq!(
            rec.owner.pod,
            PodIdentity {
                namespace: Some("default".into()),
                name: Some(format!("web-{i}")),
                uid: Some(format!("uid-web-{i}")),
                infra_container_id: Some(id),
            }
        );
    }

    // An identity the store cannot hold: refused with code 4, nothing left behind.
    let bad_pod = Netns::bare("ccri");
    let bad_netns = bad_pod.path();
    let mut e = env("ADD", "cri-bad", &bad_netns);
    e.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web\n1"));
    let out = node.exec_plugin(bin, &e, &conf);
    assert_eq!(out.err_code(), 4, "{}", out.stdout);
    assert!(out.stdout.contains("K8S_POD_NAME"), "{}", out.stdout);
    assert_eq!(node.reserved("ovl").len(), 3);
    assert_eq!(node.ns.links("veth").len(), 3);

    // Pod 0, first DEL (StopPodSandbox): netns and prevResult. Its address, record and
    // veth go; the others stay.
    let id0 = "cri-sandbox-0";
    let ip0 = result_ip(&results[0]);
    let veth0 = results[0]["interfaces"][0]["name"].as_str().unwrap();
    let args0 = cri_args(id0, "web-0", false);
    let mut stop_conf = conf.clone();
    merge(&mut stop_conf, json!({"prevResult": results[0]}));
    let netns0 = pods[0].path();
    let mut e = env("DEL", id0, &netns0);
    e.push(("CNI_ARGS", &args0));
    node.exec_plugin(bin, &e, &stop_conf).ok();
    let mut e = env("DEL", id0, &netns0);
    e.push(("CNI_ARGS", &args0));
    node.exec_plugin(&lo_bin, &e, &lo_conf).ok();
    let left = pods::list(&node.data_dir(), "ovl").unwrap();
    assert_eq!(left.records.len(), 2);
    assert!(left.records.iter().all(|r| r.owner.container_id != id0));
    let veths = node.ns.links("veth");
    assert!(!veths.contains(&veth0.to_owned()), "{veths:?}");
    for r in &results[1..] {
        let veth = r["interfaces"][0]["name"].as_str().unwrap().to_owned();
        assert!(veths.contains(&veth), "{veth} went with pod 0: {veths:?}");
    }

    // Its address goes to a new pod before the second DEL arrives.
    let new_pod = Netns::bare("ccri");
    let new_netns = new_pod.path();
    let mut taker = node.plugin_conf(json!({"runtimeConfig": {"ips": [format!("{ip0}/24")]}}));
    merge(&mut taker, json!({"cniVersion": "1.0.0", "name": "ovl"}));
    let args_new = cri_args("cri-sandbox-new", "web-new", true);
    let mut e = env("ADD", "cri-sandbox-new", &new_netns);
    e.push(("CNI_ARGS", &args_new));
    let r = node.exec_plugin(bin, &e, &taker).ok();
    assert_eq!(result_ip(&r), ip0);

    // Second DEL (RemovePodSandbox): empty CNI_NETNS, no prevResult. It succeeds, for
    // ours and for loopback, and changes nothing: the new holder of the address keeps
    // it, its record and its veth. A third one, as a retrying runtime sends, too.
    let before = snapshot(&node);
    for _ in 0..2 {
        let mut e = env("DEL", id0, "");
        e.push(("CNI_ARGS", &args0));
        node.exec_plugin(bin, &e, &conf).ok();
        node.exec_plugin(&lo_bin, &e, &lo_conf).ok();
        assert_eq!(snapshot(&node), before, "the second DEL changed something");
    }
    assert!(new_pod.ping_once(&node.gateway));
    let rec = pods::list(&node.data_dir(), "ovl").unwrap();
    let holder = rec
        .records
        .iter()
        .find(|r| r.ip.to_string() == ip0)
        .unwrap();
    assert_eq!(holder.owner.pod.name.as_deref(), Some("web-new"));

    // The rest, both DELs each: nothing is left.
    let rest = [
        ("cri-sandbox-1", &pods[1], &results[1]),
        ("cri-sandbox-2", &pods[2], &results[2]),
        ("cri-sandbox-new", &new_pod, &r),
    ];
    for (id, pod, result) in rest {
        let mut stop_conf = conf.clone();
        merge(&mut stop_conf, json!({"prevResult": result}));
        node.exec_plugin(bin, &env("DEL", id, &pod.path()), &stop_conf)
            .ok();
        node.exec_plugin(bin, &env("DEL", id, ""), &conf).ok();
    }
    node.assert_nothing_left("ovl", "after both DELs of every pod");
    // The bad pod's DEL (never added) is fine too, with or without its netns.
    node.exec_plugin(bin, &env("DEL", "cri-bad", &bad_netns), &conf)
        .ok();
    node.exec_plugin(bin, &env("DEL", "cri-bad", ""), &conf)
        .ok();
    node.assert_nothing_left("ovl", "after the DELs of a failed ADD");
}

/// A DEL on a node where the plugin never ran (no store yet) succeeds and creates
/// nothing: containerd may remove a sandbox whose ADD never reached us.
#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn del_before_any_add_creates_nothing() {
    let node = host(15, 24);
    let mut conf = node.plugin_conf(json!({}));
    merge(&mut conf, json!({"cniVersion": "1.0.0", "name": "ovl"}));
    let mut e = env("DEL", "never-added", "");
    let args = cri_args("never-added", "ghost", false);
    e.push(("CNI_ARGS", &args));
    node.exec_plugin(Path::new(PLUGIN), &e, &conf).ok();
    assert!(!node.data_dir().join("ovl").exists());
    assert!(node.ns.links("veth").is_empty());
}
