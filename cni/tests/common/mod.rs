//! Shared helpers for the root-only netns tests: namespace guards, a stand-in for the
//! overlayd daemon (bridge + node.json), and a tiny libcni that runs plugin chains.
//!
//! Everything a test creates lives in namespaces it names uniquely (pid + counter) and is
//! removed by `Drop`, including when the test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

/// The plugin binary under test.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_overlayd-cni");
/// Where Debian's containernetworking-plugins live.
pub const REF_PLUGINS: &str = "/usr/lib/cni";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short name: `ov<prefix><pid>x<n>`, the pattern scripts/test.sh checks for
/// leftover namespaces (`^ov[a-z]*[0-9]+x[0-9]+`).
pub fn unique(prefix: &str) -> String {
    format!(
        "ov{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panicking with its stderr if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and reports whether it succeeded.
pub fn try_sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    /// The name (`ip netns` name).
    pub name: String,
}

impl Netns {
    /// Creates `ip netns add <unique>`.
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        Netns { name }
    }

    /// `/var/run/netns/<name>`: what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace and returns its stdout (panics on failure).
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs a command inside the namespace; true if it succeeded.
    pub fn try_exec(&self, args: &[&str]) -> bool {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        try_sh(&full)
    }

    /// One ping with a short timeout.
    pub fn ping(&self, dst: &str) -> bool {
        self.try_exec(&["ping", "-c", "1", "-W", "2", dst])
    }

    /// Names of the links of `kind` (e.g. "veth").
    pub fn links(&self, kind: &str) -> Vec<String> {
        let out = sh(&["ip", "-n", &self.name, "-o", "link", "show", "type", kind]);
        out.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/<unique>`.
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A stand-in for an overlayd node: a namespace with bridge `ovl0` holding the gateway,
/// ip_forward on, and `node.json` in a temp run-dir.
pub struct Node {
    /// The node namespace (the plugin runs inside it).
    pub ns: Netns,
    /// Run-dir with node.json and data-dir with the IPAM store, under one temp dir.
    pub dir: TempDir,
    /// The node subnet, e.g. "10.244.1.0/24".
    pub subnet: String,
    /// The gateway, e.g. "10.244.1.1".
    pub gateway: String,
}

impl Node {
    /// Creates node `n` with subnet `10.244.<n>.0/<prefix>`.
    pub fn new(n: u8, prefix: u8) -> Self {
        let ns = Netns::new("cnode");
        let dir = TempDir::new("cninode");
        let subnet = format!("10.244.{n}.0/{prefix}");
        let gateway = format!("10.244.{n}.1");
        ns.exec(&["ip", "link", "add", "ovl0", "type", "bridge"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{gateway}/{prefix}"),
            "dev",
            "ovl0",
        ]);
        ns.exec(&["ip", "link", "set", "ovl0", "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let node = Node {
            ns,
            dir,
            subnet,
            gateway,
        };
        std::fs::create_dir_all(node.run_dir()).unwrap();
        node.write_node_json();
        node
    }

    /// A node namespace and temp dir only: for a real overlayd daemon to set up (it creates
    /// the bridge and writes node.json into [`Node::run_dir`]).
    pub fn bare(n: u8, prefix: u8) -> Self {
        let ns = Netns::new("cnode");
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        Node {
            ns,
            dir: TempDir::new("cninode"),
            subnet: format!("10.244.{n}.0/{prefix}"),
            gateway: format!("10.244.{n}.1"),
        }
    }

    /// Writes node.json the way the daemon does (temp file + rename).
    pub fn write_node_json(&self) {
        let body = json!({"node_name": self.ns.name, "subnet": self.subnet, "gateway": self.gateway,
            "bridge": "ovl0", "mtu": 1450, "cluster_cidr": "10.244.0.0/16", "extra_future_field": true});
        let tmp = self.run_dir().join("node.json.tmp");
        std::fs::write(&tmp, body.to_string()).unwrap();
        std::fs::rename(tmp, self.run_dir().join("node.json")).unwrap();
    }

    /// The run-dir holding node.json.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.0.join("run")
    }

    /// The IPAM data-dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    /// Reserved addresses in the store of network `net`.
    pub fn reserved(&self, net: &str) -> Vec<String> {
        match std::fs::read_dir(self.data_dir().join(net)) {
            Ok(rd) => rd
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Our plugin's config (one plugin of a conflist), with `extra` merged in.
    pub fn plugin_conf(&self, extra: Value) -> Value {
        let mut c = json!({"type": "overlayd-cni", "runDir": self.run_dir(), "dataDir": self.data_dir(),
            "logFile": self.dir.0.join("cni.log"), "logLevel": "debug"});
        merge(&mut c, extra);
        c
    }

    /// Runs one plugin binary inside the node namespace, as a runtime on this node would.
    pub fn exec_plugin(&self, bin: &Path, env: &[(&str, &str)], stdin: &Value) -> PluginOutput {
        self.exec_plugin_raw(bin, env, stdin.to_string().as_bytes())
    }

    /// Starts the plugin in the node namespace without waiting for it.
    pub fn spawn_plugin(&self, env: &[(&str, &str)], stdin: &Value) -> std::process::Child {
        use std::io::Write;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name, PLUGIN]);
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.to_string().as_bytes())
            .unwrap();
        child
    }

    /// Like [`Node::exec_plugin`] with raw stdin bytes.
    pub fn exec_plugin_raw(&self, bin: &Path, env: &[(&str, &str)], stdin: &[u8]) -> PluginOutput {
        use std::io::Write;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name]).arg(bin);
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        PluginOutput::from(child.wait_with_output().unwrap())
    }
}

/// What a plugin exec produced.
#[derive(Debug)]
pub struct PluginOutput {
    /// Exit code.
    pub code: i32,
    /// stdout parsed as JSON (Null when empty).
    pub json: Value,
    /// stdout verbatim.
    pub stdout: String,
    /// stderr verbatim.
    pub stderr: String,
}

impl From<Output> for PluginOutput {
    fn from(o: Output) -> Self {
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let json = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout:?}"))
        };
        PluginOutput {
            code: o.status.code().unwrap_or(-1),
            json,
            stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl PluginOutput {
    /// Panics with the reply unless the exec succeeded.
    pub fn ok(self) -> Value {
        assert_eq!(
            self.code, 0,
            "plugin failed: {} {}",
            self.stdout, self.stderr
        );
        self.json
    }

    /// The CNI error code of a failed exec.
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected failure, got {}", self.stdout);
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }
}

/// Shallow-merges `extra` into `base`.
pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
}

/// The binary for a plugin `type`.
pub fn plugin_bin(ty: &str) -> PathBuf {
    if ty == "overlayd-cni" {
        PathBuf::from(PLUGIN)
    } else {
        Path::new(REF_PLUGINS).join(ty)
    }
}

/// `CNI_PATH` with our binary's directory first, then the reference plugins.
pub fn cni_path() -> String {
    let ours = Path::new(PLUGIN).parent().unwrap().display().to_string();
    format!("{ours}:{REF_PLUGINS}")
}

/// A conflist executed the way libcni does: ADD in order passing `prevResult`, DEL in
/// reverse order, CHECK with the final result.
pub struct Chain<'a> {
    /// The node the plugins run on.
    pub node: &'a Node,
    /// `name`.
    pub name: String,
    /// `cniVersion`.
    pub version: String,
    /// The `plugins` array.
    pub plugins: Vec<Value>,
}

impl Chain<'_> {
    fn conf(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut c = plugin.clone();
        merge(
            &mut c,
            json!({"name": self.name, "cniVersion": self.version}),
        );
        if let Some(p) = prev {
            merge(&mut c, json!({"prevResult": p}));
        }
        c
    }

    fn env<'b>(
        &self,
        cmd: &'b str,
        id: &'b str,
        netns: &'b str,
        path: &'b str,
    ) -> Vec<(&'b str, &'b str)> {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path),
        ]
    }

    /// ADD through the chain; returns the final result.
    pub fn add(&self, id: &str, pod: &Netns) -> Value {
        let path = cni_path();
        let netns = pod.path();
        let mut prev: Option<Value> = None;
        for p in &self.plugins {
            let ty = p["type"].as_str().unwrap();
            let out = self.node.exec_plugin(
                &plugin_bin(ty),
                &self.env("ADD", id, &netns, &path),
                &self.conf(p, prev.as_ref()),
            );
            assert_eq!(
                out.code, 0,
                "ADD {ty} failed: {} {}",
                out.stdout, out.stderr
            );
            prev = Some(out.json);
        }
        prev.unwrap()
    }

    /// CHECK through the chain; returns the first failure, if any.
    pub fn check(&self, id: &str, pod: &Netns, result: &Value) -> Option<PluginOutput> {
        let path = cni_path();
        let netns = pod.path();
        for p in &self.plugins {
            let ty = p["type"].as_str().unwrap();
            let out = self.node.exec_plugin(
                &plugin_bin(ty),
                &self.env("CHECK", id, &netns, &path),
                &self.conf(p, Some(result)),
            );
            if out.code != 0 {
                return Some(out);
            }
        }
        None
    }

    /// DEL through the chain in reverse; panics on failure.
    pub fn del(&self, id: &str, netns: &str, result: Option<&Value>) {
        let path = cni_path();
        for p in self.plugins.iter().rev() {
            let ty = p["type"].as_str().unwrap();
            let out = self.node.exec_plugin(
                &plugin_bin(ty),
                &self.env("DEL", id, netns, &path),
                &self.conf(p, result),
            );
            assert_eq!(
                out.code, 0,
                "DEL {ty} failed: {} {}",
                out.stdout, out.stderr
            );
        }
    }
}

/// Env for a single-plugin call.
pub fn env<'a>(cmd: &'a str, id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", REF_PLUGINS),
    ]
}

/// The address (without prefix) in a result.
pub fn result_ip(r: &Value) -> String {
    r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}
