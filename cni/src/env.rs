//! The runtime's side of the call: `CNI_*` environment variables, behind the [`Env`] trait.
//!
//! Tests inject a map instead of the process environment (the rscni `Env` pattern). This
//! module only parses and validates; it performs no I/O besides reading variables.
//!
//! # `CNI_ARGS`
//! `K1=V1;K2=V2`, as the reference plugins' `types.LoadArgs` reads it, with these rules:
//! - Keys may come in any order. Keys this plugin does not use are ignored, whether or
//!   not `IgnoreUnknown=1` is given (containerd and podman always give it).
//! - A duplicate key: the **last** value wins, for every key (`IP` included). That is
//!   what `LoadArgs` does (each pair overwrites the field), so a delegated `host-local`,
//!   which reads the same `CNI_ARGS` with `LoadArgs`, sees the same address as we do.
//! - A pair without `=`, or with an empty key, is refused with code 4, as `LoadArgs`
//!   refuses it. Unlike `LoadArgs`, empty segments (`;;`, a trailing `;`) are skipped and
//!   a value may contain `=` (the pair is split at the first one).
//! - An empty value is accepted; for the pod identity it means unknown.
//! - `CNI_ARGS` that is set but not UTF-8 is refused with code 4, not taken as unset.
//! - The pod identity (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`,
//!   `K8S_POD_INFRA_CONTAINER_ID`, see [`Attachment::pod`]) is stored with the address,
//!   so ADD refuses with code 4 a value with a control character (a newline would break
//!   the store's line format) or longer than 1024 bytes. Other values may hold anything.

use std::collections::HashMap;
use std::net::IpAddr;

use overlayd_node_info::pods::{self, PodIdentity};

use crate::error::{Error, Result};

/// Source of environment variables.
pub trait Env {
    /// The value of `key`, or `None` if it is unset or not UTF-8.
    fn var(&self, key: &str) -> Option<String>;

    /// Whether `key` is set at all, even to a value that is not UTF-8.
    fn is_set(&self, key: &str) -> bool {
        self.var(key).is_some()
    }
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }

    fn is_set(&self, key: &str) -> bool {
        std::env::var_os(key).is_some()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

/// The `CNI_COMMAND` values the spec defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Release everything not in the valid-attachments list (1.1.0).
    Gc,
    /// Report whether ADD can succeed (1.1.0).
    Status,
    /// Report the supported versions.
    Version,
}

impl Command {
    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// Parses `CNI_COMMAND`.
    pub fn from_env(env: &impl Env) -> Result<Self> {
        let value = env
            .var("CNI_COMMAND")
            .ok_or(Error::MissingEnv("CNI_COMMAND"))?;
        Ok(match value.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => {
                return Err(Error::InvalidEnv {
                    var: "CNI_COMMAND",
                    value,
                    reason: "expected ADD, DEL, CHECK, GC, STATUS or VERSION".into(),
                })
            }
        })
    }
}

/// The per-attachment variables of ADD, DEL and CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface name inside the container.
    pub ifname: String,
    /// `CNI_NETNS`: path of the container's network namespace (optional for DEL).
    pub netns: Option<String>,
    /// `CNI_ARGS`, split into `KEY=VALUE` pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<String>,
}

impl Attachment {
    /// Reads and validates the attachment variables; `netns_required` is true for ADD and CHECK.
    pub fn from_env(env: &impl Env, netns_required: bool) -> Result<Self> {
        let container_id = non_empty(env, "CNI_CONTAINERID")?;
        validate_container_id(&container_id)?;
        let ifname = non_empty(env, "CNI_IFNAME")?;
        validate_ifname(&ifname)?;
        let netns = env.var("CNI_NETNS").filter(|v| !v.is_empty());
        if netns_required && netns.is_none() {
            return Err(Error::MissingEnv("CNI_NETNS"));
        }
        let args = match env.var("CNI_ARGS") {
            Some(raw) => parse_cni_args(&raw)?,
            None if env.is_set("CNI_ARGS") => {
                return Err(Error::InvalidEnv {
                    var: "CNI_ARGS",
                    value: String::new(),
                    reason: "is not UTF-8".into(),
                })
            }
            None => Vec::new(),
        };
        let path = env
            .var("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Attachment {
            container_id,
            ifname,
            netns,
            args,
            path,
        })
    }

    /// The value of `CNI_ARGS` key `key`: the last one if the key is repeated.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `CNI_NETNS` as the IPAM store keeps it with the address (the daemon's reclaim
    /// looks for it): refused with code 4 if the store cannot hold it (a control
    /// character, more than 1024 bytes).
    pub fn netns_record(&self) -> Result<Option<String>> {
        let Some(v) = &self.netns else {
            return Ok(None);
        };
        pods::check_value("netns", v)
            .map(|()| Some(v.clone()))
            .map_err(|e| Error::InvalidEnv {
                var: "CNI_NETNS",
                value: shorten(v),
                reason: match e {
                    pods::RecordError::BadValue { reason, .. } => reason.into(),
                    other => other.to_string(),
                },
            })
    }

    /// The pod's Kubernetes identity from `CNI_ARGS`; an absent key or an empty value is
    /// unknown. A value the IPAM store cannot hold (a control character, more than 1024
    /// bytes) is refused with code 4.
    pub fn pod(&self) -> Result<PodIdentity> {
        let get = |key: &'static str| -> Result<Option<String>> {
            match self.arg(key).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => match pods::check_value(key, v) {
                    Ok(()) => Ok(Some(v.to_owned())),
                    Err(e) => Err(Error::InvalidEnv {
                        var: "CNI_ARGS",
                        value: shorten(&format!("{key}={v}")),
                        reason: match e {
                            pods::RecordError::BadValue { reason, .. } => reason.into(),
                            other => other.to_string(),
                        },
                    }),
                },
            }
        };
        Ok(PodIdentity {
            namespace: get("K8S_POD_NAMESPACE")?,
            name: get("K8S_POD_NAME")?,
            uid: get("K8S_POD_UID")?,
            infra_container_id: get("K8S_POD_INFRA_CONTAINER_ID")?,
        })
    }

    /// The addresses requested with `CNI_ARGS` `IP=` (none if not given).
    pub fn requested(&self) -> Result<Vec<IpAddr>> {
        // `IP=` (empty) requests nothing, as `LoadArgs` reads an empty `net.IP`.
        let Some(value) = self.arg("IP").filter(|v| !v.is_empty()) else {
            return Ok(Vec::new());
        };
        // `IP=` may carry a prefix length (static IPAM accepts both forms), and one
        // address per family, comma-separated (as host-local takes it).
        value
            .split(',')
            .map(|a| {
                a.split('/')
                    .next()
                    .unwrap_or(a)
                    .parse()
                    .map_err(|_| Error::InvalidEnv {
                        var: "CNI_ARGS",
                        value: shorten(&format!("IP={value}")),
                        reason: "IP must be IP addresses, comma-separated".into(),
                    })
            })
            .collect()
    }
}

fn non_empty(env: &impl Env, var: &'static str) -> Result<String> {
    env.var(var)
        .filter(|v| !v.is_empty())
        .ok_or(Error::MissingEnv(var))
}

/// Container IDs are alphanumeric plus `_`, `.` and `-` (the spec's rule), which also keeps
/// them safe inside store file contents.
fn validate_container_id(id: &str) -> Result<()> {
    let ok_first = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_first
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(())
    } else {
        Err(Error::InvalidEnv {
            var: "CNI_CONTAINERID",
            value: id.to_owned(),
            reason: "must start with a letter or digit and contain only letters, digits, '_', '.' and '-'".into(),
        })
    }
}

/// Linux interface names: at most 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
fn validate_ifname(name: &str) -> Result<()> {
    let reason = if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is not a valid interface name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidEnv {
            var: "CNI_IFNAME",
            value: name.to_owned(),
            reason: reason.into(),
        }),
    }
}

/// Splits `CNI_ARGS` (`K1=V1;K2=V2`) into pairs, in their order (duplicates kept; see
/// [`Attachment::arg`]). Empty segments are skipped; a segment without `=` or with an
/// empty key is refused with code 4. The module docs give the whole rule.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>> {
    raw.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Error::InvalidEnv {
                var: "CNI_ARGS",
                value: shorten(raw),
                reason: format!("{:?} is not KEY=VALUE", shorten(kv)),
            }),
        })
        .collect()
}

/// `value` cut to its first 128 characters (with `...`), for error messages: a
/// `CNI_ARGS` of a megabyte is not repeated in the reply.
fn shorten(value: &str) -> String {
    const MAX: usize = 128;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn command_parsing() {
        assert_eq!(
            Command::from_env(&env(&[("CNI_COMMAND", "ADD")])).unwrap(),
            Command::Add
        );
        let e = Command::from_env(&env(&[])).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("CNI_COMMAND"));
        let e = Command::from_env(&env(&[("CNI_COMMAND", "ATTACH")])).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("ATTACH"));
    }

    #[test]
    fn attachment_validation() {
        let ok = env(&[
            ("CNI_CONTAINERID", "abc-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.1.9"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]);
        let a = Attachment::from_env(&ok, true).unwrap();
        assert_eq!(
            a.requested().unwrap(),
            vec!["10.244.1.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(a.path.len(), 2);

        let mut no_netns = ok.clone();
        no_netns.remove("CNI_NETNS");
        assert!(Attachment::from_env(&no_netns, false).is_ok());
        let e = Attachment::from_env(&no_netns, true).unwrap_err();
        assert!(e.to_string().contains("CNI_NETNS"));

        for (var, bad) in [
            ("CNI_IFNAME", "a-very-long-interface"),
            ("CNI_IFNAME", "eth/0"),
            ("CNI_CONTAINERID", "../etc"),
            ("CNI_ARGS", "IP"),
        ] {
            let mut e = ok.clone();
            e.insert(var.into(), bad.into());
            let err = Attachment::from_env(&e, true).unwrap_err();
            assert_eq!(err.code(), 4, "{var}={bad}");
            assert!(err.to_string().contains(var), "{err}");
        }
        let mut bad_ip = ok.clone();
        bad_ip.insert("CNI_ARGS".into(), "IP=10.244.1".into());
        let a = Attachment::from_env(&bad_ip, true).unwrap();
        assert_eq!(a.requested().unwrap_err().code(), 4);
    }

    /// An ADD's attachment with `CNI_ARGS` set to `args`.
    fn with_args(args: &str) -> Result<Attachment> {
        let e = env(&[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_ARGS", args),
        ]);
        Attachment::from_env(&e, true)
    }

    /// Parses `args` and the pod identity in it; the error, if any, must be code 4.
    fn pod_of(args: &str) -> Result<PodIdentity> {
        let r = with_args(args).and_then(|a| a.pod());
        if let Err(e) = &r {
            assert_eq!(e.code(), 4, "{args:?}: {e}");
            assert!(e.to_string().contains("CNI_ARGS"), "{e}");
        }
        r
    }

    fn web0() -> PodIdentity {
        PodIdentity {
            namespace: Some("default".into()),
            name: Some("web-0".into()),
            uid: Some("6f1d0c2e-8a43-4c1e-9f53-2a8d4b7c1e90".into()),
            infra_container_id: Some("3f1c9a7e6b2d".into()),
        }
    }

    #[test]
    fn cni_args_keys_in_any_order_and_unknown_keys_ignored() {
        // Two orders containerd 1.6 really used, plus podman-style extra keys.
        for args in [
            "K8S_POD_INFRA_CONTAINER_ID=3f1c9a7e6b2d;K8S_POD_UID=6f1d0c2e-8a43-4c1e-9f53-2a8d4b7c1e90;IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=3f1c9a7e6b2d;K8S_POD_UID=6f1d0c2e-8a43-4c1e-9f53-2a8d4b7c1e90",
            "K8S_POD_NAME=web-0;FUTURE_KEY=x;K8S_POD_UID=6f1d0c2e-8a43-4c1e-9f53-2a8d4b7c1e90;K8S_POD_NAMESPACE=default;K8S_POD_INFRA_CONTAINER_ID=3f1c9a7e6b2d;MAC=0a:58:00:00:00:01",
        ] {
            assert_eq!(pod_of(args).unwrap(), web0(), "{args}");
        }
        // Without IgnoreUnknown, unknown keys are still ignored.
        assert_eq!(
            pod_of("X=1;K8S_POD_NAME=a").unwrap().name.as_deref(),
            Some("a")
        );
        // Outside Kubernetes: nothing known.
        assert_eq!(pod_of("").unwrap(), PodIdentity::default());
        assert_eq!(pod_of("IgnoreUnknown=1").unwrap(), PodIdentity::default());
    }

    #[test]
    fn cni_args_without_equals_or_key_are_refused_with_code_4() {
        for args in [
            "IP",
            "K8S_POD_NAME",
            "IgnoreUnknown=1;garbage",
            "=value",
            "A=1;=;B=2",
        ] {
            let e = pod_of(args).unwrap_err();
            assert!(e.to_string().contains("KEY=VALUE"), "{e}");
        }
    }

    #[test]
    fn cni_args_empty_values_and_segments_are_accepted() {
        let p = pod_of("K8S_POD_NAMESPACE=;K8S_POD_NAME=web-0;K8S_POD_UID=").unwrap();
        assert_eq!(
            (p.namespace, p.name.as_deref(), p.uid),
            (None, Some("web-0"), None)
        );
        for args in [
            ";;",
            ";",
            ";K8S_POD_NAME=web-0;;IgnoreUnknown=1;",
            "K8S_POD_NAME=web-0;",
        ] {
            assert!(pod_of(args).is_ok(), "{args:?}");
        }
        assert_eq!(
            pod_of(";;K8S_POD_NAME=n;;").unwrap().name.as_deref(),
            Some("n")
        );
        // `IP=` requests nothing; a value may hold `=`.
        assert_eq!(
            with_args("IP=").unwrap().requested().unwrap(),
            Vec::<IpAddr>::new()
        );
        assert_eq!(
            pod_of("K8S_POD_UID=a=b").unwrap().uid.as_deref(),
            Some("a=b")
        );
    }

    #[test]
    fn cni_args_duplicate_key_last_wins() {
        let p = pod_of("K8S_POD_NAME=first;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=second").unwrap();
        assert_eq!(p.name.as_deref(), Some("second"));
        // An empty last value makes it unknown, as it overwrote the first.
        assert_eq!(pod_of("K8S_POD_NAME=a;K8S_POD_NAME=").unwrap().name, None);
        let a = with_args("IP=10.244.1.5;IgnoreUnknown=1;IP=10.244.1.6").unwrap();
        assert_eq!(
            a.requested().unwrap(),
            vec!["10.244.1.6".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(a.args.len(), 3, "every pair is kept, in order");
    }

    #[test]
    fn cni_args_very_long_values() {
        let mib = "x".repeat(1 << 20);
        // An unknown key's megabyte is carried, not judged.
        let a = with_args(&format!("IgnoreUnknown=1;BLOB={mib};K8S_POD_NAME=web-0")).unwrap();
        assert_eq!(a.arg("BLOB").map(str::len), Some(1 << 20));
        assert_eq!(a.pod().unwrap().name.as_deref(), Some("web-0"));
        // An identity value is stored, so it has a limit; the error does not echo it.
        let e = pod_of(&format!("K8S_POD_NAME={mib}")).unwrap_err();
        assert!(e.to_string().contains("longer than 1024 bytes"), "{e}");
        assert!(e.to_string().len() < 512, "{} bytes", e.to_string().len());
        let max = "n".repeat(pods::MAX_VALUE_LEN);
        assert_eq!(
            pod_of(&format!("K8S_POD_UID={max}")).unwrap().uid,
            Some(max)
        );
        // A megabyte with no `=`: refused, and the reply stays short.
        let e = with_args(&mib).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().len() < 512);
    }

    #[test]
    fn cni_args_odd_characters() {
        // Non-ASCII that is not a control character is a fine identity value.
        for name in ["pödchen", "名前", "web 0", "a\\b", "\u{202e}rtl", "😀"] {
            let p = pod_of(&format!("K8S_POD_NAME={name}")).unwrap();
            assert_eq!(p.name.as_deref(), Some(name));
            let mut owner = pods::Owner::new("c1", "eth0");
            owner.pod = p;
            let text = owner.emit().unwrap();
            assert_eq!(pods::Owner::parse(text.as_bytes()).unwrap(), owner);
        }
        // A newline or any control character in an identity value would break the store
        // format: code 4, naming the key.
        for bad in ["web\n0", "web\r", "a\0b", "tab\there", "\u{7f}", "\u{85}"] {
            let e = pod_of(&format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={bad}")).unwrap_err();
            assert!(e.to_string().contains("K8S_POD_NAMESPACE"), "{e}");
            assert!(e.to_string().contains("control character"), "{e}");
        }
        // ...but in a key we do not use, it is only carried.
        assert!(pod_of("OTHER=a\nb\0c;K8S_POD_NAME=ok").is_ok());
    }

    #[test]
    fn a_netns_the_store_cannot_hold_is_refused_with_code_4() {
        let env = |netns: &str| -> HashMap<String, String> {
            [
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", netns),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
        };
        let a = Attachment::from_env(&env("/var/run/netns/cni-1"), true).unwrap();
        assert_eq!(
            a.netns_record().unwrap().as_deref(),
            Some("/var/run/netns/cni-1")
        );
        for bad in [
            "/var/run/netns/a\nb".to_string(),
            format!("/{}", "n".repeat(1100)),
        ] {
            let a = Attachment::from_env(&env(&bad), true).unwrap();
            let e = a.netns_record().unwrap_err();
            assert_eq!(e.code(), 4, "{e}");
            assert!(e.to_string().contains("CNI_NETNS"), "{e}");
        }
    }

    #[test]
    fn cni_args_not_utf8_is_refused_not_ignored() {
        /// An environment where `CNI_ARGS` is set but not UTF-8 (what `var_os` sees).
        struct NotUtf8(HashMap<String, String>);
        impl Env for NotUtf8 {
            fn var(&self, key: &str) -> Option<String> {
                self.0.var(key)
            }
            fn is_set(&self, key: &str) -> bool {
                key == "CNI_ARGS" || self.0.is_set(key)
            }
        }
        let e = NotUtf8(env(&[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")]));
        let err = Attachment::from_env(&e, false).unwrap_err();
        assert_eq!(err.code(), 4);
        assert!(err.to_string().contains("CNI_ARGS") && err.to_string().contains("UTF-8"));
        // Unset is fine.
        assert!(Attachment::from_env(&e.0, false).unwrap().args.is_empty());
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        /// Any `CNI_ARGS`: refused with code 4, or an identity that the IPAM store holds
        /// and reads back unchanged, each field being the last non-empty value of its key.
        #[test]
        fn any_cni_args_is_refused_or_round_trips(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(vec![
                        "K8S_POD_NAME=", "K8S_POD_NAMESPACE=", "K8S_POD_UID=",
                        "K8S_POD_INFRA_CONTAINER_ID=", "IgnoreUnknown=1", "IP=", ";", "=", "\n",
                    ]).prop_map(|s: &str| s.to_owned()),
                    "\\PC{0,6}",
                    proptest::char::any().prop_map(|c: char| c.to_string()),
                ],
                0..12,
            ),
        ) {
            let raw = parts.concat();
            match pod_of(&raw) {
                Err(_) => {}
                Ok(pod) => {
                    let pairs = parse_cni_args(&raw).unwrap();
                    let last = |k: &str| pairs.iter().rev().find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
                    proptest::prop_assert_eq!(&pod.name, &last("K8S_POD_NAME"));
                    proptest::prop_assert_eq!(&pod.uid, &last("K8S_POD_UID"));
                    let mut owner = pods::Owner::new("c1", "eth0");
                    owner.pod = pod;
                    let text = owner.emit().unwrap();
                    proptest::prop_assert_eq!(pods::Owner::parse(text.as_bytes()).unwrap(), owner);
                }
            }
        }
    }
}
