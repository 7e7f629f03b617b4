//! Address selection: the precedence of requested addresses for the built-in IPAM, and
//! delegation to the reference `host-local` and `static` IPAM plugins (ADD, CHECK, DEL,
//! and the delegated DEL that cleans up after a failed ADD).

mod common;

use std::path::Path;

use common::*;
use serde_json::{json, Value};

fn conf(node: &CniHost, extra: Value) -> Value {
    let mut c = node.plugin_conf(extra);
    merge(&mut c, json!({"cniVersion": "1.0.0", "name": "ovl"}));
    c
}

#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn requested_address_precedence() {
    let node = host(8, 24);
    let bin = Path::new(PLUGIN);
    let pod = Netns::bare("cipam");
    let p = pod.path();
    let mut e = env("ADD", "prec", &p);
    e.push(("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.8.30"));
    let cases = [
        (
            json!({"runtimeConfig": {"ips": ["10.244.8.10/24"]}, "args": {"cni": {"ips": ["10.244.8.20"]}}}),
            "10.244.8.10",
        ),
        (
            json!({"args": {"cni": {"ips": ["10.244.8.20"]}}}),
            "10.244.8.20",
        ),
        (json!({}), "10.244.8.30"),
    ];
    for (extra, want) in cases {
        let c = conf(&node, extra);
        let r = node.exec_plugin(bin, &e, &c).ok();
        assert_eq!(result_ip(&r), want);
        assert!(pod.ping_once(&node.gateway));
        node.exec_plugin(bin, &env("DEL", "prec", &p), &c).ok();
        assert!(node.reserved("ovl").is_empty());
    }
}

#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn delegates_to_host_local_and_static() {
    let node = host(7, 24);
    let bin = Path::new(PLUGIN);
    let hl_dir = node.dir.path().join("host-local");
    let hl = conf(
        &node,
        json!({"ipam": {"type": "host-local", "dataDir": hl_dir,
        "ranges": [[{"subnet": "10.244.7.0/24", "rangeStart": "10.244.7.100", "rangeEnd": "10.244.7.110", "gateway": "10.244.7.1"}]]}}),
    );
    let hl_files = || -> Vec<String> {
        std::fs::read_dir(hl_dir.join("ovl"))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default()
    };

    let pod = Netns::bare("cipam");
    let p = pod.path();
    let r = node.exec_plugin(bin, &env("ADD", "hl-1", &p), &hl).ok();
    let ip = result_ip(&r);
    assert!(ip.starts_with("10.244.7.1") && ip != "10.244.7.1", "{ip}");
    assert!(pod.ping_once(&node.gateway));
    assert_eq!(hl_files(), vec![ip.clone()]);
    assert!(
        node.reserved("ovl").is_empty(),
        "built-in store used despite ipam.type"
    );
    let mut check = hl.clone();
    merge(&mut check, json!({"prevResult": r}));
    node.exec_plugin(bin, &env("CHECK", "hl-1", &p), &check)
        .ok();
    node.exec_plugin(bin, &env("DEL", "hl-1", &p), &hl).ok();
    assert!(hl_files().is_empty(), "delegated DEL did not release {ip}");

    // A failed ADD (eth0 already exists in the pod) releases the delegated address too.
    pod.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0",
    ]);
    let fail = node.exec_plugin(bin, &env("ADD", "hl-2", &p), &hl);
    assert_eq!(fail.err_code(), 100, "{}", fail.stdout);
    assert!(hl_files().is_empty(), "failed ADD kept {:?}", hl_files());
    assert!(node.ns.links("veth").is_empty());

    // `static`, and a delegate error passed through with its own code and message.
    let pod2 = Netns::bare("cipam");
    let st = conf(
        &node,
        json!({"ipam": {"type": "static", "addresses": [{"address": "10.244.7.50/24", "gateway": "10.244.7.1"}]}}),
    );
    let r = node
        .exec_plugin(bin, &env("ADD", "st-1", &pod2.path()), &st)
        .ok();
    assert_eq!(result_ip(&r), "10.244.7.50");
    assert!(pod2.ping_once(&node.gateway));
    node.exec_plugin(bin, &env("DEL", "st-1", &pod2.path()), &st)
        .ok();
    let bad = conf(
        &node,
        json!({"ipam": {"type": "static", "addresses": [{"address": "nonsense"}]}}),
    );
    let out = node.exec_plugin(bin, &env("ADD", "st-2", &pod2.path()), &bad);
    assert_ne!(out.code, 0);
    assert!(
        out.json["msg"].as_str().unwrap().contains("static"),
        "{}",
        out.stdout
    );
    assert!(node.ns.links("veth").is_empty());
}
