//! (d) Every malformed input gets the right error code from the real binary, with a
//! message naming what was wrong, no panic, and nothing left behind by a failed ADD.

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
fn malformed_inputs_get_spec_codes() {
    let node = host(4, 29); // 10.244.4.0/29: hosts .2 to .6
    let pod = Netns::bare("cpod");
    let bin = Path::new(PLUGIN);
    let good = conf(&node, json!({}));
    let ns = pod.path();
    let add = env("ADD", "err-1", &ns);
    let without = |k: &str| {
        add.iter()
            .filter(|(n, _)| *n != k)
            .cloned()
            .collect::<Vec<_>>()
    };
    let with = |k: &'static str, v: &'static str| {
        let mut e = without(k);
        e.push((k, v));
        e
    };
    let raw = |e: &[(&str, &str)], stdin: &[u8]| node.exec_plugin_raw(bin, e, stdin);
    let cases: Vec<(&str, PluginOutput, u64, &str)> = vec![
        (
            "no CNI_COMMAND",
            raw(&without("CNI_COMMAND"), good.to_string().as_bytes()),
            4,
            "CNI_COMMAND",
        ),
        (
            "bad CNI_COMMAND",
            raw(&with("CNI_COMMAND", "PUT"), good.to_string().as_bytes()),
            4,
            "PUT",
        ),
        (
            "no CNI_CONTAINERID",
            raw(&without("CNI_CONTAINERID"), good.to_string().as_bytes()),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "no CNI_NETNS",
            raw(&without("CNI_NETNS"), good.to_string().as_bytes()),
            4,
            "CNI_NETNS",
        ),
        (
            "missing netns",
            raw(
                &with("CNI_NETNS", "/var/run/netns/does-not-exist"),
                good.to_string().as_bytes(),
            ),
            4,
            "does-not-exist",
        ),
        (
            "bad ifname",
            raw(&with("CNI_IFNAME", "eth0/x"), good.to_string().as_bytes()),
            4,
            "CNI_IFNAME",
        ),
        (
            "bad CNI_ARGS",
            raw(
                &with("CNI_ARGS", "IP=10.244.4"),
                good.to_string().as_bytes(),
            ),
            4,
            "IP",
        ),
        ("empty stdin", raw(&add, b""), 6, "decode"),
        ("not JSON", raw(&add, b"cniVersion=1.0.0"), 6, "decode"),
        (
            "binary garbage",
            raw(&add, &[0xff, 0xfe, 0x00, 0x7b]),
            6,
            "decode",
        ),
        (
            "old version",
            raw(
                &add,
                br#"{"cniVersion":"0.2.0","name":"ovl","type":"overlayd-cni"}"#,
            ),
            1,
            "0.2.0",
        ),
        (
            "no version",
            raw(&add, br#"{"name":"ovl","type":"overlayd-cni"}"#),
            7,
            "cniVersion",
        ),
        (
            "mtu wrong type",
            node.exec_plugin(bin, &add, &conf(&node, json!({"mtu": "jumbo"}))),
            7,
            "mtu",
        ),
        (
            "mtu too small",
            node.exec_plugin(bin, &add, &conf(&node, json!({"mtu": 20}))),
            7,
            "mtu",
        ),
        (
            "ipam not object",
            node.exec_plugin(bin, &add, &conf(&node, json!({"ipam": 3}))),
            7,
            "ipam",
        ),
        (
            "bad requested ip",
            node.exec_plugin(
                bin,
                &add,
                &conf(&node, json!({"runtimeConfig": {"ips": ["banana"]}})),
            ),
            7,
            "banana",
        ),
        (
            "ip outside subnet",
            node.exec_plugin(
                bin,
                &add,
                &conf(&node, json!({"args": {"cni": {"ips": ["10.244.9.9"]}}})),
            ),
            102,
            "10.244.9.9",
        ),
        (
            "gateway requested",
            raw(
                &with("CNI_ARGS", "IP=10.244.4.1"),
                good.to_string().as_bytes(),
            ),
            102,
            "gateway",
        ),
        (
            "broadcast requested",
            raw(
                &with("CNI_ARGS", "IP=10.244.4.7"),
                good.to_string().as_bytes(),
            ),
            102,
            "broadcast",
        ),
        (
            "no node.json",
            node.exec_plugin(
                bin,
                &add,
                &conf(&node, json!({"runDir": "/nonexistent-overlayd"})),
            ),
            11,
            "/nonexistent-overlayd/node.json",
        ),
        (
            "missing delegate",
            node.exec_plugin(
                bin,
                &add,
                &conf(&node, json!({"ipam": {"type": "no-such-ipam"}})),
            ),
            105,
            "no-such-ipam",
        ),
        (
            "CHECK without prevResult",
            raw(&with("CNI_COMMAND", "CHECK"), good.to_string().as_bytes()),
            7,
            "prevResult",
        ),
        (
            "GC on 1.0.0",
            raw(&with("CNI_COMMAND", "GC"), good.to_string().as_bytes()),
            1,
            "GC",
        ),
    ];
    for (what, out, code, needle) in cases {
        assert_eq!(out.err_code(), code, "{what}: {}", out.stdout);
        let msg = out.json["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{what}: {msg:?} does not mention {needle:?}"
        );
        assert!(out.stderr.is_empty(), "{what}: stderr {:?}", out.stderr);
        assert_eq!(
            out.stdout.lines().count(),
            1,
            "{what}: stdout must be only the reply"
        );
    }
    // None of the failures left anything behind.
    node.assert_nothing_left("ovl", "after the failed ADDs");

    // Taken address, then a full subnet (5 hosts), named in the message.
    let mut pods = Vec::new();
    for i in 0..5 {
        let p = Netns::bare("cpod");
        node.exec_plugin(bin, &env("ADD", &format!("full-{i}"), &p.path()), &good)
            .ok();
        pods.push(p);
    }
    let taken = node.exec_plugin(
        bin,
        &add,
        &conf(&node, json!({"runtimeConfig": {"ips": ["10.244.4.2/29"]}})),
    );
    assert_eq!(taken.err_code(), 101, "{}", taken.stdout);
    assert!(
        taken.stdout.contains("10.244.4.2") && taken.stdout.contains("full-"),
        "{}",
        taken.stdout
    );
    let full = node.exec_plugin(bin, &add, &good);
    assert_eq!(full.err_code(), 103, "{}", full.stdout);
    assert!(full.stdout.contains("10.244.4.0/29"), "{}", full.stdout);

    // A failure after the veth exists (the interface name is taken in the pod) rolls back.
    for (i, p) in pods.iter().enumerate() {
        node.exec_plugin(bin, &env("DEL", &format!("full-{i}"), &p.path()), &good)
            .ok();
    }
    pod.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0",
    ]);
    let clash = node.exec_plugin(bin, &add, &good);
    assert_eq!(clash.err_code(), 100, "{}", clash.stdout);
    assert!(clash.stdout.contains("eth0"), "{}", clash.stdout);
    node.assert_nothing_left("ovl", "failed ADD kept");

    // STATUS: 50 without node.json, success with it.
    let mut status = conf(&node, json!({}));
    merge(&mut status, json!({"cniVersion": "1.1.0"}));
    let st = [("CNI_COMMAND", "STATUS")];
    node.exec_plugin(bin, &st, &status).ok();
    std::fs::remove_file(node.run_dir().join("node.json")).unwrap();
    let down = node.exec_plugin(bin, &st, &status);
    assert_eq!(down.err_code(), 50);
    assert!(down.stdout.contains("node.json"), "{}", down.stdout);
    let retry = node.exec_plugin(bin, &add, &good);
    assert_eq!(retry.err_code(), 11);
    assert!(retry.stdout.contains("overlayd"), "{}", retry.stdout);
}
