//! The node harness: overlayd daemons on one underlay switch (198.18.0.`i`), each with
//! a pod at `.2` of its subnet once it has leased one.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::cmd::wait_until;
use crate::daemon::{state_name, DaemonDirs, DaemonProcess, Overlayd, StatusReport};
use crate::netns::Netns;
use crate::tools::http_get;
use crate::topology::{Pod, Switch};

/// An underlay switch, a scratch directory and the overlayd binary: what the nodes of
/// one test share. Declare it before its nodes, so the nodes are dropped first.
pub struct TestCluster {
    /// The overlayd binary the nodes run.
    pub bin: Overlayd,
    /// The underlay switch the nodes plug into.
    pub switch: Switch,
    /// Scratch space: the nodes' run and state dirs and logs, key files.
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    /// An empty cluster whose nodes run `bin`.
    pub fn new(bin: impl Into<PathBuf>) -> TestCluster {
        TestCluster {
            bin: Overlayd::at(bin),
            switch: Switch::new(),
            dir: crate::scratch_dir(),
        }
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new cluster key from `overlayd genkey`, in the scratch directory with mode
    /// 0600 (as `--secret-file` requires); its path.
    pub fn secret_file(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir().join("secret");
        let out = std::process::Command::new(&self.bin.bin)
            .arg("genkey")
            .output()
            .expect("overlayd genkey");
        assert!(out.status.success(), "overlayd genkey: {out:?}");
        std::fs::write(&path, &out.stdout).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Node `i` on the switch with its directories under [`TestCluster::dir`]; no
    /// daemon yet.
    pub fn node(&self, i: u8) -> DaemonNode {
        let name = format!("n{i}");
        DaemonNode {
            ns: self.switch.node(i),
            daemon: None,
            pod: None,
            bin: self.bin.clone(),
            dirs: DaemonDirs::under(self.dir(), &name),
            name,
            i,
            advertise: None,
            extra: Vec::new(),
            env: Vec::new(),
            mount_of: None,
        }
    }

    /// Node `i` with its daemon started, seeded with `peers` (comma-separated, may be
    /// empty).
    pub fn start(&self, i: u8, peers: &str) -> DaemonNode {
        self.start_extra(i, peers, &[])
    }

    /// Like [`TestCluster::start`], with `extra` daemon flags (kept for restarts).
    pub fn start_extra(&self, i: u8, peers: &str, extra: &[&str]) -> DaemonNode {
        let mut n = self.node(i);
        n.extra = extra.iter().map(|s| s.to_string()).collect();
        n.launch(peers);
        n
    }
}

/// One node of a [`TestCluster`]: its namespace, daemon and (once it has a subnet) pod.
pub struct DaemonNode {
    /// The node's namespace.
    pub ns: Netns,
    /// Its daemon, while one runs.
    pub daemon: Option<DaemonProcess>,
    /// Its pod, once attached.
    pub pod: Option<Pod>,
    bin: Overlayd,
    /// Where its daemon keeps its run and state dirs and its log.
    pub dirs: DaemonDirs,
    /// `n<i>`: the daemon's node name.
    pub name: String,
    /// Its underlay address is 198.18.0.`i`.
    pub i: u8,
    /// Its `--advertise-addr`, when not 198.18.0.`i` (see [`DaemonNode::ipv6_underlay`]).
    pub advertise: Option<String>,
    /// Daemon flags added to every start.
    pub extra: Vec<String>,
    /// Environment variables added to every start.
    pub env: Vec<(String, String)>,
    /// A process whose mount namespace the daemon joins at every start (see
    /// [`DaemonProcess::start_in`]).
    pub mount_of: Option<u32>,
}

impl DaemonNode {
    /// The daemon's flags for seed peers `peers`: its advertise address, the peers and
    /// the extra flags.
    pub fn args(&self, peers: &str) -> Vec<String> {
        let mut a = vec![
            "--advertise-addr".to_string(),
            self.advertise
                .clone()
                .unwrap_or_else(|| format!("198.18.0.{}", self.i)),
        ];
        if !peers.is_empty() {
            a.extend(["--peers".to_string(), peers.to_string()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Gives the node the IPv6 underlay address 2001:2::`i`/64 (RFC 5180's
    /// benchmarking range, beside 198.18.0.0/15) and makes it the advertise address.
    pub fn ipv6_underlay(&mut self) -> String {
        let addr = format!("2001:2::{}", self.i);
        self.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        self.advertise = Some(addr.clone());
        addr
    }

    /// Starts the daemon on this node's directories (a restart keeps its state).
    pub fn launch(&mut self, peers: &str) {
        let args = self.args(peers);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.daemon = Some(DaemonProcess::start_in(
            &self.bin,
            &self.ns,
            self.mount_of,
            self.dirs.clone(),
            &self.name,
            &args,
            &self.env,
        ));
    }

    /// Runs the daemon expecting it to fail at start-up; returns its exit success and
    /// its output.
    pub fn launch_expect_exit(&self, peers: &str) -> (bool, String) {
        let child = self
            .ns
            .command(&self.bin.bin)
            .args(["--node-name", &self.name])
            .arg("--run-dir")
            .arg(&self.dirs.run_dir)
            .arg("--state-dir")
            .arg(&self.dirs.state_dir)
            .args(self.args(peers))
            .env("RUST_LOG", "info")
            .env(
                crate::daemon::DATAPLANE_ENV.0,
                crate::daemon::DATAPLANE_ENV.1,
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn overlayd");
        let mut guard = crate::process::ChildGuard::new(child);
        let exited = wait_until(Duration::from_secs(15), || guard.has_exited());
        if !exited {
            guard.kill();
        }
        let out = guard
            .into_inner()
            .map(|c| c.wait_with_output().unwrap())
            .expect("the child is still held");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(exited, "overlayd kept running:\n{text}");
        (out.status.success(), text)
    }

    /// The running daemon; panics if none runs.
    pub fn daemon(&self) -> &DaemonProcess {
        self.daemon.as_ref().expect("daemon running")
    }

    /// The daemon's status, or None if no daemon answers.
    pub fn status(&self) -> Option<StatusReport> {
        self.daemon.as_ref()?.status()
    }

    /// The subnet this node uses now, per its status.
    pub fn subnet(&self) -> Option<String> {
        self.status()?.node.subnet.map(|s| s.to_string())
    }

    /// The state this node's status gives peer `name`.
    pub fn peer_state(&self, name: &str) -> Option<String> {
        let s = self.status()?;
        s.peers
            .iter()
            .find(|p| p.name == name)
            .map(|p| state_name(&p.state))
    }

    /// Peer name -> state, from status.
    pub fn peer_states(&self) -> Option<BTreeMap<String, String>> {
        let s = self.status()?;
        Some(
            s.peers
                .iter()
                .map(|p| (p.name.clone(), state_name(&p.state)))
                .collect(),
        )
    }

    /// Attaches a pod at .2 of the node's subnet (once it has one).
    pub fn attach_pod(&mut self) -> bool {
        if self.pod.is_some() {
            return true;
        }
        let Some(status) = self.status() else {
            return false;
        };
        let Some(subnet) = status.node.subnet.map(|s| s.to_string()) else {
            return false;
        };
        let base = subnet.trim_end_matches(".0/24").to_string();
        self.pod = Some(Pod::attach(
            &self.ns,
            "ovl0",
            "veth0",
            &format!("{base}.2/24"),
            &format!("{base}.1"),
            // The node's overlay MTU, as the CNI plugin sets it.
            status.node.mtu,
        ));
        true
    }

    /// The pod; panics if none is attached.
    pub fn pod(&self) -> &Pod {
        self.pod.as_ref().expect("pod attached")
    }

    /// The pod's address.
    pub fn pod_ip(&self) -> &str {
        &self.pod().ip
    }

    /// A value from this node's /metrics (the first sample whose line starts with
    /// `name`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(&self.ns, "127.0.0.1:9469", "/metrics");
        body.lines()
            .map(|l| l.replace("{} ", " "))
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// The daemon's log (all its runs).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.dirs.log).unwrap_or_default()
    }
}

/// The logs of `nodes`, each under a header with its name.
pub fn logs<N: Borrow<DaemonNode>>(nodes: &[N]) -> String {
    nodes
        .iter()
        .map(|n| {
            let n = n.borrow();
            format!("---- {} ----\n{}", n.name, n.log_text())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fails if two running nodes use the same subnet now.
pub fn assert_distinct<N: Borrow<DaemonNode>>(nodes: &[N]) {
    let mut owners: HashMap<String, &str> = HashMap::new();
    for n in nodes {
        let n = n.borrow();
        if let Some(s) = n.subnet() {
            if let Some(other) = owners.insert(s.clone(), &n.name) {
                panic!("{other} and {} both use {s}", n.name);
            }
        }
    }
}

/// One ping from `from`'s pod to `to`'s pod, waiting `wait_secs` for the reply.
pub fn pod_ping(from: &DaemonNode, to: &DaemonNode, wait_secs: u32) -> bool {
    from.pod().ns.try_exec(&[
        "ping",
        "-c",
        "1",
        "-W",
        &wait_secs.to_string(),
        "-q",
        to.pod_ip(),
    ])
}

/// True when every pod reaches every other pod (one ping each, 1 s wait).
pub fn all_reach_all<N: Borrow<DaemonNode>>(nodes: &[N]) -> bool {
    nodes.iter().all(|a| {
        nodes.iter().all(|b| {
            let (a, b) = (a.borrow(), b.borrow());
            a.name == b.name || pod_ping(a, b, 1)
        })
    })
}

/// Waits up to `timeout` for every node's lease, then attaches a pod to each.
#[track_caller]
pub fn lease_and_attach(nodes: &mut [DaemonNode], timeout: Duration) {
    let ok = wait_until(timeout, || nodes.iter().all(|n| n.subnet().is_some()));
    assert!(ok, "not every node got a subnet:\n{}", logs(nodes));
    for n in nodes.iter_mut() {
        assert!(n.attach_pod());
    }
}

/// The subnet of `status` as text, if it has one.
pub fn subnet_of(status: &StatusReport) -> Option<String> {
    status.node.subnet.map(|s| s.to_string())
}
