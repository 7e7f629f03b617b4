//! Replays the committed corpus of the CNI fuzz targets (`fuzz/corpus/{netconf,
//! cni_env,cni_args,pod_record,prev_result}`) through the cargo-fuzz harnesses, compiled in from
//! `fuzz/src/cni.rs` with `#[path]`, so `cargo test` catches a regression on those
//! bytes without cargo-fuzz or nightly.
//!
//! `cargo test -p overlayd-cni --test fuzz_corpus -- --ignored write_seeds` rewrites
//! the generated `seed-*` files: the plugin configs of the conflists in `config/` as a
//! runtime passes them on stdin, results emitted by `CniResult::to_json`, the
//! environments of the spec's commands, the `CNI_ARGS` containerd passes, and
//! reservation files of the IPAM store in the old and the current format.

#[path = "../../fuzz/src/cni.rs"]
mod cni;
#[path = "../../fuzz/src/replay.rs"]
mod replay;

use std::path::{Path, PathBuf};

use overlayd_cni::config::Version;
use overlayd_cni::result::{CniResult, Interface, IpConfig, Route};
use overlayd_node_info::pods::{Owner, PodIdentity};
use serde_json::{json, Value};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cni/ is inside the repository")
}

/// Where the committed corpora are.
fn corpus_root() -> PathBuf {
    repo().join("fuzz/corpus")
}

fn replay(target: &str, harness: fn(&[u8])) {
    replay::replay(&corpus_root(), target, harness);
}

#[test]
fn netconf_corpus() {
    replay("netconf", cni::netconf);
}

#[test]
fn cni_env_corpus() {
    replay("cni_env", cni::cni_env);
}

#[test]
fn cni_args_corpus() {
    replay("cni_args", cni::cni_args);
}

#[test]
fn pod_record_corpus() {
    replay("pod_record", cni::pod_record);
}

#[test]
fn prev_result_corpus() {
    replay("prev_result", cni::prev_result);
}

// --- Seed generation -------------------------------------------------------------

/// Writes `fuzz/corpus/<target>/seed-<name>`.
fn write(target: &str, name: &str, data: &[u8]) {
    replay::write_seed(&corpus_root(), target, name, data);
}

/// The stdin a runtime gives the first plugin of a conflist: the plugin object with
/// the list's `cniVersion` and `name`, and the capability args it asked for.
fn plugin_stdin(conflist: &Value, runtime_config: Value) -> Value {
    let mut conf = conflist["plugins"][0].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    if let Some(obj) = conf.as_object_mut() {
        obj.remove("capabilities");
    }
    if !runtime_config.is_null() {
        conf["runtimeConfig"] = runtime_config;
    }
    conf
}

fn sample_result() -> CniResult {
    CniResult {
        interfaces: vec![
            Interface {
                name: "ovlv0123456789a".into(),
                mac: "0a:58:0a:f4:01:01".into(),
                sandbox: None,
                mtu: Some(1450),
            },
            Interface {
                name: "eth0".into(),
                mac: "0a:58:0a:f4:01:05".into(),
                sandbox: Some("/var/run/netns/cni-1234".into()),
                mtu: Some(1450),
            },
        ],
        ips: vec![IpConfig {
            address: "10.244.1.5/24".parse().unwrap(),
            gateway: Some("10.244.1.1".parse().unwrap()),
            interface: Some(1),
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gw: None,
        }],
        dns: Default::default(),
    }
}

/// A sandbox container ID as containerd makes them (64 hex digits).
const CONTAINERD_ID: &str = "7d0e5f4a3b1c2d9e8f601a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";
/// A pod UID.
const POD_UID: &str = "6f1d0c2e-8a43-4c1e-9f53-2a8d4b7c1e90";
/// `CNI_ARGS` as containerd 1.6 passed it on one ADD (the order varies between calls).
const CONTAINERD_ARGS: &str =
    "K8S_POD_INFRA_CONTAINER_ID=7d0e5f4a3b1c2d9e8f601a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d;\
     K8S_POD_UID=6f1d0c2e-8a43-4c1e-9f53-2a8d4b7c1e90;IgnoreUnknown=1;K8S_POD_NAMESPACE=default;\
     K8S_POD_NAME=web-0";

#[test]
#[ignore = "rewrites the committed seed corpus; run by hand after a format change"]
fn write_seeds() {
    for (file, name) in [
        ("overlayd-k8s.conflist", "k8s"),
        ("overlayd-podman.conflist", "podman"),
    ] {
        let text = std::fs::read(repo().join("config").join(file)).unwrap();
        let list: Value = serde_json::from_slice(&text).unwrap();
        // The conflist itself is not a plugin config, but real bytes all the same.
        write("netconf", &format!("conflist-{name}"), &text);
        let stdin = plugin_stdin(&list, json!({"ips": ["10.244.1.9/24"]}));
        write(
            "netconf",
            &format!("{name}-runtime-ips"),
            stdin.to_string().as_bytes(),
        );
    }
    let r = sample_result();
    let v040 = r.to_json(Version::V0_4_0);
    let v110 = r.to_json(Version::V1_1_0);
    write("prev_result", "result-0.4.0", v040.to_string().as_bytes());
    write("prev_result", "result-1.1.0", v110.to_string().as_bytes());
    // host-local's answer to a delegated ADD: IPv4 and IPv6, DNS, a route with gw.
    let host_local = json!({
        "cniVersion": "1.0.0",
        "ips": [
            {"address": "10.244.1.20/24", "gateway": "10.244.1.1"},
            {"address": "fd00:0:0:1::20/64", "gateway": "fd00:0:0:1::1"}
        ],
        "routes": [{"dst": "10.96.0.0/12", "gw": "10.244.1.1"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["svc"]}
    });
    write(
        "prev_result",
        "host-local",
        host_local.to_string().as_bytes(),
    );
    let check = json!({
        "cniVersion": "1.0.0",
        "name": "overlayd",
        "type": "overlayd-cni",
        "args": {"cni": {"ips": ["10.244.1.5"]}},
        "prevResult": v110,
    });
    write(
        "netconf",
        "check-args-prevresult",
        check.to_string().as_bytes(),
    );
    // cni_env: one value per line, in the order of `cni::ENV_VARS`.
    let env = |vals: &[&str]| vals.join("\n").into_bytes();
    write(
        "cni_env",
        "add",
        &env(&[
            "ADD",
            "3f1c9a7e6b2d",
            "eth0",
            "/var/run/netns/cni-1234",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IP=10.244.1.9",
            "/opt/cni/bin:/usr/lib/cni",
        ]),
    );
    write(
        "cni_env",
        "del-no-netns",
        &env(&["DEL", "3f1c9a7e6b2d", "eth0", "", "", "/opt/cni/bin"]),
    );
    write("cni_env", "version", &env(&["VERSION"]));
    write(
        "cni_env",
        "add-containerd",
        &env(&[
            "ADD",
            CONTAINERD_ID,
            "eth0",
            "/var/run/netns/cni-7d0e5f4a-3b1c-2d9e-8f60-1a2b3c4d5e6f",
            CONTAINERD_ARGS,
            "/opt/cni/bin",
        ]),
    );
    // cni_args: CNI_ARGS as containerd 1.6 passes it (two of its key orders), and the
    // edge cases of the parsing rules (env.rs): duplicates, empty values and segments,
    // a value with '=', a pair without '=', control characters, a too-long identity.
    write("cni_args", "containerd", CONTAINERD_ARGS.as_bytes());
    write(
        "cni_args",
        "containerd-reordered",
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID={CONTAINERD_ID};K8S_POD_UID={POD_UID}"
        )
        .as_bytes(),
    );
    write(
        "cni_args",
        "duplicate-empty",
        b";;K8S_POD_NAME=first;K8S_POD_NAMESPACE=;IP=10.244.1.9;K8S_POD_NAME=second;IP=;X=a=b;",
    );
    write("cni_args", "no-equals", b"IgnoreUnknown=1;K8S_POD_NAME");
    write(
        "cni_args",
        "newline-in-name",
        b"IgnoreUnknown=1;K8S_POD_NAME=web\n0;OTHER=\x00\t",
    );
    write(
        "cni_args",
        "long-name",
        format!("K8S_POD_NAME={}", "n".repeat(1100)).as_bytes(),
    );
    write("cni_args", "not-utf8", b"K8S_POD_NAME=\xff\xfe");
    // pod_record: a reservation file an older plugin wrote, and the current format.
    write("pod_record", "old-format", b"3f1c9a7e6b2d\neth0\n");
    let owner = Owner {
        container_id: CONTAINERD_ID.into(),
        ifname: "eth0".into(),
        host_veth: Some(overlayd_cni::plugin::host_veth_name(CONTAINERD_ID, "eth0")),
        created: Some(1_718_000_000),
        pod: PodIdentity {
            namespace: Some("default".into()),
            name: Some("web-0".into()),
            uid: Some(POD_UID.into()),
            infra_container_id: Some(CONTAINERD_ID.into()),
        },
        netns: Some("/var/run/netns/cni-5f3e9a1c-0d2b-4c6e-8f7a-1b2c3d4e5f60".into()),
    };
    write("pod_record", "k8s", owner.emit().unwrap().as_bytes());
    write(
        "pod_record",
        "future-key",
        b"c1\neth0\ncreated=1718000000\nnetwork_policy=deny\n",
    );
    write(
        "cni_env",
        "check-bad-ifname",
        &env(&["CHECK", "c1", "a-very-long-interface", "/proc/1/ns/net"]),
    );
}
