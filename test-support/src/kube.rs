//! The Kubernetes manifests run as a kubelet would run them, with podman in a test
//! node's namespace: a DaemonSet's pod template turned into one `podman run` per node,
//! the image `scripts/image.sh` builds, a throwaway podman storage, and the CNI plugin
//! the daemon installed on a host run as that host's container runtime runs it.
//!
//! A node's host filesystem is a directory (`<dir>/<node>/host`) standing for its
//! `/`: hostPath volumes map into it, and the plugin runs in a private mount namespace
//! where that host's `/run/overlayd`, `/var/lib/cni` and `/var/log` are bound over the
//! real ones. Every field of the pod template is either handled or named below as one
//! that does not change what runs on one node; any other field fails the test, so the
//! manifest cannot drift from what is tested.
//!
//! Left out: the API server, scheduling, kubelet restarts and periodic probes (the
//! tests probe once, when they wait for readiness).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value};
use yaml_rust2::parser::{Event, EventReceiver, Parser};
use yaml_rust2::scanner::TScalarStyle;

use crate::cni::PluginOutput;
use crate::netns::Netns;

/// The workspace root (the overlayd repository).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support sits in the workspace root")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------
// YAML

/// Parses every document of a YAML stream into JSON values, resolving plain scalars
/// as Kubernetes' YAML 1.1 reader does: `0400` is octal (a file mode), `yes`/`no`/
/// `on`/`off` are booleans. Quoted scalars stay strings. Aliases and duplicate keys
/// fail.
pub fn parse_yaml(text: &str, what: &str) -> Vec<Value> {
    let mut b = JsonBuilder {
        what: what.to_string(),
        docs: Vec::new(),
        stack: Vec::new(),
    };
    Parser::new_from_str(text)
        .load(&mut b, true)
        .unwrap_or_else(|e| panic!("{what}: not valid YAML: {e}"));
    // An empty document (`---` and nothing else) is no object.
    b.docs.retain(|d| !d.is_null());
    b.docs
}

enum Frame {
    Seq(Vec<Value>),
    Map(Map<String, Value>, Option<String>),
}

struct JsonBuilder {
    what: String,
    docs: Vec<Value>,
    stack: Vec<Frame>,
}

impl JsonBuilder {
    fn push(&mut self, v: Value) {
        match self.stack.last_mut() {
            None => self.docs.push(v),
            Some(Frame::Seq(items)) => items.push(v),
            Some(Frame::Map(map, key)) => match key.take() {
                None => {
                    let k = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    *key = Some(k);
                }
                Some(k) => {
                    if map.contains_key(&k) {
                        panic!("{}: duplicate key {k:?}", self.what);
                    }
                    map.insert(k, v);
                }
            },
        }
    }
}

impl EventReceiver for JsonBuilder {
    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Scalar(s, style, _, tag) => {
                let v = match tag.map(|t| t.suffix) {
                    Some(t) if t == "str" => Value::String(s),
                    _ if style != TScalarStyle::Plain => Value::String(s),
                    _ => resolve_plain(&s),
                };
                self.push(v);
            }
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(Vec::new())),
            Event::MappingStart(..) => self.stack.push(Frame::Map(Map::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let v = match self.stack.pop() {
                    Some(Frame::Seq(items)) => Value::Array(items),
                    Some(Frame::Map(map, _)) => Value::Object(map),
                    None => panic!("{}: unbalanced YAML events", self.what),
                };
                self.push(v);
            }
            Event::Alias(_) => panic!("{}: YAML aliases are not handled", self.what),
            _ => {}
        }
    }
}

/// A plain (unquoted) YAML scalar as YAML 1.1 (go-yaml v2, which kubectl uses) reads it.
fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
            return Value::Bool(true)
        }
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            return Value::Bool(false)
        }
        _ => {}
    }
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let int = if let Some(h) = digits.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = digits.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8).ok()
    } else {
        digits.parse::<i64>().ok()
    };
    if let Some(i) = int {
        return Value::from(if neg { -i } else { i });
    }
    if let Ok(f) = s.parse::<f64>() {
        if s.chars().any(|c| c.is_ascii_digit()) {
            return Value::from(f);
        }
    }
    Value::String(s.to_string())
}

// ---------------------------------------------------------------------------------
// Strict reading of manifest objects

/// An object of the manifest at a path (`DaemonSet overlayd: spec.template...`), read
/// strictly: [`Obj::keys`] fails on any field it was not told about.
#[derive(Clone, Copy)]
struct Obj<'a> {
    at: &'a str,
    map: &'a Map<String, Value>,
}

fn obj<'a>(v: &'a Value, at: &'a str) -> Obj<'a> {
    match v {
        Value::Object(map) => Obj { at, map },
        other => panic!("{at}: expected a mapping, found {other}"),
    }
}

impl<'a> Obj<'a> {
    /// Fails unless every key is in `handled` (read by this module) or `irrelevant`
    /// (changes nothing on one node running one pod, as tested here).
    fn keys(&self, handled: &[&str], irrelevant: &[&str]) {
        for k in self.map.keys() {
            if !handled.contains(&k.as_str()) && !irrelevant.contains(&k.as_str()) {
                panic!(
                    "{}.{k}: not handled by test-support/src/kube.rs, so the test would \
                     not run what the manifest says; handle it there (or remove it from \
                     the manifest)",
                    self.at
                );
            }
        }
    }

    fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    fn str(&self, k: &str) -> Option<String> {
        self.get(k).map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => panic!("{}.{k}: expected a string, found {other}", self.at),
        })
    }

    fn req_str(&self, k: &str) -> String {
        self.str(k)
            .unwrap_or_else(|| panic!("{}.{k}: missing", self.at))
    }

    fn bool(&self, k: &str) -> bool {
        match self.get(k) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => panic!("{}.{k}: expected a boolean, found {other}", self.at),
        }
    }

    fn u64(&self, k: &str) -> Option<u64> {
        self.get(k).map(|v| {
            v.as_u64()
                .unwrap_or_else(|| panic!("{}.{k}: expected a number, found {v}", self.at))
        })
    }

    fn list(&self, k: &str) -> &'a [Value] {
        match self.get(k) {
            None => &[],
            Some(Value::Array(items)) => items,
            Some(other) => panic!("{}.{k}: expected a list, found {other}", self.at),
        }
    }

    fn strings(&self, k: &str) -> Option<Vec<String>> {
        self.get(k)?;
        Some(
            self.list(k)
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => panic!("{}.{k}: expected strings, found {other}", self.at),
                })
                .collect(),
        )
    }
}

// ---------------------------------------------------------------------------------
// The manifest

/// The documents of one or more manifest files, and the ConfigMaps among them.
pub struct Manifest {
    docs: Vec<(String, Value)>,
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

impl Manifest {
    /// Loads every document of `paths` (multi-document YAML files). ConfigMaps of all
    /// files are visible to every pod template.
    pub fn load(paths: &[PathBuf]) -> Manifest {
        let mut docs = Vec::new();
        let mut config_maps = BTreeMap::new();
        for path in paths {
            let text =
                std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let file = path
                .strip_prefix(repo_root())
                .unwrap_or(path)
                .display()
                .to_string();
            for doc in parse_yaml(&text, &file) {
                if doc.is_null() {
                    continue;
                }
                let kind = doc["kind"].as_str().unwrap_or_default().to_string();
                let name = doc["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let at = format!("{file}: {kind} {name}");
                if kind == "ConfigMap" {
                    let o = obj(&doc, &at);
                    o.keys(&["data"], &["apiVersion", "kind", "metadata"]);
                    let data = match o.get("data") {
                        Some(d) => obj(d, &at)
                            .map
                            .iter()
                            .map(|(k, v)| match v {
                                Value::String(s) => (k.clone(), s.clone()),
                                other => panic!(
                                    "{at}: data.{k} is {other}, not a string (the API \
                                     server would refuse it)"
                                ),
                            })
                            .collect(),
                        None => BTreeMap::new(),
                    };
                    config_maps.insert(name.clone(), data);
                }
                docs.push((at, doc));
            }
        }
        Manifest { docs, config_maps }
    }

    /// Kinds and names of every document, in order (`Namespace kube-system`, ...).
    pub fn objects(&self) -> Vec<String> {
        self.docs
            .iter()
            .map(|(_, d)| {
                format!(
                    "{} {}",
                    d["kind"].as_str().unwrap_or("?"),
                    d["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    /// Sets `key` in the one ConfigMap that has it, as a user edits the manifest
    /// before applying it (the seed `peers`); returns that ConfigMap's name.
    pub fn set_config_key(&mut self, key: &str, value: &str) -> String {
        let names: Vec<String> = self
            .config_maps
            .iter()
            .filter(|(_, data)| data.contains_key(key))
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "expected one ConfigMap with key {key:?}, found {names:?}"
        );
        self.config_maps
            .get_mut(&names[0])
            .unwrap()
            .insert(key.to_string(), value.to_string());
        names[0].clone()
    }

    /// The value of `key` in the one ConfigMap that has it.
    pub fn config_value(&self, key: &str) -> String {
        let values: Vec<&String> = self
            .config_maps
            .values()
            .filter_map(|data| data.get(key))
            .collect();
        assert_eq!(values.len(), 1, "expected one ConfigMap with key {key:?}");
        values[0].clone()
    }

    /// The value of `key` in ConfigMap `name`.
    pub fn config(&self, name: &str, key: &str) -> Option<&str> {
        self.config_maps.get(name)?.get(key).map(String::as_str)
    }

    /// The pod template of DaemonSet `name`, read strictly.
    pub fn daemonset(&self, name: &str) -> PodTemplate {
        let (at, doc) = self
            .docs
            .iter()
            .find(|(_, d)| d["kind"] == "DaemonSet" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no DaemonSet {name} in {:?}", self.objects()));
        PodTemplate::parse(at, doc)
    }
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone)]
pub enum EnvSource {
    /// `value`, with `$(VAR)` references to earlier variables expanded.
    Value(String),
    /// `valueFrom.fieldRef.fieldPath`.
    Field(String),
    /// `valueFrom.configMapKeyRef`.
    ConfigMapKey {
        /// ConfigMap name.
        name: String,
        /// Key in its data.
        key: String,
        /// Skipped when missing, instead of failing.
        optional: bool,
    },
    /// `valueFrom.secretKeyRef`.
    SecretKey {
        /// Secret name.
        name: String,
        /// Key in its data.
        key: String,
        /// Skipped when missing, instead of failing.
        optional: bool,
    },
}

/// One `env` entry of the container.
#[derive(Debug, Clone)]
pub struct EnvVar {
    /// Its name.
    pub name: String,
    /// Its value's source.
    pub source: EnvSource,
}

/// One `volumeMounts` entry.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The volume's name.
    pub volume: String,
    /// Where it appears in the container.
    pub path: String,
    /// `readOnly`.
    pub read_only: bool,
    /// `subPath`, if any.
    pub sub_path: Option<String>,
    /// `mountPropagation: HostToContainer` (`None`, the default, is false).
    pub host_to_container: bool,
}

/// `hostPath.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPathType {
    /// Unset: no check.
    Unset,
    /// `DirectoryOrCreate`.
    DirectoryOrCreate,
    /// `Directory`: must exist (the test host creates it, as a real host has it).
    Directory,
    /// `FileOrCreate`.
    FileOrCreate,
    /// `File`.
    File,
    /// `CharDevice`: a device of the real machine (only `/dev/net/tun`).
    CharDevice,
}

/// One `items` entry of a configMap or secret volume.
#[derive(Debug, Clone)]
pub struct KeyToPath {
    /// Key in the object's data.
    pub key: String,
    /// File path in the volume.
    pub path: String,
    /// File mode, if set.
    pub mode: Option<u32>,
}

/// What a volume is.
#[derive(Debug, Clone)]
pub enum VolumeSource {
    /// A path on the node.
    HostPath {
        /// The node path.
        path: String,
        /// Its type.
        kind: HostPathType,
    },
    /// Files from a ConfigMap (read-only).
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// Which keys, to which files (empty: every key, under its name).
        items: Vec<KeyToPath>,
        /// Mode of files without their own.
        default_mode: u32,
    },
    /// Files from a Secret (read-only).
    Secret {
        /// Secret name.
        name: String,
        /// Which keys, to which files (empty: every key, under its name).
        items: Vec<KeyToPath>,
        /// Mode of files without their own.
        default_mode: u32,
    },
    /// An empty directory for the pod's life.
    EmptyDir,
}

/// One `volumes` entry.
#[derive(Debug, Clone)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// What it is.
    pub source: VolumeSource,
}

/// An HTTP probe (`httpGet`).
#[derive(Debug, Clone)]
pub struct HttpProbe {
    /// Request path.
    pub path: String,
    /// Port number (a named port resolved through the container's `ports`).
    pub port: u16,
    /// `host`, if set (default: the pod IP, the node's with hostNetwork).
    pub host: Option<String>,
}

/// The one container of a pod template.
#[derive(Debug, Clone)]
pub struct Container {
    /// Its name.
    pub name: String,
    /// The manifest's image (the tests run their own build instead).
    pub image: String,
    /// `command`: replaces the image's entrypoint.
    pub command: Option<Vec<String>>,
    /// `args`: replaces the image's command.
    pub args: Vec<String>,
    /// `env`, in order.
    pub env: Vec<EnvVar>,
    /// `volumeMounts`.
    pub mounts: Vec<Mount>,
    /// `securityContext.privileged`.
    pub privileged: bool,
    /// `securityContext.capabilities.drop`.
    pub cap_drop: Vec<String>,
    /// `securityContext.capabilities.add`.
    pub cap_add: Vec<String>,
    /// `securityContext.readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `securityContext.allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// `securityContext.runAsUser`.
    pub run_as_user: Option<u64>,
    /// `securityContext.seccompProfile.type` (Kubernetes' default: Unconfined).
    pub seccomp: Option<String>,
    /// `readinessProbe.httpGet`.
    pub readiness: Option<HttpProbe>,
    /// `livenessProbe.httpGet`.
    pub liveness: Option<HttpProbe>,
    /// `resources.limits.memory`, as Kubernetes writes it.
    pub memory_limit: Option<String>,
    /// `resources.limits.cpu`, as Kubernetes writes it.
    pub cpu_limit: Option<String>,
    /// `workingDir`.
    pub working_dir: Option<String>,
}

/// A DaemonSet's pod template: what every node runs.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    /// `<file>: DaemonSet <name>`, for messages.
    pub at: String,
    /// The DaemonSet's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The container.
    pub container: Container,
    /// The volumes.
    pub volumes: Vec<Volume>,
    /// `terminationGracePeriodSeconds` (default 30): the stop timeout.
    pub grace_secs: u64,
}

fn key_to_paths(o: Obj<'_>) -> Vec<KeyToPath> {
    o.list("items")
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let at = format!("{}.items[{i}]", o.at);
            let it = obj(it, &at);
            it.keys(&["key", "path", "mode"], &[]);
            KeyToPath {
                key: it.req_str("key"),
                path: it.req_str("path"),
                mode: it.u64("mode").map(|m| m as u32),
            }
        })
        .collect()
}

fn http_probe(o: Obj<'_>, ports: &BTreeMap<String, u16>) -> HttpProbe {
    o.keys(
        &["httpGet"],
        &[
            "initialDelaySeconds",
            "periodSeconds",
            "timeoutSeconds",
            "failureThreshold",
            "successThreshold",
        ],
    );
    let at = format!("{}.httpGet", o.at);
    let g = obj(
        o.get("httpGet")
            .unwrap_or_else(|| panic!("{}: only httpGet probes are handled", o.at)),
        &at,
    );
    g.keys(&["path", "port", "host", "scheme"], &[]);
    if let Some(s) = g.str("scheme") {
        assert_eq!(s, "HTTP", "{at}.scheme: only HTTP is handled");
    }
    let port = match g.get("port") {
        Some(Value::Number(n)) => n.as_u64().unwrap() as u16,
        Some(Value::String(name)) => *ports
            .get(name)
            .unwrap_or_else(|| panic!("{at}.port: no container port named {name}")),
        other => panic!("{at}.port: {other:?}"),
    };
    HttpProbe {
        path: g.str("path").unwrap_or_else(|| "/".into()),
        port,
        host: g.str("host"),
    }
}

impl PodTemplate {
    fn parse(at: &str, doc: &Value) -> PodTemplate {
        let d = obj(doc, at);
        d.keys(&["metadata", "spec"], &["apiVersion", "kind"]);
        let name = d
            .get("metadata")
            .and_then(|m| m["name"].as_str())
            .unwrap_or_default()
            .to_string();
        let namespace = d
            .get("metadata")
            .and_then(|m| m["namespace"].as_str())
            .unwrap_or("default")
            .to_string();
        let at_spec = format!("{at}: spec");
        let spec = obj(d.get("spec").expect("spec"), &at_spec);
        spec.keys(
            &["template"],
            &[
                "selector",
                "updateStrategy",
                "minReadySeconds",
                "revisionHistoryLimit",
            ],
        );
        let at_t = format!("{at_spec}.template");
        let t = obj(spec.get("template").expect("template"), &at_t);
        t.keys(&["spec"], &["metadata"]);
        let at_p = format!("{at_t}.spec");
        let p = obj(t.get("spec").expect("template.spec"), &at_p);
        p.keys(
            &[
                "containers",
                "volumes",
                "hostNetwork",
                "terminationGracePeriodSeconds",
            ],
            &[
                // No API access is used or given in the test; scheduling and
                // placement decide where a pod runs, not what it does there.
                "serviceAccountName",
                "serviceAccount",
                "automountServiceAccountToken",
                "dnsPolicy",
                "priorityClassName",
                "tolerations",
                "nodeSelector",
                "affinity",
                "restartPolicy",
            ],
        );
        assert!(
            p.bool("hostNetwork"),
            "{at_p}.hostNetwork: the test runs the pod in the node's network namespace, \
             which is what hostNetwork: true means"
        );
        let containers = p.list("containers");
        assert_eq!(
            containers.len(),
            1,
            "{at_p}.containers: exactly one container is handled"
        );
        let at_c = format!("{at_p}.containers[0]");
        let container = Self::parse_container(&at_c, &containers[0]);
        let volumes = p
            .list("volumes")
            .iter()
            .enumerate()
            .map(|(i, v)| Self::parse_volume(&format!("{at_p}.volumes[{i}]"), v))
            .collect::<Vec<_>>();
        for m in &container.mounts {
            assert!(
                volumes.iter().any(|v| v.name == m.volume),
                "{at_c}: volumeMount {} names no volume",
                m.volume
            );
        }
        PodTemplate {
            at: at.to_string(),
            name,
            namespace,
            container,
            volumes,
            grace_secs: p.u64("terminationGracePeriodSeconds").unwrap_or(30),
        }
    }

    fn parse_container(at: &str, v: &Value) -> Container {
        let c = obj(v, at);
        c.keys(
            &[
                "name",
                "image",
                "command",
                "args",
                "env",
                "volumeMounts",
                "securityContext",
                "readinessProbe",
                "livenessProbe",
                "resources",
                "workingDir",
                "ports",
            ],
            &[
                "imagePullPolicy",
                "terminationMessagePath",
                "terminationMessagePolicy",
            ],
        );
        let mut ports = BTreeMap::new();
        for (i, pv) in c.list("ports").iter().enumerate() {
            let pat = format!("{at}.ports[{i}]");
            let po = obj(pv, &pat);
            // With hostNetwork the container binds the node's ports itself: ports only
            // name them (for probes).
            po.keys(&["name", "containerPort"], &["protocol", "hostPort"]);
            if let Some(n) = po.str("name") {
                ports.insert(n, po.u64("containerPort").expect("containerPort") as u16);
            }
        }
        let env = c
            .list("env")
            .iter()
            .enumerate()
            .map(|(i, ev)| {
                let eat = format!("{at}.env[{i}]");
                let e = obj(ev, &eat);
                e.keys(&["name", "value", "valueFrom"], &[]);
                let name = e.req_str("name");
                let source = match (e.get("value"), e.get("valueFrom")) {
                    (Some(_), None) => EnvSource::Value(e.req_str("value")),
                    (None, Some(from)) => {
                        let fat = format!("{eat}.valueFrom");
                        let f = obj(from, &fat);
                        f.keys(&["fieldRef", "configMapKeyRef", "secretKeyRef"], &[]);
                        assert_eq!(f.map.len(), 1, "{fat}: one source");
                        if let Some(r) = f.get("fieldRef") {
                            let rat = format!("{fat}.fieldRef");
                            let r = obj(r, &rat);
                            r.keys(&["fieldPath"], &["apiVersion"]);
                            EnvSource::Field(r.req_str("fieldPath"))
                        } else if let Some(r) = f.get("configMapKeyRef") {
                            let rat = format!("{fat}.configMapKeyRef");
                            let r = obj(r, &rat);
                            r.keys(&["name", "key", "optional"], &[]);
                            EnvSource::ConfigMapKey {
                                name: r.req_str("name"),
                                key: r.req_str("key"),
                                optional: r.bool("optional"),
                            }
                        } else {
                            let rat = format!("{fat}.secretKeyRef");
                            let r = obj(f.get("secretKeyRef").unwrap(), &rat);
                            r.keys(&["name", "key", "optional"], &[]);
                            EnvSource::SecretKey {
                                name: r.req_str("name"),
                                key: r.req_str("key"),
                                optional: r.bool("optional"),
                            }
                        }
                    }
                    (None, None) => EnvSource::Value(String::new()),
                    _ => panic!("{eat}: both value and valueFrom"),
                };
                EnvVar { name, source }
            })
            .collect();
        let mounts = c
            .list("volumeMounts")
            .iter()
            .enumerate()
            .map(|(i, mv)| {
                let mat = format!("{at}.volumeMounts[{i}]");
                let m = obj(mv, &mat);
                m.keys(
                    &[
                        "name",
                        "mountPath",
                        "readOnly",
                        "subPath",
                        "mountPropagation",
                    ],
                    &[],
                );
                let propagation = m.str("mountPropagation");
                assert!(
                    matches!(
                        propagation.as_deref(),
                        None | Some("None" | "HostToContainer")
                    ),
                    "{mat}.mountPropagation: {propagation:?} needs a privileged container"
                );
                Mount {
                    volume: m.req_str("name"),
                    path: m.req_str("mountPath"),
                    read_only: m.bool("readOnly"),
                    sub_path: m.str("subPath"),
                    host_to_container: propagation.as_deref() == Some("HostToContainer"),
                }
            })
            .collect();
        let sat = format!("{at}.securityContext");
        let mut container = Container {
            name: c.req_str("name"),
            image: c.str("image").unwrap_or_default(),
            command: c.strings("command"),
            args: c.strings("args").unwrap_or_default(),
            env,
            mounts,
            privileged: false,
            cap_drop: Vec::new(),
            cap_add: Vec::new(),
            read_only_root: false,
            no_new_privileges: false,
            run_as_user: None,
            seccomp: None,
            readiness: None,
            liveness: None,
            memory_limit: None,
            cpu_limit: None,
            working_dir: c.str("workingDir"),
        };
        if let Some(sc) = c.get("securityContext") {
            let s = obj(sc, &sat);
            s.keys(
                &[
                    "privileged",
                    "capabilities",
                    "readOnlyRootFilesystem",
                    "allowPrivilegeEscalation",
                    "runAsUser",
                    "runAsNonRoot",
                    "seccompProfile",
                ],
                &[],
            );
            container.privileged = s.bool("privileged");
            container.read_only_root = s.bool("readOnlyRootFilesystem");
            container.no_new_privileges = s.get("allowPrivilegeEscalation") == Some(&false.into());
            container.run_as_user = s.u64("runAsUser");
            if s.bool("runAsNonRoot") {
                assert!(
                    container.run_as_user.is_some_and(|u| u != 0),
                    "{sat}.runAsNonRoot: without a non-zero runAsUser the image's user \
                     (root) would be refused"
                );
            }
            if let Some(caps) = s.get("capabilities") {
                let cat = format!("{sat}.capabilities");
                let caps = obj(caps, &cat);
                caps.keys(&["add", "drop"], &[]);
                container.cap_add = caps.strings("add").unwrap_or_default();
                container.cap_drop = caps.strings("drop").unwrap_or_default();
            }
            if let Some(sp) = s.get("seccompProfile") {
                let pat = format!("{sat}.seccompProfile");
                let sp = obj(sp, &pat);
                sp.keys(&["type"], &[]);
                container.seccomp = sp.str("type");
            }
        }
        if let Some(r) = c.get("readinessProbe") {
            let rat = format!("{at}.readinessProbe");
            container.readiness = Some(http_probe(obj(r, &rat), &ports));
        }
        if let Some(r) = c.get("livenessProbe") {
            let rat = format!("{at}.livenessProbe");
            container.liveness = Some(http_probe(obj(r, &rat), &ports));
        }
        if let Some(r) = c.get("resources") {
            let rat = format!("{at}.resources");
            let r = obj(r, &rat);
            // Requests only weigh in scheduling.
            r.keys(&["limits"], &["requests"]);
            if let Some(l) = r.get("limits") {
                let lat = format!("{rat}.limits");
                let l = obj(l, &lat);
                l.keys(&["memory", "cpu"], &[]);
                container.memory_limit = l.str("memory");
                container.cpu_limit = l.str("cpu");
            }
        }
        container
    }

    fn parse_volume(at: &str, v: &Value) -> Volume {
        let o = obj(v, at);
        o.keys(
            &["name", "hostPath", "configMap", "secret", "emptyDir"],
            &[],
        );
        let name = o.req_str("name");
        assert_eq!(o.map.len(), 2, "{at}: one volume source");
        let source = if let Some(h) = o.get("hostPath") {
            let hat = format!("{at}.hostPath");
            let h = obj(h, &hat);
            h.keys(&["path", "type"], &[]);
            let kind = match h.str("type").unwrap_or_default().as_str() {
                "" => HostPathType::Unset,
                "DirectoryOrCreate" => HostPathType::DirectoryOrCreate,
                "Directory" => HostPathType::Directory,
                "FileOrCreate" => HostPathType::FileOrCreate,
                "File" => HostPathType::File,
                "CharDevice" => HostPathType::CharDevice,
                other => panic!("{hat}.type: {other} is not handled"),
            };
            let path = h.req_str("path");
            assert!(path.starts_with('/'), "{hat}.path: not absolute: {path}");
            VolumeSource::HostPath { path, kind }
        } else if let Some(c) = o.get("configMap") {
            let cat = format!("{at}.configMap");
            let c = obj(c, &cat);
            c.keys(&["name", "items", "defaultMode"], &[]);
            VolumeSource::ConfigMap {
                name: c.req_str("name"),
                items: key_to_paths(c),
                default_mode: c.u64("defaultMode").unwrap_or(0o644) as u32,
            }
        } else if let Some(s) = o.get("secret") {
            let sat = format!("{at}.secret");
            let s = obj(s, &sat);
            s.keys(&["secretName", "items", "defaultMode"], &[]);
            VolumeSource::Secret {
                name: s.req_str("secretName"),
                items: key_to_paths(s),
                default_mode: s.u64("defaultMode").unwrap_or(0o644) as u32,
            }
        } else {
            let eat = format!("{at}.emptyDir");
            let e = o.get("emptyDir").unwrap();
            if let Value::Object(_) = e {
                obj(e, &eat).keys(&[], &[]);
            }
            VolumeSource::EmptyDir
        };
        Volume { name, source }
    }

    /// The names of the Secrets the template reads (volumes and env).
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .volumes
            .iter()
            .filter_map(|v| match &v.source {
                VolumeSource::Secret { name, .. } => Some(name.clone()),
                _ => None,
            })
            .chain(self.container.env.iter().filter_map(|e| match &e.source {
                EnvSource::SecretKey { name, .. } => Some(name.clone()),
                _ => None,
            }))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The container's environment on `node`, resolved as the kubelet does: field
    /// references, ConfigMap and Secret keys, then `$(VAR)` expanded from the
    /// variables before it.
    pub fn env(
        &self,
        manifest: &Manifest,
        secrets: &Secrets,
        node: &NodeHost,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (i, e) in self.container.env.iter().enumerate() {
            let at = format!("{}: env[{i}] {}", self.at, e.name);
            let value = match &e.source {
                EnvSource::Value(v) => Some(expand(v, &out)),
                EnvSource::Field(path) => Some(match path.as_str() {
                    "spec.nodeName" => node.name.clone(),
                    // hostNetwork: the pod's address is the node's.
                    "status.hostIP" | "status.podIP" => node.host_ip.clone(),
                    "metadata.namespace" => self.namespace.clone(),
                    "metadata.name" => format!("{}-{}", self.name, node.name),
                    other => panic!("{at}: fieldRef {other} is not handled"),
                }),
                EnvSource::ConfigMapKey {
                    name,
                    key,
                    optional,
                } => match manifest.config(name, key) {
                    Some(v) => Some(v.to_string()),
                    None if *optional => None,
                    None => panic!("{at}: ConfigMap {name} has no key {key} in the manifest"),
                },
                EnvSource::SecretKey {
                    name,
                    key,
                    optional,
                } => match secrets.get(name, key) {
                    Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                    None if *optional => None,
                    None => panic!("{at}: the test gives no Secret {name} with key {key}"),
                },
            };
            if let Some(v) = value {
                out.retain(|(k, _)| k != &e.name);
                out.push((e.name.clone(), v));
            }
        }
        out
    }

    /// The `podman run` arguments (after `podman <global flags>`) that run this pod
    /// on `node` from `image` as container `name`: detached, in the node's network
    /// namespace, with the template's capabilities, mounts, devices, environment,
    /// command and arguments. Writes the ConfigMap and Secret volumes' files under
    /// the node's directory first.
    pub fn podman_run(
        &self,
        manifest: &Manifest,
        secrets: &Secrets,
        node: &NodeHost,
        image: &str,
        name: &str,
    ) -> Vec<String> {
        let c = &self.container;
        let mut a: Vec<String> = [
            "run",
            "-d",
            "--pull",
            "never",
            "--name",
            name,
            "--network",
            &format!("ns:/run/netns/{}", node.netns),
            // Pinned below the machine's hard limits: runc cannot raise them without
            // CAP_SYS_RESOURCE (see cni/tests/podman.rs).
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=32768:32768",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut flag = |f: &str, v: &str| {
            a.push(f.to_string());
            a.push(v.to_string());
        };
        if c.privileged {
            flag("--privileged=true", "--cap-add=all");
        }
        for cap in &c.cap_drop {
            flag("--cap-drop", &cap.to_lowercase());
        }
        for cap in &c.cap_add {
            flag("--cap-add", cap);
        }
        if c.read_only_root {
            flag("--read-only=true", "--read-only-tmpfs=true");
        }
        if c.no_new_privileges {
            flag("--security-opt", "no-new-privileges");
        }
        if let Some(u) = c.run_as_user {
            flag("--user", &u.to_string());
        }
        // Kubernetes runs containers Unconfined unless the pod asks for a profile.
        match c.seccomp.as_deref() {
            None | Some("Unconfined") => flag("--security-opt", "seccomp=unconfined"),
            Some("RuntimeDefault") => {}
            Some(other) => panic!("{}: seccompProfile {other} is not handled", self.at),
        }
        if let Some(m) = &c.memory_limit {
            flag("--memory", &kube_memory(m).to_string());
        }
        if let Some(cpu) = &c.cpu_limit {
            flag("--cpus", &kube_cpu(cpu));
        }
        if let Some(w) = &c.working_dir {
            flag("--workdir", w);
        }
        let pod_dir = node.dir.join("pods").join(name);
        let _ = std::fs::remove_dir_all(&pod_dir);
        for m in &c.mounts {
            let v = self
                .volumes
                .iter()
                .find(|v| v.name == m.volume)
                .expect("checked at parse");
            let at = format!("{}: volume {}", self.at, v.name);
            let src: PathBuf = match &v.source {
                VolumeSource::HostPath { path, kind } => {
                    if *kind == HostPathType::CharDevice {
                        assert_eq!(
                            path, "/dev/net/tun",
                            "{at}: only the TUN device is passed through"
                        );
                        assert!(m.sub_path.is_none() && !m.read_only, "{at}: device mount");
                        flag("--device", &format!("{path}:{}", m.path));
                        continue;
                    }
                    node.materialize_host_path(path, *kind)
                }
                VolumeSource::ConfigMap {
                    name: cm,
                    items,
                    default_mode,
                } => {
                    let data = manifest
                        .config_maps
                        .get(cm)
                        .unwrap_or_else(|| panic!("{at}: no ConfigMap {cm} in the manifest"));
                    let data: BTreeMap<String, Vec<u8>> = data
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                        .collect();
                    write_volume(&pod_dir.join(&v.name), &data, items, *default_mode, &at)
                }
                VolumeSource::Secret {
                    name: s,
                    items,
                    default_mode,
                } => {
                    let data = secrets
                        .0
                        .get(s)
                        .unwrap_or_else(|| panic!("{at}: the test gives no Secret {s}"));
                    write_volume(&pod_dir.join(&v.name), data, items, *default_mode, &at)
                }
                VolumeSource::EmptyDir => {
                    let d = pod_dir.join(&v.name);
                    std::fs::create_dir_all(&d).unwrap();
                    d
                }
            };
            let src = match &m.sub_path {
                Some(sp) => src.join(sp),
                None => src,
            };
            // ConfigMap and Secret volumes are always read-only in Kubernetes.
            let ro = m.read_only
                || matches!(
                    v.source,
                    VolumeSource::ConfigMap { .. } | VolumeSource::Secret { .. }
                );
            // `m.host_to_container` is not passed on: a host directory here is a
            // plain test directory with no mounts below it to propagate.
            let spec = format!(
                "{}:{}{}",
                src.display(),
                m.path,
                if ro { ":ro" } else { "" }
            );
            flag("-v", &spec);
        }
        let env = self.env(manifest, secrets, node);
        for (k, v) in &env {
            flag("-e", &format!("{k}={v}"));
        }
        if let Some(cmd) = &c.command {
            let cmd: Vec<String> = cmd.iter().map(|s| expand(s, &env)).collect();
            flag("--entrypoint", &serde_json::to_string(&cmd).unwrap());
        }
        a.push(image.to_string());
        a.extend(c.args.iter().map(|s| expand(s, &env)));
        a
    }

    /// The node path of the hostPath volume mounted at `mount_path` in the container
    /// (e.g. the daemon's run dir `/run/overlayd`), if one is.
    pub fn host_path_of(&self, mount_path: &str) -> Option<String> {
        let m = self
            .container
            .mounts
            .iter()
            .find(|m| m.path.trim_end_matches('/') == mount_path.trim_end_matches('/'))?;
        let v = self.volumes.iter().find(|v| v.name == m.volume)?;
        match &v.source {
            VolumeSource::HostPath { path, .. } => Some(match &m.sub_path {
                Some(sp) => format!("{}/{sp}", path.trim_end_matches('/')),
                None => path.clone(),
            }),
            _ => None,
        }
    }

    /// The readiness probe's URL parts on `node`: (`host:port`, path).
    pub fn readiness_url(&self, node: &NodeHost) -> (String, String) {
        let p = self.container.readiness.as_ref().unwrap_or_else(|| {
            panic!(
                "{}: no readinessProbe, so nothing says when the pod is ready",
                self.at
            )
        });
        probe_url(p, node)
    }

    /// The liveness probe's URL parts on `node`, if it has one.
    pub fn liveness_url(&self, node: &NodeHost) -> Option<(String, String)> {
        self.container.liveness.as_ref().map(|p| probe_url(p, node))
    }
}

fn probe_url(p: &HttpProbe, node: &NodeHost) -> (String, String) {
    let host = p.host.clone().unwrap_or_else(|| node.host_ip.clone());
    (format!("{host}:{}", p.port), p.path.clone())
}

/// Writes a ConfigMap's or Secret's `data` into `dir` as Kubernetes lays out a
/// volume: each of `items` (or every key) as a file with its mode; returns `dir`.
fn write_volume(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: &[KeyToPath],
    default_mode: u32,
    at: &str,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let all: Vec<KeyToPath>;
    let items = if items.is_empty() {
        all = data
            .keys()
            .map(|k| KeyToPath {
                key: k.clone(),
                path: k.clone(),
                mode: None,
            })
            .collect();
        &all
    } else {
        items
    };
    for it in items {
        let body = data
            .get(&it.key)
            .unwrap_or_else(|| panic!("{at}: no key {} in its source", it.key));
        assert!(
            !it.path.starts_with('/') && !it.path.contains(".."),
            "{at}: item path {}",
            it.path
        );
        let file = dir.join(&it.path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, body).unwrap();
        let mode = it.mode.unwrap_or(default_mode);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    dir.to_path_buf()
}

/// Expands `$(VAR)` from `env` as the kubelet does: unknown references stay as they
/// are, `$$` is a literal `$`.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(j) => {
                    let name = &inner[..j];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[j + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A Kubernetes memory quantity (`50Mi`, `1G`, `128974848`) in bytes.
fn kube_memory(q: &str) -> u64 {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, mul) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("memory quantity") * mul;
        }
    }
    q.parse().expect("memory quantity")
}

/// A Kubernetes CPU quantity (`100m`, `1`) as podman's `--cpus`.
fn kube_cpu(q: &str) -> String {
    match q.strip_suffix('m') {
        Some(m) => format!("{:.3}", m.parse::<f64>().expect("cpu quantity") / 1000.0),
        None => q.to_string(),
    }
}

// ---------------------------------------------------------------------------------
// Secrets

/// The Secrets the test creates, as `kubectl create secret generic` would: name ->
/// key -> bytes.
#[derive(Debug, Clone, Default)]
pub struct Secrets(pub BTreeMap<String, BTreeMap<String, Vec<u8>>>);

impl Secrets {
    /// Adds Secret `name` with `key` = `value`.
    pub fn insert(&mut self, name: &str, key: &str, value: &[u8]) {
        self.0
            .entry(name.to_string())
            .or_default()
            .insert(key.to_string(), value.to_vec());
    }

    /// Key `key` of Secret `name`.
    pub fn get(&self, name: &str, key: &str) -> Option<&[u8]> {
        self.0.get(name)?.get(key).map(Vec::as_slice)
    }
}

// ---------------------------------------------------------------------------------
// A node's host

/// A test node as a host: its name, underlay address, network namespace and a
/// directory standing for its filesystem root.
#[derive(Debug, Clone)]
pub struct NodeHost {
    /// Its node name (`spec.nodeName`).
    pub name: String,
    /// Its address (`status.hostIP`).
    pub host_ip: String,
    /// Its network namespace (under /run/netns).
    pub netns: String,
    /// `<dir>/<name>`: its host root (`host/`), pod volumes (`pods/`).
    pub dir: PathBuf,
}

/// The CNI directories a container runtime reads on a host (containerd's and CRI-O's
/// defaults, which kubelet setups keep).
pub const HOST_CNI_BIN_DIR: &str = "/opt/cni/bin";
/// See [`HOST_CNI_BIN_DIR`].
pub const HOST_CNI_CONF_DIR: &str = "/etc/cni/net.d";

impl NodeHost {
    /// Node `name` at `host_ip` in namespace `netns`, its files under `dir/<name>`.
    pub fn new(dir: &Path, name: &str, host_ip: &str, netns: &str) -> NodeHost {
        let node = NodeHost {
            name: name.to_string(),
            host_ip: host_ip.to_string(),
            netns: netns.to_string(),
            dir: dir.join(name),
        };
        std::fs::create_dir_all(node.root()).unwrap();
        node
    }

    /// The directory standing for the host's `/`.
    pub fn root(&self) -> PathBuf {
        self.dir.join("host")
    }

    /// Host path `path` (absolute) inside [`NodeHost::root`].
    pub fn path(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }

    fn materialize_host_path(&self, path: &str, kind: HostPathType) -> PathBuf {
        let p = self.path(path);
        match kind {
            HostPathType::FileOrCreate | HostPathType::File => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                if !p.exists() {
                    std::fs::write(&p, b"").unwrap();
                }
            }
            _ => std::fs::create_dir_all(&p).unwrap(),
        }
        p
    }

    /// The host's CNI bin dir.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.path(HOST_CNI_BIN_DIR)
    }

    /// The host's CNI conf dir.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.path(HOST_CNI_CONF_DIR)
    }

    /// The network config a runtime on this host uses: the first `.conflist`,
    /// `.conf` or `.json` in the conf dir by name, as libcni picks it; its path and
    /// content.
    pub fn conflist(&self) -> Option<(PathBuf, Value)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.cni_conf_dir())
            .ok()?
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect();
        files.sort();
        let path = files.into_iter().next()?;
        let text = std::fs::read_to_string(&path).ok()?;
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}: {text}", path.display()));
        Some((path, v))
    }

    /// The config libcni hands the first plugin of `conflist`: that plugin with the
    /// list's `name` and `cniVersion`, and `prevResult` when given.
    pub fn first_plugin_conf(conflist: &Value, prev: Option<&Value>) -> Value {
        let mut c = conflist["plugins"][0].clone();
        let m = c.as_object_mut().expect("plugins[0] is an object");
        m.insert("name".into(), conflist["name"].clone());
        m.insert("cniVersion".into(), conflist["cniVersion"].clone());
        if let Some(p) = prev {
            m.insert("prevResult".into(), p.clone());
        }
        c
    }

    /// Runs plugin `ty` from this host's CNI bin dir as the host's runtime does: in
    /// its network namespace, and in a private mount namespace where this host's
    /// `/run/overlayd`, `/var/lib/cni` and `/var/log` are the real paths (tmpfs over
    /// `/run`, `/var/lib` and `/var/log`, then binds; `/run/netns` stays visible).
    /// Nothing outside the test's directories changes.
    pub fn exec_cni(
        &self,
        ty: &str,
        command: &str,
        container_id: &str,
        netns_path: &str,
        conf: &Value,
    ) -> PluginOutput {
        const SCRIPT: &str = r#"set -e
H=$1; VIEW=$2; PLUGIN=$3
mount --rbind /run/netns "$VIEW"
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/lib
mount -t tmpfs tmpfs /var/log
mkdir -p /run/netns /run/overlayd /var/lib/cni
mount --rbind "$VIEW" /run/netns
mount --bind "$H/run/overlayd" /run/overlayd
mount --bind "$H/var/lib/cni" /var/lib/cni
mount --bind "$H/var/log" /var/log
exec "$PLUGIN"
"#;
        let view = self.dir.join("netns-view");
        for d in [
            view.clone(),
            self.path("/run/overlayd"),
            self.path("/var/lib/cni"),
            self.path("/var/log"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        let bin_dir = self.cni_bin_dir();
        let plugin = bin_dir.join(ty);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(["unshare", "-m", "--propagation", "private"])
            .args(["sh", "-c", SCRIPT, "sh"])
            .arg(self.root())
            .arg(&view)
            .arg(&plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns_path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec unshare sh");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        PluginOutput::from(child.wait_with_output().unwrap())
    }

    /// Files left in the IPAM store of network `net` (under the host's
    /// `/var/lib/cni/overlayd`), other than its lock and cursor files.
    pub fn ipam_files(&self, data_dir: &str, net: &str) -> Vec<String> {
        let dir = self.path(data_dir).join(net);
        match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| !matches!(n.as_str(), "lock" | "last_reserved" | "last_reserved_v6"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------
// The image

/// An image archive built by `scripts/image.sh`.
#[derive(Debug, Clone)]
pub struct Image {
    /// `current`, `next` or `skew`.
    pub variant: String,
    /// Its reference once loaded (`localhost/overlayd:0.1.0`).
    pub reference: String,
    /// The OCI archive.
    pub archive: PathBuf,
    /// Its digest.
    pub digest: String,
    /// Its size, as the script prints it.
    pub size: String,
}

static IMAGES: Mutex<BTreeMap<String, Image>> = Mutex::new(BTreeMap::new());

/// The image of `variant`, built by `scripts/image.sh --variant <variant>` once per
/// test binary (the script caches and locks by itself). Its progress goes to stderr;
/// the last line of its stdout is `image: <reference> <archive> <digest> <size>`.
pub fn image(variant: &str) -> Image {
    let mut images = IMAGES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = images.get(variant) {
        return i.clone();
    }
    let script = repo_root().join("scripts/image.sh");
    assert!(
        script.is_file(),
        "{} is missing: it builds the image these tests run",
        script.display()
    );
    let start = std::time::Instant::now();
    let out = Command::new(&script)
        .args(["--variant", variant])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/image.sh --variant {variant} failed ({}):\n{stdout}",
        out.status
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let f: Vec<&str> = last
        .strip_prefix("image: ")
        .unwrap_or_else(|| panic!("image.sh's last line is not `image: ...`: {last:?}"))
        .split_whitespace()
        .collect();
    assert_eq!(f.len(), 4, "image.sh's last line: {last:?}");
    let img = Image {
        variant: variant.to_string(),
        reference: f[0].to_string(),
        archive: repo_root().join(f[1]),
        digest: f[2].to_string(),
        size: f[3].to_string(),
    };
    assert!(
        img.archive.is_file(),
        "{}: no archive",
        img.archive.display()
    );
    println!(
        "image {variant}: {} {} {} size {} (image.sh took {:.1?})",
        img.reference,
        img.archive.display(),
        img.digest,
        img.size,
        start.elapsed()
    );
    images.insert(variant.to_string(), img.clone());
    img
}

// ---------------------------------------------------------------------------------
// Podman

/// The storage driver of the throwaway stores: vfs needs no mounts of its own, so
/// removing the directory removes everything.
pub const STORAGE_DRIVER: &str = "vfs";

/// A podman with a throwaway store under its own temp dir (root, runroot, tmp dir,
/// events log, CNI config dir, runc's state dir); on drop its containers and images
/// are removed, then the directory. Nothing outside the directory is written: runc
/// runs through a wrapper that gives it `--root` there (podman 4.3 has no setting for
/// it, and runc's default is /run/runc), and `podman load` runs in a private mount
/// namespace with a tmpfs over /var/lib, where containers/image would otherwise keep
/// its blob-info cache (/var/lib/containers/cache).
pub struct Podman {
    dir: tempfile::TempDir,
}

/// The first `name` on the standard root PATH.
fn which(name: &str) -> PathBuf {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| p.is_file())
    .unwrap_or_else(|| panic!("{name} is not installed"))
}

impl Podman {
    /// A podman on a new empty store.
    pub fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("overlayd-podman-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["root", "runroot", "tmp", "cni", "runc", "bin"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let wrapper = d.join("bin/runc");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec {} --root {}/runc \"$@\"\n",
                which("runc").display(),
                d.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{d}/cni\"\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\nevents_logfile_path = \"{d}/events.log\"\n\
                 tmp_dir = \"{d}/tmp\"\nvolume_path = \"{d}/volumes\"\n",
                d = d.display()
            ),
        )
        .unwrap();
        Podman { dir }
    }

    /// The `podman` global flags for this store.
    fn global_args(&self) -> Vec<String> {
        let d = self.dir.path().display().to_string();
        [
            "--root",
            &format!("{d}/root"),
            "--runroot",
            &format!("{d}/runroot"),
            "--storage-driver",
            STORAGE_DRIVER,
            "--tmpdir",
            &format!("{d}/tmp"),
            "--events-backend",
            "file",
            "--network-backend",
            "cni",
            "--cni-config-dir",
            &format!("{d}/cni"),
            "--runtime",
            &format!("{d}/bin/runc"),
            "--cgroup-manager",
            "cgroupfs",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// A `podman` command on this store.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.args(self.global_args())
            .args(args)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .stdin(Stdio::null());
        c
    }

    /// Runs `podman <args>`; its success and its output (stdout, then stderr).
    pub fn try_run(&self, args: &[&str]) -> (bool, String) {
        let out = self.output(args);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Runs `podman <args>`; its raw output.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("podman is installed")
    }

    /// Runs `podman <args>`, panicking with its output if it fails; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Loads `image`'s archive into the store and checks its reference is there.
    pub fn load(&self, image: &Image) {
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /var/lib && exec \"$@\"")
            .arg("sh")
            .arg("podman")
            .args(self.global_args())
            .args(["load", "-q", "-i"])
            .arg(&image.archive)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("unshare podman load");
        assert!(
            out.status.success(),
            "podman load {}: {}{}",
            image.archive.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.ok(&["image", "exists", &image.reference]);
    }

    /// Runs `image` once with `args` (no network, removed after) and returns stdout.
    pub fn run_once(&self, image: &str, args: &[&str]) -> String {
        let mut a = vec!["run", "--rm", "--pull", "never", "--network", "none"];
        a.extend([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=32768:32768",
        ]);
        a.push(image);
        a.extend_from_slice(args);
        self.ok(&a)
    }

    /// `podman logs <name>` (stdout and stderr).
    pub fn logs(&self, name: &str) -> String {
        self.try_run(&["logs", name]).1
    }

    /// `podman exec <name> <args>`.
    pub fn exec(&self, name: &str, args: &[&str]) -> Output {
        let mut a = vec!["exec", name];
        a.extend_from_slice(args);
        self.output(&a)
    }

    /// Whether container `name` runs.
    pub fn running(&self, name: &str) -> bool {
        let (ok, out) = self.try_run(&["inspect", "--format", "{{.State.Running}}", name]);
        ok && out.trim() == "true"
    }

    /// `podman stop -t <grace> <name>`: SIGTERM, SIGKILL after `grace` seconds.
    pub fn stop(&self, name: &str, grace_secs: u64) {
        self.ok(&["stop", "-t", &grace_secs.to_string(), name]);
    }

    /// `podman rm -f <name>`.
    pub fn rm(&self, name: &str) {
        self.ok(&["rm", "-f", "-t", "0", name]);
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for Podman {
    fn default() -> Podman {
        Podman::new()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command(&["rm", "-af", "-t", "0"]).output();
        let _ = self.command(&["rmi", "-af"]).output();
        // Mounts podman may have left under the store (a container's shm), innermost
        // first, so that the directory can go.
        let prefix = format!("{}/", self.dir.path().display());
        let mut left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in left {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
    }
}

// ---------------------------------------------------------------------------------
// HTTP

/// `GET path` over HTTP/1.0 to `addr` from inside `ns`: (status, body), or None when
/// nothing answers within a second.
pub fn try_http_get(ns: &Netns, addr: &str, path: &str) -> Option<(u16, String)> {
    ns.run(|| {
        let sa: std::net::SocketAddr = addr.parse().ok()?;
        let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_scalars_as_kubernetes_reads_them() {
        let docs = parse_yaml(
            "a: 0400\nb: \"0400\"\nc: 30\nd: true\ne: x\nf: ~\ng: [1, two]\n---\n---\nh: 1.5\n",
            "t",
        );
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert_eq!(docs[0]["a"], 256);
        assert_eq!(docs[0]["b"], "0400");
        assert_eq!(docs[0]["c"], 30);
        assert_eq!(docs[0]["d"], true);
        assert_eq!(docs[0]["e"], "x");
        assert!(docs[0]["f"].is_null());
        assert_eq!(docs[0]["g"], serde_json::json!([1, "two"]));
        assert_eq!(docs[1]["h"], 1.5);
    }

    #[test]
    fn env_expansion_as_the_kubelet_does_it() {
        let env = vec![("HOST_IP".to_string(), "198.18.0.1".to_string())];
        assert_eq!(expand("$(HOST_IP):9469", &env), "198.18.0.1:9469");
        assert_eq!(expand("$(NOPE):1", &env), "$(NOPE):1");
        assert_eq!(expand("$$(HOST_IP)", &env), "$(HOST_IP)");
        assert_eq!(expand("a$b", &env), "a$b");
    }

    const DS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data:
  peers: "192.0.2.1"
  app.toml: |
    a = 1
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds, namespace: ns}
spec:
  template:
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 7
      containers:
        - name: c
          image: x
          args: ["--listen=$(HOST_IP):1", "$(NODE)"]
          env:
            - name: NODE
              valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
            - name: HOST_IP
              valueFrom: {fieldRef: {fieldPath: status.hostIP}}
            - name: PEERS
              valueFrom: {configMapKeyRef: {name: cfg, key: peers}}
          readinessProbe: {httpGet: {path: /healthz, port: web}}
          ports: [{name: web, containerPort: 8080}]
          securityContext:
            capabilities: {drop: [ALL], add: [NET_ADMIN]}
          volumeMounts:
            - {name: conf, mountPath: /etc/app, readOnly: true}
            - {name: key, mountPath: /etc/key}
            - {name: data, mountPath: /var/lib/app}
            - {name: tun, mountPath: /dev/net/tun}
      volumes:
        - {name: conf, configMap: {name: cfg, items: [{key: app.toml, path: app.toml}]}}
        - {name: key, secret: {secretName: k, defaultMode: 0400}}
        - {name: data, hostPath: {path: /var/lib/app, type: DirectoryOrCreate}}
        - {name: tun, hostPath: {path: /dev/net/tun, type: CharDevice}}
"#;

    fn manifest(text: &str, dir: &Path) -> Manifest {
        let path = dir.join("m.yaml");
        std::fs::write(&path, text).unwrap();
        Manifest::load(&[path])
    }

    #[test]
    fn a_pod_template_becomes_a_podman_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manifest(DS, dir.path());
        assert_eq!(m.set_config_key("peers", "198.18.0.1,198.18.0.2"), "cfg");
        let t = m.daemonset("ds");
        assert_eq!(t.grace_secs, 7);
        assert_eq!(t.secret_names(), ["k"]);
        let mut secrets = Secrets::default();
        secrets.insert("k", "key", b"secret");
        let node = NodeHost::new(dir.path(), "n1", "198.18.0.1", "ovn1x1");
        let a = t.podman_run(&m, &secrets, &node, "img:1", "c-n1").join(" ");
        let d = dir.path().display();
        for want in [
            "--network ns:/run/netns/ovn1x1",
            "--cap-drop all --cap-add NET_ADMIN",
            &format!("-v {d}/n1/pods/c-n1/conf:/etc/app:ro"),
            &format!("-v {d}/n1/pods/c-n1/key:/etc/key:ro"),
            &format!("-v {d}/n1/host/var/lib/app:/var/lib/app "),
            "--device /dev/net/tun:/dev/net/tun",
            "-e NODE=n1 -e HOST_IP=198.18.0.1 -e PEERS=198.18.0.1,198.18.0.2",
            "img:1 --listen=198.18.0.1:1 n1",
        ] {
            assert!(a.contains(want), "{want:?} not in {a}");
        }
        let key = dir.path().join("n1/pods/c-n1/key/key");
        assert_eq!(std::fs::read(&key).unwrap(), b"secret");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("n1/pods/c-n1/conf/app.toml")).unwrap(),
            "a = 1\n"
        );
        assert_eq!(
            t.readiness_url(&node),
            ("198.18.0.1:8080".to_string(), "/healthz".to_string())
        );
        assert_eq!(
            t.host_path_of("/var/lib/app").as_deref(),
            Some("/var/lib/app")
        );
    }

    #[test]
    #[should_panic(expected = "containers[0].lifecycle: not handled")]
    fn an_unknown_field_fails() {
        let dir = tempfile::tempdir().unwrap();
        let text = DS.replace(
            "          image: x\n",
            "          image: x\n          lifecycle: {}\n",
        );
        manifest(&text, dir.path()).daemonset("ds");
    }

    #[test]
    #[should_panic(expected = "volumes[0].nfs: not handled")]
    fn an_unknown_volume_type_fails() {
        let dir = tempfile::tempdir().unwrap();
        let text = DS.replace(
            "        - {name: conf, configMap",
            "        - {name: nfs, nfs: {server: x, path: /}}\n        - {name: conf, configMap",
        );
        manifest(&text, dir.path()).daemonset("ds");
    }

    #[test]
    fn quantities() {
        assert_eq!(kube_memory("50Mi"), 50 << 20);
        assert_eq!(kube_cpu("100m"), "0.100");
    }
}
