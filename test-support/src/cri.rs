//! The kubelet's path to a CNI plugin: Debian's containerd 1.6, driven through its
//! CRI (`RunPodSandbox`, `PodSandboxStatus`, `StopPodSandbox`, `RemovePodSandbox`)
//! by a Rust client, as the kubelet drives it. No Kubernetes, no registry.
//!
//! [`Containerd::start`] runs containerd inside a node's network namespace and in a
//! private mount namespace (`nsenter --net` + `unshare -m --propagation private`):
//! tmpfs over `/run`, `/var/lib` and `/opt` keeps its fixed paths (the shim sockets
//! under `/run/containerd/s`, the pods' netns files under `/var/run/netns`, the CNI
//! cache and the plugin's store under `/var/lib/cni`) away from the host's and from
//! the other nodes' containerds. `/var/lib/cni` and `/var/log` are bind mounts of
//! test directories, so the test reads the plugin's IPAM store and log. Its config is
//! generated: own root, state and socket under a scratch dir, `sandbox_image` the
//! pause image of `scripts/pause-image.sh` (imported with `ctr`),
//! `restrict_oom_score_adj` (containerd asks for -998), the native snapshotter,
//! runc with cgroupfs, and the CNI dirs of [`CniDirs`].
//!
//! Each pod's cgroups sit under a cgroup parent of its own (`/overlayd-cri-*`). On
//! drop, the pods left are stopped and removed through the CRI, containerd is
//! stopped, every process left in its mount namespace or below it (shims, pause) or in
//! its cgroups is killed, the cgroups and the scratch dir are removed: also when the
//! test panics. It leaves out image pulls, containers other than the sandbox, and
//! streaming (exec, attach, port-forward).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cmd::{sh, unique, wait_until};
use crate::netns::Netns;
use crate::process::ChildGuard;

/// The reference plugins a conflist of the CRI tests may name: containerd 1.6 runs
/// `loopback` itself from its `bin_dir`, the installed conflist chains portmap and
/// bandwidth, and the reference network is bridge + host-local.
pub const REFERENCE_PLUGINS: [&str; 6] = [
    "loopback",
    "portmap",
    "bandwidth",
    "bridge",
    "host-local",
    "tuning",
];

/// The one CNI bin dir and conf dir containerd 1.6 reads on a node (it has a single
/// `bin_dir`): the reference plugins are linked into the bin dir, and
/// `overlayd --install-cni --cni-bin-dir --cni-conf-dir` writes ours beside them.
#[derive(Debug, Clone)]
pub struct CniDirs {
    /// `bin_dir`: the plugin binaries.
    pub bin_dir: PathBuf,
    /// `conf_dir`: the conflists (containerd loads the first one by name).
    pub conf_dir: PathBuf,
}

impl CniDirs {
    /// `<dir>/<name>-cni-bin` holding links to [`REFERENCE_PLUGINS`] of
    /// [`crate::cni::REF_PLUGINS`], and an empty `<dir>/<name>-cni-conf`.
    pub fn under(dir: &Path, name: &str) -> CniDirs {
        let dirs = CniDirs {
            bin_dir: dir.join(format!("{name}-cni-bin")),
            conf_dir: dir.join(format!("{name}-cni-conf")),
        };
        for d in [&dirs.bin_dir, &dirs.conf_dir] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        }
        for p in REFERENCE_PLUGINS {
            let src = Path::new(crate::cni::REF_PLUGINS).join(p);
            assert!(
                src.is_file(),
                "{} is missing: apt-get install containernetworking-plugins",
                src.display()
            );
            std::os::unix::fs::symlink(&src, dirs.bin_dir.join(p)).unwrap();
        }
        dirs
    }

    /// The `--install-cni` flags that make a daemon install into these dirs the
    /// plugin at `plugin`.
    pub fn install_flags(&self, plugin: &Path) -> Vec<String> {
        vec![
            "--install-cni".into(),
            format!("--cni-plugin={}", plugin.display()),
            format!("--cni-bin-dir={}", self.bin_dir.display()),
            format!("--cni-conf-dir={}", self.conf_dir.display()),
        ]
    }

    /// True once a conflist is in the conf dir.
    pub fn has_conflist(&self) -> bool {
        std::fs::read_dir(&self.conf_dir).is_ok_and(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".conflist"))
        })
    }
}

/// The pause image: built by `scripts/pause-image.sh` (once; later calls reuse it).
#[derive(Debug, Clone)]
pub struct PauseImage {
    /// Its name (`io.containerd.image.name`), the CRI's `sandbox_image`.
    pub reference: String,
    /// The OCI archive.
    pub archive: PathBuf,
}

impl PauseImage {
    /// Runs `scripts/pause-image.sh` and reads its last line.
    pub fn build() -> PauseImage {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pause-image.sh");
        let out = sh(&[script.to_str().unwrap()]);
        let line = out.lines().last().unwrap_or_default();
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next()) {
            (Some("image:"), Some(reference), Some(archive)) => PauseImage {
                reference: reference.to_string(),
                archive: PathBuf::from(archive),
            },
            _ => panic!("pause-image.sh printed no image line: {out}"),
        }
    }
}

/// A pod sandbox id, as `RunPodSandbox` returned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(pub String);

/// What `PodSandboxStatus` says of a pod.
#[derive(Debug, Clone)]
pub struct PodStatus {
    /// `SANDBOX_READY`.
    pub ready: bool,
    /// `network.ip` then `network.additional_ips`: where the kubelet reads the pod's
    /// addresses.
    pub ips: Vec<String>,
    /// The pause process (from the verbose `info`), whose `/proc/<pid>/ns/net` is the
    /// pod's netns; None once it has stopped.
    pub pid: Option<u32>,
    /// The netns path containerd gave the plugin (`CNI_NETNS`), inside containerd's
    /// mount namespace.
    pub netns: Option<String>,
}

impl PodStatus {
    /// The first address.
    pub fn ip(&self) -> &str {
        self.ips.first().map(String::as_str).unwrap_or_default()
    }
}

/// A CRI call, for the timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CriCall {
    /// `RunPodSandbox`.
    RunPodSandbox,
    /// `PodSandboxStatus`.
    PodSandboxStatus,
    /// `StopPodSandbox`.
    StopPodSandbox,
    /// `RemovePodSandbox`.
    RemovePodSandbox,
}

/// A failed CRI call: the gRPC status containerd answered.
#[derive(Debug)]
pub struct CriError {
    /// The call.
    pub call: CriCall,
    /// containerd's answer.
    pub status: tonic::Status,
}

impl std::fmt::Display for CriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}: {:?}: {}",
            self.call,
            self.status.code(),
            self.status.message()
        )
    }
}

impl std::error::Error for CriError {}

/// A containerd with its CRI on a node; stopped, with everything it started, on drop.
pub struct Containerd {
    child: Option<ChildGuard>,
    /// Holds the private mount namespace (`sleep`), killed on drop with the rest.
    anchor: Option<ChildGuard>,
    anchor_pid: u32,
    /// The node's netns file.
    node_path: String,
    dir: Option<tempfile::TempDir>,
    socket: PathBuf,
    /// `mnt:[inode]` of its private mount namespace.
    mnt_ns: Option<String>,
    cgroup_parent: String,
    rt: tokio::runtime::Runtime,
    client: Option<RuntimeServiceClient<Channel>>,
    timings: Mutex<BTreeMap<CriCall, Vec<Duration>>>,
    /// The node name, in messages.
    pub name: String,
}

impl Containerd {
    /// Starts containerd in `node`'s network namespace with the CNI dirs `cni`, imports
    /// the pause image, and waits until its CRI answers. The conflist may come later
    /// (containerd watches the conf dir), but no pod starts before it is there.
    pub fn start(node: &Netns, cni: &CniDirs) -> Containerd {
        let image = PauseImage::build();
        let dir = tempfile::Builder::new()
            .prefix("overlayd-cri-")
            .tempdir()
            .expect("create containerd's scratch dir");
        let d = dir.path().to_path_buf();
        for sub in ["root", "state", "opt", "var-lib-cni", "var-log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let socket = d.join("containerd.sock");
        let cgroup_parent = format!("/overlayd-cri-{}", unique(""));
        std::fs::write(
            d.join("config.toml"),
            config_toml(&d, &socket, &image.reference, cni),
        )
        .unwrap();
        // The mount namespace is held by an anchor process (`sleep`), so containerd can
        // be killed and started again in it (its pods' netns and shims live there), and
        // a daemon can join it. nsenter opens the node's netns file before the mounts
        // hide /run; unshare execs sh, which execs sleep: the child's pid is the
        // anchor's.
        let script = r#"set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=0755 tmpfs /var/lib
mount -t tmpfs -o mode=0755 tmpfs /opt
mkdir -p /var/lib/cni /run/netns
mount --bind "$1/var-lib-cni" /var/lib/cni
mount --bind "$1/var-log" /var/log
touch "$1/mounted"
exec sleep infinity"#;
        let anchor = Command::new("nsenter")
            .arg(format!("--net={}", node.path()))
            .args(["unshare", "-m", "--propagation", "private"])
            .args(["sh", "-c", script, "sh"])
            .arg(&d)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the mount namespace's anchor (nsenter, unshare)");
        let mut anchor = ChildGuard::new(anchor);
        let mounted = wait_until(Duration::from_secs(10), || {
            anchor.has_exited() || d.join("mounted").exists()
        });
        assert!(
            mounted && d.join("mounted").exists(),
            "containerd's private mount namespace was not set up"
        );
        let anchor_pid = anchor.pid().expect("the anchor runs");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut c = Containerd {
            child: None,
            anchor: Some(anchor),
            anchor_pid,
            node_path: node.path(),
            dir: Some(dir),
            socket,
            mnt_ns: std::fs::read_link(format!("/proc/{anchor_pid}/ns/mnt"))
                .ok()
                .map(|l| l.display().to_string()),
            cgroup_parent,
            rt,
            client: None,
            timings: Mutex::new(BTreeMap::new()),
            name: node.name.clone(),
        };
        c.spawn_containerd();
        let archive = image.archive.display().to_string();
        let (ok, out) = c.ctr(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            "--snapshotter",
            "native",
            &archive,
        ]);
        assert!(ok, "ctr images import {archive}: {out}\n{}", c.log_text());
        c.connect();
        c
    }

    /// Starts containerd in the anchor's mount and network namespaces (appending to
    /// its log) and waits until it answers.
    fn spawn_containerd(&mut self) {
        let d = self.dir().to_path_buf();
        let log = File::options()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))
            .unwrap();
        let child = self
            .command("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd (apt-get install containerd)");
        self.child = Some(ChildGuard::new(child));
        let up = wait_until(Duration::from_secs(20), || {
            self.child.as_mut().is_some_and(|g| g.has_exited()) || self.ctr(&["version"]).0
        });
        assert!(
            up && self.ctr(&["version"]).0,
            "containerd did not come up:\n{}",
            self.log_text()
        );
    }

    /// Connects the CRI client to the socket.
    fn connect(&mut self) {
        let path = self.socket.clone();
        let client = self.rt.block_on(async move {
            let channel = Endpoint::from_static("http://[::]:50051")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .expect("connect to containerd's socket");
            RuntimeServiceClient::new(channel)
        });
        self.client = Some(client);
    }

    /// `program` in containerd's network and mount namespaces (where its pods' netns
    /// files, the CNI cache and the plugin's store are at their fixed paths).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node_path))
            .arg(format!("--mount=/proc/{}/ns/mnt", self.anchor_pid))
            .arg("--")
            .arg(program);
        c
    }

    /// The pid of the process that holds containerd's mount namespace (for
    /// `DaemonNode::mount_of`).
    pub fn mount_anchor(&self) -> u32 {
        self.anchor_pid
    }

    /// Kills containerd with SIGKILL, as a crash would: its shims and pods run on.
    pub fn kill9(&mut self) {
        self.client = None;
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Starts containerd again after [`Containerd::kill9`], on the same root and state.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "containerd still runs");
        self.spawn_containerd();
        self.connect();
    }

    /// Removes a netns file by hand, as an operator (or a node's reboot) would:
    /// unmounts and deletes it in containerd's mount namespace.
    pub fn delete_netns(&self, path: &str) {
        let out = self
            .command("sh")
            .args(["-c", "umount \"$1\" && rm -f \"$1\"", "sh", path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "delete netns {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether `path` exists in containerd's mount namespace.
    pub fn path_exists(&self, path: &str) -> bool {
        self.command("test")
            .args(["-e", path])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// containerd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(ChildGuard::pid)
    }

    /// containerd's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir().join("containerd.log")).unwrap_or_default()
    }

    /// The scratch dir (config, root, state, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the dir lives until drop").path()
    }

    /// What containerd's mount namespace sees as `/var/lib/cni`: the libcni result
    /// cache (`results/`) and the plugin's store (`overlayd/<network>/`).
    pub fn var_lib_cni(&self) -> PathBuf {
        self.dir().join("var-lib-cni")
    }

    /// What containerd's mount namespace sees as `/var/log` (the plugin's `logFile`).
    pub fn var_log(&self) -> PathBuf {
        self.dir().join("var-log")
    }

    /// Every file under [`Containerd::var_lib_cni`], relative to it, sorted.
    pub fn cni_files(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.var_lib_cni(), &self.var_lib_cni(), &mut out);
        out.sort();
        out
    }

    /// `ctr --address <socket> <args>`: whether it succeeded, and its output.
    pub fn ctr(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("ctr is installed (apt-get install containerd)");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        self.client.clone().expect("connected")
    }

    /// Runs `fut`, records how long it took under `call`.
    fn timed<T>(
        &self,
        call: CriCall,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriError> {
        let start = Instant::now();
        let res = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), fut)
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("60 s")))
        });
        let took = start.elapsed();
        self.timings
            .lock()
            .unwrap()
            .entry(call)
            .or_default()
            .push(took);
        res.map(tonic::Response::into_inner)
            .map_err(|status| CriError { call, status })
    }

    /// `RunPodSandbox` of pod `namespace/name` with UID `uid`, as the kubelet asks for
    /// it (hostname, log directory, cgroup parent).
    pub fn try_run_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<PodId, CriError> {
        let log_dir = self.dir().join("pods").join(uid);
        std::fs::create_dir_all(&log_dir).unwrap();
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_dir.display().to_string(),
            labels: HashMap::from([("app".to_string(), name.to_string())]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let mut c = self.client();
        self.timed(CriCall::RunPodSandbox, c.run_pod_sandbox(req))
            .map(|r| PodId(r.pod_sandbox_id))
    }

    /// [`Containerd::try_run_pod`]; panics with containerd's answer and log on failure.
    #[track_caller]
    pub fn run_pod(&self, namespace: &str, name: &str, uid: &str) -> PodId {
        self.try_run_pod(namespace, name, uid).unwrap_or_else(|e| {
            panic!(
                "{}: {namespace}/{name}: {e}\n{}",
                self.name,
                self.log_tail()
            )
        })
    }

    /// `PodSandboxStatus` (verbose, for the pause pid).
    pub fn try_pod_status(&self, id: &PodId) -> Result<PodStatus, CriError> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.0.clone(),
            verbose: true,
        };
        let mut c = self.client();
        let r = self.timed(CriCall::PodSandboxStatus, c.pod_sandbox_status(req))?;
        let status = r.status.unwrap_or_default();
        let ips = status
            .network
            .map(|n| {
                std::iter::once(n.ip)
                    .chain(n.additional_ips.into_iter().map(|a| a.ip))
                    .filter(|ip| !ip.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let info: serde_json::Value = r
            .info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let pid = info["pid"].as_u64().filter(|&p| p > 0).map(|p| p as u32);
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .map(String::from);
        Ok(PodStatus {
            ready: status.state == k8s_cri::v1::PodSandboxState::SandboxReady as i32,
            ips,
            pid,
            netns,
        })
    }

    /// [`Containerd::try_pod_status`]; panics on failure.
    #[track_caller]
    pub fn pod_status(&self, id: &PodId) -> PodStatus {
        self.try_pod_status(id)
            .unwrap_or_else(|e| panic!("{}: {}: {e}", self.name, id.0))
    }

    /// `StopPodSandbox`: the pause process stops, containerd runs the CNI DELs with
    /// the netns and the cached result.
    pub fn try_stop_pod(&self, id: &PodId) -> Result<(), CriError> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.0.clone(),
        };
        let mut c = self.client();
        self.timed(CriCall::StopPodSandbox, c.stop_pod_sandbox(req))
            .map(drop)
    }

    /// [`Containerd::try_stop_pod`]; panics on failure.
    #[track_caller]
    pub fn stop_pod(&self, id: &PodId) {
        self.try_stop_pod(id)
            .unwrap_or_else(|e| panic!("{}: {}: {e}\n{}", self.name, id.0, self.log_tail()))
    }

    /// `RemovePodSandbox`: containerd runs the CNI DELs again, without netns or
    /// result, and forgets the pod.
    pub fn try_remove_pod(&self, id: &PodId) -> Result<(), CriError> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.0.clone(),
        };
        let mut c = self.client();
        self.timed(CriCall::RemovePodSandbox, c.remove_pod_sandbox(req))
            .map(drop)
    }

    /// [`Containerd::try_remove_pod`]; panics on failure.
    #[track_caller]
    pub fn remove_pod(&self, id: &PodId) {
        self.try_remove_pod(id)
            .unwrap_or_else(|e| panic!("{}: {}: {e}\n{}", self.name, id.0, self.log_tail()))
    }

    /// The ids of every pod sandbox containerd knows.
    pub fn list_pods(&self) -> Vec<PodId> {
        let mut c = self.client();
        let req = ListPodSandboxRequest { filter: None };
        self.rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), c.list_pod_sandbox(req)).await
            })
            .ok()
            .and_then(Result::ok)
            .map(|r| {
                r.into_inner()
                    .items
                    .into_iter()
                    .map(|p| PodId(p.id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs `args` inside pod `status`'s netns (`nsenter --net=/proc/<pause>/ns/net`);
    /// true if it succeeded.
    pub fn pod_exec(&self, status: &PodStatus, args: &[&str]) -> bool {
        let Some(pid) = status.pid else {
            return false;
        };
        Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The durations recorded for `call` so far, in call order.
    pub fn timings(&self, call: CriCall) -> Vec<Duration> {
        self.timings
            .lock()
            .unwrap()
            .get(&call)
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets the recorded durations.
    pub fn clear_timings(&self) {
        self.timings.lock().unwrap().clear();
    }

    /// The last 40 lines of containerd's log.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Pids of the processes in containerd's mount namespace or its pod cgroups, and
    /// every descendant of those.
    fn leftover_pids(&self) -> Vec<i32> {
        let mut parent: HashMap<i32, i32> = HashMap::new();
        let mut roots: HashSet<i32> = HashSet::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                // The ppid follows the parenthesised command name, which may hold spaces.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
                if let Some(ppid) = ppid {
                    parent.insert(pid, ppid);
                }
            }
            if let (Some(ns), Ok(link)) = (
                &self.mnt_ns,
                std::fs::read_link(format!("/proc/{pid}/ns/mnt")),
            ) {
                if link.display().to_string() == *ns {
                    roots.insert(pid);
                }
            }
        }
        roots.extend(self.cgroup_pids());
        let mut all = roots.clone();
        loop {
            let more: Vec<i32> = parent
                .iter()
                .filter(|(p, pp)| all.contains(pp) && !all.contains(p))
                .map(|(p, _)| *p)
                .collect();
            if more.is_empty() {
                break;
            }
            all.extend(more);
        }
        all.remove(&(std::process::id() as i32));
        all.into_iter().collect()
    }

    /// The cgroup dirs of the pods' cgroup parent, one per v1 hierarchy (and the v2
    /// one), that exist.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let rel = self.cgroup_parent.trim_start_matches('/');
        let mut dirs = Vec::new();
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let d = e.path().join(rel);
            if d.is_dir() {
                dirs.push(d);
            }
        }
        let v2 = Path::new("/sys/fs/cgroup").join(rel);
        if v2.join("cgroup.procs").is_file() {
            dirs.push(v2);
        }
        dirs
    }

    fn cgroup_pids(&self) -> Vec<i32> {
        fn walk(dir: &Path, out: &mut Vec<i32>) {
            if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        for d in self.cgroup_dirs() {
            walk(&d, &mut out);
        }
        out
    }

    /// Removes the pods' cgroup dirs, deepest first (each must be empty of processes).
    fn remove_cgroups(&self) {
        fn rm(dir: &Path) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    rm(&e.path());
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        for d in self.cgroup_dirs() {
            rm(&d);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The pods left, through the CRI (their DELs run), if containerd still answers.
        if self.client.is_some() && self.child.as_mut().is_some_and(|c| !c.has_exited()) {
            for id in self.list_pods() {
                let _ = self.try_stop_pod(&id);
                let _ = self.try_remove_pod(&id);
            }
        }
        self.client = None;
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(5));
        }
        // Shims, pause processes, anything else it started.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.leftover_pids();
            if pids.is_empty() || Instant::now() > deadline {
                if !pids.is_empty() {
                    eprintln!("containerd {}: processes left: {pids:?}", self.name);
                }
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) with SIGKILL on a pid found in /proc; at worst the
                // process has exited and the call fails.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut a) = self.anchor.take() {
            a.kill();
        }
        // The cgroups empty out once their processes are reaped.
        let _ = wait_until(Duration::from_secs(5), || {
            self.remove_cgroups();
            self.cgroup_dirs().is_empty()
        });
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if dir.close().is_err() {
                let _ = Command::new("rm").arg("-rf").arg(&path).status();
            }
        }
    }
}

/// containerd's config: its own root, state, sockets and opt dir under `d`, no debug or
/// metrics listener, the CRI plugin as the kubelet needs it here.
fn config_toml(d: &Path, socket: &Path, sandbox_image: &str, cni: &CniDirs) -> String {
    let d = d.display();
    let socket = socket.display();
    let (bin, conf) = (cni.bin_dir.display(), cni.conf_dir.display());
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.overlayfs",
]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#
    )
}

/// The median of `xs` (the mean of the middle two for an even count); zero if empty.
pub fn median(xs: &[Duration]) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}
