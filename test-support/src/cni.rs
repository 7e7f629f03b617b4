//! For the CNI plugin's tests: a stand-in for an overlayd host (a namespace with the
//! bridge and `node.json`, no daemon), plugin execs as a runtime does them, and a tiny
//! libcni that runs a conflist.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};

use crate::netns::Netns;

/// Where Debian's containernetworking-plugins live.
pub const REF_PLUGINS: &str = "/usr/lib/cni";

/// The plugin binaries a host runs: ours and the reference ones.
#[derive(Debug, Clone)]
pub struct CniPlugins {
    /// The overlayd-cni binary under test.
    pub ours: PathBuf,
    /// The directory of the reference plugins.
    pub reference: PathBuf,
}

impl CniPlugins {
    /// Ours at `ours`, the reference plugins in [`REF_PLUGINS`].
    pub fn new(ours: impl Into<PathBuf>) -> CniPlugins {
        CniPlugins {
            ours: ours.into(),
            reference: PathBuf::from(REF_PLUGINS),
        }
    }

    /// The binary for a plugin `type`.
    pub fn bin(&self, ty: &str) -> PathBuf {
        if ty == "overlayd-cni" {
            self.ours.clone()
        } else {
            self.reference.join(ty)
        }
    }

    /// `CNI_PATH` with our binary's directory first, then the reference plugins.
    pub fn cni_path(&self) -> String {
        let ours = self.ours.parent().unwrap().display();
        format!("{ours}:{}", self.reference.display())
    }
}

/// A stand-in for an overlayd host: a namespace with bridge `ovl0` holding the gateway,
/// ip_forward on, and `node.json` in a temp run-dir.
pub struct CniHost {
    /// The host namespace (the plugin runs inside it).
    pub ns: Netns,
    /// Run-dir with node.json and data-dir with the IPAM store, under one temp dir.
    pub dir: tempfile::TempDir,
    /// The host's subnet, e.g. "10.244.1.0/24".
    pub subnet: String,
    /// The gateway, e.g. "10.244.1.1".
    pub gateway: String,
    /// Dual-stack: the IPv6 subnet, e.g. "fd00:10:244:1::/64" (its gateway is `::1`).
    pub subnet_v6: Option<String>,
    /// The plugin binaries.
    pub plugins: CniPlugins,
}

impl CniHost {
    /// Creates host `n` with subnet `10.244.<n>.0/<prefix>`.
    pub fn new(plugins: CniPlugins, n: u8, prefix: u8) -> Self {
        let host = Self::bare(plugins, n, prefix);
        let ns = &host.ns;
        ns.exec(&["ip", "link", "add", "ovl0", "type", "bridge"]);
        let gw = format!("{}/{prefix}", host.gateway);
        ns.exec(&["ip", "addr", "add", &gw, "dev", "ovl0"]);
        ns.exec(&["ip", "link", "set", "ovl0", "up"]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        std::fs::create_dir_all(host.run_dir()).unwrap();
        host.write_node_json();
        host
    }

    /// Like [`CniHost::new`], dual-stack: the bridge also holds `fd00:10:244:<n>::1/64`
    /// (no duplicate address detection), IPv6 forwarding is on, and node.json has the
    /// IPv6 subnet (cluster `fd00:10:244::/56`).
    pub fn new_dual(plugins: CniPlugins, n: u8, prefix: u8) -> Self {
        let mut host = Self::new(plugins, n, prefix);
        let v6 = format!("fd00:10:244:{n:x}::/64");
        host.ns
            .exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let gw = format!("{}/64", host.gateway_v6_of(&v6));
        host.ns
            .exec(&["ip", "-6", "addr", "add", &gw, "dev", "ovl0", "nodad"]);
        host.subnet_v6 = Some(v6);
        host.write_node_json();
        host
    }

    /// The gateway of IPv6 subnet `v6` ("fd00:10:244:1::/64" → "fd00:10:244:1::1").
    fn gateway_v6_of(&self, v6: &str) -> String {
        format!("{}1", v6.trim_end_matches("/64"))
    }

    /// Dual-stack: the IPv6 gateway.
    pub fn gateway_v6(&self) -> Option<String> {
        self.subnet_v6.as_deref().map(|v6| self.gateway_v6_of(v6))
    }

    /// A host namespace (loopback up) and temp dir only: for a real overlayd daemon to
    /// set up (it creates the bridge and writes node.json into [`CniHost::run_dir`]).
    pub fn bare(plugins: CniPlugins, n: u8, prefix: u8) -> Self {
        CniHost {
            ns: Netns::new("cnode"),
            dir: tempfile::Builder::new()
                .prefix("overlayd-cni-test-")
                .tempdir()
                .unwrap(),
            subnet: format!("10.244.{n}.0/{prefix}"),
            gateway: format!("10.244.{n}.1"),
            subnet_v6: None,
            plugins,
        }
    }

    /// Writes node.json the way the daemon does (temp file + rename).
    pub fn write_node_json(&self) {
        let mut body = json!({"node_name": self.ns.name, "subnet": self.subnet, "gateway": self.gateway,
            "bridge": "ovl0", "mtu": 1450, "cluster_cidr": "10.244.0.0/16", "extra_future_field": true});
        if let (Some(v6), Some(gw)) = (&self.subnet_v6, self.gateway_v6()) {
            merge(
                &mut body,
                json!({"subnet_v6": v6, "gateway_v6": gw, "cluster_cidr_v6": "fd00:10:244::/56"}),
            );
        }
        let tmp = self.run_dir().join("node.json.tmp");
        std::fs::write(&tmp, body.to_string()).unwrap();
        std::fs::rename(tmp, self.run_dir().join("node.json")).unwrap();
    }

    /// The run-dir holding node.json.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The IPAM data-dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Reserved addresses in the store of network `net`.
    pub fn reserved(&self, net: &str) -> Vec<String> {
        match std::fs::read_dir(self.data_dir().join(net)) {
            Ok(rd) => rd
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Asserts that no address is reserved in the store of network `net` and no veth is
    /// left on the host; `what` says after what, in the failure message.
    #[track_caller]
    pub fn assert_nothing_left(&self, net: &str, what: &str) {
        let reserved = self.reserved(net);
        assert!(reserved.is_empty(), "{what}: reserved {reserved:?}");
        let veths = self.ns.links("veth");
        assert!(veths.is_empty(), "{what}: veths {veths:?}");
    }

    /// Our plugin's config (one plugin of a conflist), with `extra` merged in.
    pub fn plugin_conf(&self, extra: Value) -> Value {
        let mut c = json!({"type": "overlayd-cni", "runDir": self.run_dir(), "dataDir": self.data_dir(),
            "logFile": self.dir.path().join("cni.log"), "logLevel": "debug"});
        merge(&mut c, extra);
        c
    }

    /// A `Command` running `bin` in the host namespace with a runtime's clean
    /// environment plus `env`.
    fn plugin_command(&self, bin: &Path, env: &[(&str, &str)]) -> Command {
        let mut cmd = self.ns.command(bin);
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs one plugin binary inside the host namespace, as a runtime on this host would.
    pub fn exec_plugin(&self, bin: &Path, env: &[(&str, &str)], stdin: &Value) -> PluginOutput {
        self.exec_plugin_raw(bin, env, stdin.to_string().as_bytes())
    }

    /// Starts our plugin in the host namespace without waiting for it.
    pub fn spawn_plugin(&self, env: &[(&str, &str)], stdin: &Value) -> Child {
        use std::io::Write;
        let mut child = self
            .plugin_command(&self.plugins.ours, env)
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

    /// Like [`CniHost::exec_plugin`] with raw stdin bytes.
    pub fn exec_plugin_raw(&self, bin: &Path, env: &[(&str, &str)], stdin: &[u8]) -> PluginOutput {
        use std::io::Write;
        let mut child = self
            .plugin_command(bin, env)
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

/// The reference plugins that follow ours in the test conflists: loopback, portmap
/// (host port 18080 to container port 80/tcp, with `portmap_extra` merged in) and
/// bandwidth (100 Mbit/s each way).
pub fn reference_plugins(portmap_extra: Value) -> Vec<Value> {
    let mut portmap = json!({"type": "portmap", "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}});
    merge(&mut portmap, portmap_extra);
    vec![
        json!({"type": "loopback"}),
        portmap,
        json!({"type": "bandwidth", "capabilities": {"bandwidth": true},
               "runtimeConfig": {"bandwidth": {"ingressRate": 100000000, "ingressBurst": 1000000,
                                               "egressRate": 100000000, "egressBurst": 1000000}}}),
    ]
}

/// Shallow-merges `extra` into `base`.
pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
}

/// A conflist executed the way libcni does: ADD in order passing `prevResult`, DEL in
/// reverse order, CHECK with the final result.
pub struct Chain<'a> {
    /// The host the plugins run on.
    pub host: &'a CniHost,
    /// `name`.
    pub name: String,
    /// `cniVersion`.
    pub version: String,
    /// The `plugins` array.
    pub plugins: Vec<Value>,
}

impl<'a> Chain<'a> {
    /// Network `ovl` at `version`: overlayd-cni (the host's config with `ours` merged
    /// in), then the reference plugins (`reference_plugins(portmap_extra)`).
    pub fn with_reference_plugins(
        host: &'a CniHost,
        version: &str,
        ours: Value,
        portmap_extra: Value,
    ) -> Self {
        Chain {
            host,
            name: "ovl".into(),
            version: version.into(),
            plugins: [host.plugin_conf(ours)]
                .into_iter()
                .chain(reference_plugins(portmap_extra))
                .collect(),
        }
    }

    /// The same chain without the plugins of type `ty` (for a CHECK that a reference
    /// plugin gets wrong).
    pub fn without(&self, ty: &str) -> Chain<'a> {
        Chain {
            host: self.host,
            name: self.name.clone(),
            version: self.version.clone(),
            plugins: self
                .plugins
                .iter()
                .filter(|p| p["type"] != ty)
                .cloned()
                .collect(),
        }
    }

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

    /// Runs `cmd` of `plugin` with `conf` on stdin; returns its type and output.
    fn exec(
        &self,
        cmd: &str,
        id: &str,
        netns: &str,
        plugin: &Value,
        conf: &Value,
    ) -> (String, PluginOutput) {
        let ty = plugin["type"].as_str().unwrap();
        let path = self.host.plugins.cni_path();
        let out = self.host.exec_plugin(
            &self.host.plugins.bin(ty),
            &cni_env(cmd, id, netns, &path),
            conf,
        );
        (ty.to_string(), out)
    }

    /// ADD through the chain; returns the final result.
    pub fn add(&self, id: &str, pod: &Netns) -> Value {
        let netns = pod.path();
        let mut prev: Option<Value> = None;
        for p in &self.plugins {
            let (ty, out) = self.exec("ADD", id, &netns, p, &self.conf(p, prev.as_ref()));
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
        let netns = pod.path();
        self.plugins
            .iter()
            .map(|p| {
                self.exec("CHECK", id, &netns, p, &self.conf(p, Some(result)))
                    .1
            })
            .find(|out| out.code != 0)
    }

    /// DEL through the chain in reverse; panics on failure.
    pub fn del(&self, id: &str, netns: &str, result: Option<&Value>) {
        for p in self.plugins.iter().rev() {
            let (ty, out) = self.exec("DEL", id, netns, p, &self.conf(p, result));
            assert_eq!(
                out.code, 0,
                "DEL {ty} failed: {} {}",
                out.stdout, out.stderr
            );
        }
    }
}

fn cni_env<'b>(
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

/// Env for a single-plugin call.
pub fn env<'a>(cmd: &'a str, id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    cni_env(cmd, id, netns, REF_PLUGINS)
}

/// The address (without prefix) in a result.
pub fn result_ip(r: &Value) -> String {
    result_ips(r).swap_remove(0)
}

/// Every address (without prefix) in a result, in order.
pub fn result_ips(r: &Value) -> Vec<String> {
    r["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next().map(String::from))
        .collect()
}
