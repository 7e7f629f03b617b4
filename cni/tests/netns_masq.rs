//! `ipMasq`: a pod reaches an underlay host that has no route back to the pod subnet,
//! only because its traffic leaves the node masqueraded; traffic inside the cluster CIDR
//! is not masqueraded; repeated ADDs keep exactly one rule.

mod common;

use std::path::Path;

use common::*;
use serde_json::{json, Value};

fn conf(node: &CniHost, masq: bool) -> Value {
    let mut c = node.plugin_conf(json!({"ipMasq": masq}));
    merge(&mut c, json!({"cniVersion": "1.0.0", "name": "ovl"}));
    c
}

#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn pod_reaches_underlay_host_only_with_masquerade() {
    let node = host(3, 24);
    // The underlay: 198.18.0.1 on the node, 198.18.0.2 on a host with no route to 10.244/16.
    let underlay = Netns::bare("cul");
    let (a, b) = (unique("ula"), unique("ulb"));
    let (a, b) = (&a[..a.len().min(15)], &b[..b.len().min(15)]);
    node.ns
        .exec(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
    node.ns
        .exec(&["ip", "link", "set", b, "netns", &underlay.name]);
    node.ns
        .exec(&["ip", "addr", "add", "198.18.0.1/24", "dev", a]);
    node.ns.exec(&["ip", "link", "set", a, "up"]);
    underlay.exec(&["ip", "addr", "add", "198.18.0.2/24", "dev", b]);
    underlay.exec(&["ip", "link", "set", b, "up"]);
    // Another "node" of the cluster holding 10.244.9.1, reached over 198.19.0.0/24. It
    // drops anything from the node's own address, so only unmasqueraded pod traffic passes.
    let remote = Netns::bare("crem");
    let (c, d) = (unique("rma"), unique("rmb"));
    let (c, d) = (&c[..c.len().min(15)], &d[..d.len().min(15)]);
    node.ns
        .exec(&["ip", "link", "add", c, "type", "veth", "peer", "name", d]);
    node.ns
        .exec(&["ip", "link", "set", d, "netns", &remote.name]);
    node.ns
        .exec(&["ip", "addr", "add", "198.19.0.1/24", "dev", c]);
    node.ns.exec(&["ip", "link", "set", c, "up"]);
    node.ns
        .exec(&["ip", "route", "add", "10.244.9.0/24", "via", "198.19.0.2"]);
    remote.exec(&["ip", "addr", "add", "198.19.0.2/24", "dev", d]);
    remote.exec(&["ip", "link", "set", d, "up"]);
    remote.exec(&["ip", "link", "set", "lo", "up"]);
    remote.exec(&["ip", "addr", "add", "10.244.9.1/32", "dev", "lo"]);
    remote.exec(&["ip", "route", "add", "10.244.3.0/24", "via", "198.19.0.1"]);
    remote.exec(&["nft", "add table ip f; add chain ip f in { type filter hook input priority 0; }; add rule ip f in ip saddr 198.19.0.1 drop"]);
    let bin = Path::new(PLUGIN);

    // Without ipMasq the reply has no way back.
    let pod0 = Netns::bare("cpod");
    let r0 = node
        .exec_plugin(
            bin,
            &env("ADD", "masq-0", &pod0.path()),
            &conf(&node, false),
        )
        .ok();
    assert!(
        !pod0.ping_once("198.18.0.2"),
        "underlay reachable without masquerade: the test proves nothing"
    );
    node.exec_plugin(
        bin,
        &env("DEL", "masq-0", &pod0.path()),
        &conf(&node, false),
    )
    .ok();
    let _ = r0;

    let pod1 = Netns::bare("cpod");
    let pod2 = Netns::bare("cpod");
    node.exec_plugin(bin, &env("ADD", "masq-1", &pod1.path()), &conf(&node, true))
        .ok();
    let r2 = node
        .exec_plugin(bin, &env("ADD", "masq-2", &pod2.path()), &conf(&node, true))
        .ok();
    assert!(
        pod1.ping_once("198.18.0.2"),
        "pod cannot reach the underlay host through masquerade"
    );
    let rules = node.ns.exec(&["nft", "list", "ruleset"]);
    assert_eq!(
        rules.matches("masquerade").count(),
        1,
        "one rule per node subnet:\n{rules}"
    );
    assert!(rules.contains("ip daddr != 10.244.0.0/16"), "{rules}");
    // The second ADD found the rule through nfnetlink and did not run nft again.
    let log = std::fs::read_to_string(node.dir.path().join("cni.log")).unwrap();
    assert_eq!(
        log.matches("ipMasq rule for 10.244.3.0/24: Installed")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("ipMasq rule for 10.244.3.0/24: Present")
            .count(),
        1,
        "{log}"
    );
    // A flushed chain is noticed and refilled by the next ADD.
    node.ns.exec(&[
        "nft",
        "flush",
        "chain",
        "ip",
        "overlayd-cni",
        "masq-10.244.3.0-24",
    ]);
    let pod3 = Netns::bare("cpod");
    node.exec_plugin(bin, &env("ADD", "masq-3", &pod3.path()), &conf(&node, true))
        .ok();
    let rules = node.ns.exec(&["nft", "list", "ruleset"]);
    assert_eq!(rules.matches("masquerade").count(), 1, "{rules}");
    // Inside the cluster CIDR the source is kept: pod2 sees pod1's own address.
    assert!(pod1.ping_once(&result_ip(&r2)));
    let conntrack_free_check = node.ns.exec(&[
        "nft",
        "list",
        "chain",
        "ip",
        "overlayd-cni",
        "masq-10.244.3.0-24",
    ]);
    assert!(conntrack_free_check.contains("ip saddr 10.244.3.0/24"));
}
