//! CNI plugin harnesses: stdin (the network configuration with its `args`,
//! `runtimeConfig` and `prevResult`), the `CNI_*` environment, `CNI_ARGS` with the pod
//! identity in it, the IPAM store's reservation files, and results.
//!
//! Only the parts of [`overlayd_cni::run`] that touch nothing are driven: VERSION,
//! and any command whose stdin does not parse. Everything else would open log files
//! or netlink sockets named by the input.

use std::collections::HashMap;

use overlayd_cni::config::{reply_version, NetConf, Version, SUPPORTED_VERSIONS};
use overlayd_cni::env::{parse_cni_args, Attachment, Command, Env};
use overlayd_cni::error::Error;
use overlayd_cni::plugin::{host_veth_name, HOST_VETH_PREFIX};
use overlayd_cni::result::CniResult;
use overlayd_node_info::pods::{Owner, PodIdentity};
use serde_json::Value;

/// Every version a result can be emitted in.
const VERSIONS: [Version; 5] = [
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

/// Runs the plugin with `env` and `stdin`; checks that it writes exactly one JSON
/// document, with the version `reply_version` picks, and returns it with the exit code.
fn run(env: &HashMap<String, String>, stdin: &[u8]) -> (i32, Value) {
    let mut out = Vec::new();
    let code = overlayd_cni::run(env, stdin, &mut out);
    assert!(out.ends_with(b"\n"), "one line of output");
    let reply: Value = serde_json::from_slice(&out).expect("the reply is one JSON document");
    assert_eq!(
        reply["cniVersion"].as_str(),
        Some(reply_version(stdin).as_str())
    );
    (code, reply)
}

/// A result that reads must emit for every version, and read back from the 1.1.0
/// shape (the one that drops nothing) as the same value.
fn result_round_trip(value: &Value) {
    let Ok(r) = CniResult::from_json(value) else {
        return;
    };
    for v in VERSIONS {
        let json = r.to_json(v);
        assert_eq!(json["cniVersion"].as_str(), Some(v.as_str()));
        let again = CniResult::from_json(&json).expect("an emitted result reads back");
        if v == Version::V1_1_0 {
            assert_eq!(again, r, "result round trip through 1.1.0");
        }
    }
}

/// `netconf`: stdin. `NetConf::parse` with the requested addresses of
/// `runtimeConfig.ips` / `args.cni.ips` and any `prevResult`; the version an error
/// reply uses must be a supported one; and the plugin run as VERSION must answer with
/// one JSON document listing the supported versions.
pub fn netconf(data: &[u8]) {
    if let Ok(conf) = NetConf::parse(data) {
        if let Ok(ips) = conf.requested() {
            assert_eq!(ips.len(), conf.requested_ips.len());
            for (ip, text) in ips.iter().zip(&conf.requested_ips) {
                assert_eq!(
                    text.split('/')
                        .next()
                        .unwrap()
                        .parse::<std::net::IpAddr>()
                        .ok(),
                    Some(*ip)
                );
            }
        }
        if let Some(prev) = &conf.prev_result {
            result_round_trip(prev);
        }
    }
    let version = reply_version(data);
    assert!(SUPPORTED_VERSIONS.contains(&version.as_str()));
    let reply = Error::Decode(String::from_utf8_lossy(data).into_owned()).to_reply(&version);
    assert!(reply["code"].is_u64());
    let env = HashMap::from([("CNI_COMMAND".to_owned(), "VERSION".to_owned())]);
    let (code, reply) = run(&env, data);
    assert_eq!(code, 0);
    assert_eq!(reply["supportedVersions"].as_array().map(Vec::len), Some(5));
}

/// The `CNI_*` variables a `cni_env` input sets, one per line, in this order.
pub const ENV_VARS: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_IFNAME",
    "CNI_NETNS",
    "CNI_ARGS",
    "CNI_PATH",
];

/// `cni_env`: the environment. The input's lines are the values of [`ENV_VARS`], in
/// order; missing lines and lines that are not UTF-8 leave the variable unset.
/// Command and attachment parsing must accept only names that are safe to use (the
/// container ID's charset, at most 15 bytes of interface name, a 15-byte host veth
/// name); `CNI_ARGS` must split into non-empty keys; and the plugin run with that
/// environment and an empty stdin must reply with one JSON error (VERSION: the
/// versions), touching nothing.
pub fn cni_env(data: &[u8]) {
    let env: HashMap<String, String> = ENV_VARS
        .iter()
        .zip(data.split(|b| *b == b'\n'))
        .filter_map(|(k, v)| Some(((*k).to_owned(), std::str::from_utf8(v).ok()?.to_owned())))
        .collect();
    let command = Command::from_env(&env);
    for netns_required in [false, true] {
        let Ok(a) = Attachment::from_env(&env, netns_required) else {
            continue;
        };
        assert!(a
            .container_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')));
        assert!(!a.ifname.is_empty() && a.ifname.len() <= 15);
        assert!(!a.ifname.contains(['/', ':']));
        let veth = host_veth_name(&a.container_id, &a.ifname);
        assert!(veth.len() == 15 && veth.starts_with(HOST_VETH_PREFIX));
        assert!(!netns_required || a.netns.is_some());
        assert!(a.args.iter().all(|(k, _)| !k.is_empty()));
        assert!(a.path.iter().all(|p| !p.is_empty() && !p.contains(':')));
        let _ = a.requested();
        identity_round_trip(&a);
    }
    if let Some(raw) = env.get("CNI_ARGS") {
        if let Ok(args) = parse_cni_args(raw) {
            for (k, v) in &args {
                assert!(!k.is_empty() && !k.contains(';') && !k.contains('='));
                assert!(!v.contains(';'));
            }
        }
    }
    let (code, reply) = run(&env, b"");
    if matches!(command, Ok(Command::Version)) {
        assert_eq!(code, 0);
    } else {
        assert_eq!(code, 1, "without a config every other command fails");
        assert!(reply["code"].is_u64() && reply["msg"].is_string());
    }
}

/// Reads one field of a pod identity.
type IdentityField = fn(&PodIdentity) -> &Option<String>;

/// The CNI_ARGS keys of the pod identity, with the field each one fills.
const IDENTITY_KEYS: [(&str, IdentityField); 4] = [
    ("K8S_POD_NAMESPACE", |p| &p.namespace),
    ("K8S_POD_NAME", |p| &p.name),
    ("K8S_POD_UID", |p| &p.uid),
    ("K8S_POD_INFRA_CONTAINER_ID", |p| &p.infra_container_id),
];

/// The pod identity of an accepted attachment: refused with code 4, or each field is
/// the last non-empty value of its key (the duplicate rule), and the reservation ADD
/// would write holds it: it emits, reads back equal, and its first two lines are the
/// container ID and interface an old plugin reads.
fn identity_round_trip(a: &Attachment) {
    let pod = match a.pod() {
        Ok(pod) => pod,
        Err(e) => {
            assert_eq!(e.code(), 4, "{e}");
            return;
        }
    };
    for (key, field) in IDENTITY_KEYS {
        let last = a
            .args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty());
        assert_eq!(field(&pod), &last, "{key}");
    }
    let owner = Owner {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
        host_veth: Some(host_veth_name(&a.container_id, &a.ifname)),
        created: Some(1_718_000_000),
        pod,
        netns: match a.netns_record() {
            Ok(netns) => netns,
            Err(e) => {
                assert_eq!(e.code(), 4, "{e}");
                return;
            }
        },
    };
    let text = owner.emit().expect("an accepted identity is storable");
    assert_eq!(Owner::parse(text.as_bytes()).as_ref(), Ok(&owner));
    let mut old_reader = text.lines();
    assert_eq!(old_reader.next(), Some(a.container_id.as_str()));
    assert_eq!(old_reader.next(), Some(a.ifname.as_str()));
}

/// An environment whose `CNI_ARGS` is set but not UTF-8: `var` cannot return it.
struct NotUtf8Args(HashMap<String, String>);

impl Env for NotUtf8Args {
    fn var(&self, key: &str) -> Option<String> {
        self.0.var(key)
    }

    fn is_set(&self, key: &str) -> bool {
        key == "CNI_ARGS" || self.0.is_set(key)
    }
}

/// `cni_args`: the bytes of `CNI_ARGS`, for an ADD of container `c1` on `eth0`. Refused
/// with code 4 (bytes that are not UTF-8 always are), or accepted: then the pairs are
/// exactly the input's non-empty `;` segments split at their first `=`, and the pod
/// identity is refused with code 4 or round-trips through the IPAM store's format.
pub fn cni_args(data: &[u8]) {
    let mut env: HashMap<String, String> = [
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/nonexistent/ns"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let Ok(raw) = std::str::from_utf8(data) else {
        let e = Attachment::from_env(&NotUtf8Args(env), true).unwrap_err();
        assert_eq!(e.code(), 4, "{e}");
        return;
    };
    env.insert("CNI_ARGS".into(), raw.to_owned());
    let a = match Attachment::from_env(&env, true) {
        Ok(a) => a,
        Err(e) => {
            assert_eq!(e.code(), 4, "{e}");
            assert!(
                raw.split(';').any(
                    |kv| !kv.is_empty() && kv.split_once('=').is_none_or(|(k, _)| k.is_empty())
                ),
                "refused a well-formed CNI_ARGS: {e}"
            );
            return;
        }
    };
    let expected: Vec<(String, String)> = raw
        .split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("accepted pairs have '='");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert_eq!(a.args, expected);
    if let Err(e) = a.requested() {
        assert_eq!(e.code(), 4);
    }
    identity_round_trip(&a);
}

/// `pod_record`: the content of a reservation file of the IPAM store. `Owner::parse`
/// returns a typed error or an owner that emits and reads back equal, whose first two
/// lines (what an older plugin reads) are the input's first two lines.
pub fn pod_record(data: &[u8]) {
    let Ok(owner) = Owner::parse(data) else {
        return;
    };
    let text = owner.emit().expect("a parsed owner emits");
    assert_eq!(Owner::parse(text.as_bytes()).as_ref(), Ok(&owner));
    let input = std::str::from_utf8(data).expect("a parsed file is UTF-8");
    let mut old_reader = input.lines();
    assert_eq!(old_reader.next(), Some(owner.container_id.as_str()));
    assert_eq!(old_reader.next(), Some(owner.ifname.as_str()));
}

/// `prev_result`: a result as JSON (a `prevResult`, or a delegated IPAM plugin's
/// answer). `CniResult::from_json`, then emit in every version and read back; and the
/// same object as the `prevResult` of a 1.0.0 config.
pub fn prev_result(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    result_round_trip(&value);
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "ovl",
        "type": "overlayd-cni",
        "prevResult": value,
    });
    let stdin = conf.to_string();
    // Compared with serde_json's own reading of the same text: without its
    // `float_roundtrip` feature a float may not survive printing and reading again.
    let mut reread: Value = serde_json::from_str(&stdin).expect("printed JSON reads");
    let expected = reread["prevResult"].take();
    let conf = NetConf::parse(stdin.as_bytes()).expect("a config with any prevResult");
    assert_eq!(conf.prev_result.unwrap_or(Value::Null), expected);
}
