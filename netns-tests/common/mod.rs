//! Test hosts in network namespaces: guards that delete what they create on drop
//! (also when a test fails), and helpers to run overlayd, pods, a kernel VXLAN node
//! and iperf3 inside them.
//!
//! Every test builds its own namespaces with names unique to the test and process.
//! Nothing is configured in the root namespace: veth pairs are created with both ends
//! directly inside their namespaces. Underlay addresses come from 198.18.0.0/15 and pod
//! addresses from 10.244.0.0/16.
#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Path of the overlayd binary under test.
pub const OVERLAYD: &str = env!("CARGO_BIN_EXE_overlayd");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `<tag><pid % 10000><n>`.
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}{}x{}",
        std::process::id() % 10_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panicking with its output if it fails; returns stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
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

/// Polls `f` every 100 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A network namespace, deleted (with every process in it) on drop.
pub struct Netns {
    /// Its name under /var/run/netns.
    pub name: String,
}

impl Netns {
    /// Creates a namespace named `unique(tag)` with loopback up.
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs a command inside the namespace; panics if it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs a command inside the namespace; true if it succeeded.
    pub fn try_exec(&self, args: &[&str]) -> bool {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        try_sh(&v)
    }

    /// A `Command` that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread that has joined this namespace (setns is per thread).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: setns on a valid namespace fd affects only this thread, which
                // exits at the end of the scope.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// Ping `dst` from this namespace: true if at least one reply arrives.
    pub fn ping(&self, dst: &str) -> bool {
        self.try_exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "-q", dst])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects two namespaces with a veth pair and gives each end an address.
pub fn link(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    sh(&[
        "ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A pod: a namespace whose `eth0` is a veth attached to `bridge` in `node`.
pub struct Pod {
    /// The pod's namespace.
    pub ns: Netns,
    /// The pod's address without prefix.
    pub ip: String,
}

impl Pod {
    /// Attaches a pod with address `cidr` (e.g. 10.244.1.2/24) and default route via `gw`.
    pub fn attach(
        node: &Netns,
        bridge: &str,
        host_if: &str,
        cidr: &str,
        gw: &str,
        mtu: u32,
    ) -> Pod {
        let ns = Netns::new("ovp");
        sh(&[
            "ip", "link", "add", host_if, "netns", &node.name, "type", "veth", "peer", "name",
            "eth0", "netns", &ns.name,
        ]);
        node.ip(&[
            "link",
            "set",
            host_if,
            "mtu",
            &mtu.to_string(),
            "master",
            bridge,
            "up",
        ]);
        ns.ip(&["link", "set", "eth0", "mtu", &mtu.to_string(), "up"]);
        ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
        ns.ip(&["route", "add", "default", "via", gw]);
        let ip = cidr.split('/').next().unwrap().to_string();
        Pod { ns, ip }
    }
}

/// A running overlayd, stopped on drop. Its log is kept in `log`.
pub struct Daemon {
    child: Option<Child>,
    /// Its log file.
    pub log: PathBuf,
    /// Its run dir (status socket, node.json).
    pub run_dir: PathBuf,
    /// Its state dir.
    pub state_dir: PathBuf,
}

/// A per-test scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/overlayd-test-<unique>`.
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("overlayd-test-{}", unique("d")));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Daemon {
    /// Starts overlayd in `ns` with `args` plus `--run-dir`/`--state-dir` under `dir`,
    /// and waits until its status socket answers.
    pub fn start(ns: &Netns, dir: &Path, name: &str, args: &[&str]) -> Daemon {
        let run_dir = dir.join(format!("{name}-run"));
        let state_dir = dir.join(format!("{name}-state"));
        let log = dir.join(format!("{name}.log"));
        Self::start_with(ns, run_dir, state_dir, log, name, args)
    }

    /// Like [`Daemon::start`] with explicit directories (for restarts).
    pub fn start_with(
        ns: &Netns,
        run_dir: PathBuf,
        state_dir: PathBuf,
        log: PathBuf,
        name: &str,
        args: &[&str],
    ) -> Daemon {
        let logfile = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = ns
            .command(OVERLAYD)
            .args(["--node-name", name])
            .arg("--run-dir")
            .arg(&run_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(logfile.try_clone().unwrap())
            .stderr(logfile)
            .spawn()
            .expect("spawn overlayd");
        let mut d = Daemon {
            child: Some(child),
            log,
            run_dir,
            state_dir,
        };
        let up = wait_until(Duration::from_secs(10), || {
            if let Some(Ok(Some(_))) = d.child.as_mut().map(|c| c.try_wait()) {
                return true;
            }
            d.status_json().is_some()
        });
        if !up || d.status_json().is_none() {
            panic!("overlayd {name} did not come up:\n{}", d.log_text());
        }
        d
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        let _ = File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// `overlayd status --json`, parsed, or None if the daemon does not answer.
    pub fn status_json(&self) -> Option<serde_json::Value> {
        let out = Command::new(OVERLAYD)
            .arg("status")
            .arg("--json")
            .arg("--run-dir")
            .arg(&self.run_dir)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The drop counter for `reason` (0 if absent).
    pub fn drops(&self, reason: &str) -> u64 {
        self.status_json()
            .and_then(|s| s["dataplane"]["drops"][reason].as_u64())
            .unwrap_or(0)
    }

    /// Sends SIGKILL and waits.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The daemon's pid (`ip netns exec` execs it, so it is the child's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`) to the daemon, if it runs.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // `ip netns exec` forwards signals only by exiting; kill the child tree via the
        // namespace guard as well. Here: terminate politely first.
        self.terminate();
    }
}

/// Runs iperf3 from `client` to `server_ip` (server started in `server`) for `secs`
/// seconds with `extra` client flags; returns the JSON report.
pub fn iperf3_json(
    server: &Netns,
    client: &Netns,
    server_ip: &str,
    secs: u32,
    extra: &[&str],
) -> serde_json::Value {
    let mut srv = server
        .command("iperf3")
        .args(["-s", "-B", server_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    let listening = wait_until(Duration::from_secs(5), || {
        let out = server
            .command("ss")
            .args(["-Hltn", "sport = :5201"])
            .output();
        out.is_ok_and(|o| !o.stdout.is_empty())
    });
    let out = client
        .command("iperf3")
        .args(["-c", server_ip, "-t", &secs.to_string(), "-J"])
        .args(extra)
        .output()
        .expect("iperf3 -c");
    let _ = srv.kill();
    let _ = srv.wait();
    assert!(listening, "iperf3 server on {server_ip} never listened");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "iperf3 to {server_ip} failed: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 JSON: {e}: {text}"))
}

/// TCP throughput from `client` to `server_ip` over `secs` seconds, in Gbit/s.
pub fn iperf3(server: &Netns, client: &Netns, server_ip: &str, secs: u32) -> f64 {
    let v = iperf3_json(server, client, server_ip, secs, &[]);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no bits_per_second in iperf3 output: {v}"))
        / 1e9
}

/// Configures `ns` as a flannel-style kernel VXLAN node: device `flannel.1` with VNI
/// `vni` on underlay address `local`, the `.0` address of `subnet` on it, and a bridge
/// `cni0` holding the gateway. Returns the device's MAC.
pub fn kernel_vxlan_node(
    ns: &Netns,
    underlay_if: &str,
    local: &str,
    vni: u32,
    subnet_base: &str,
    mtu: u32,
) -> String {
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        &vni.to_string(),
        "local",
        local,
        "dev",
        underlay_if,
        "dstport",
        "4789",
        "nolearning",
    ]);
    ns.ip(&["link", "set", "flannel.1", "mtu", &mtu.to_string(), "up"]);
    ns.ip(&[
        "addr",
        "add",
        &format!("{subnet_base}.0/32"),
        "dev",
        "flannel.1",
    ]);
    ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    ns.ip(&["addr", "add", &format!("{subnet_base}.1/24"), "dev", "cni0"]);
    ns.ip(&["link", "set", "cni0", "mtu", &mtu.to_string(), "up"]);
    ns.sysctl("net.ipv4.ip_forward", "1");
    let out = ns.ip(&["-j", "link", "show", "flannel.1"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["address"].as_str().unwrap().to_string()
}

/// On kernel node `ns`, routes `peer_subnet_base`.0/24 to a VTEP with MAC `mac` at
/// underlay `addr`, as flannel's vxlan backend does.
pub fn kernel_vxlan_route(ns: &Netns, peer_subnet_base: &str, mac: &str, addr: &str) {
    let gw = format!("{peer_subnet_base}.0");
    ns.ip(&[
        "route",
        "add",
        &format!("{peer_subnet_base}.0/24"),
        "via",
        &gw,
        "dev",
        "flannel.1",
        "onlink",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        &gw,
        "lladdr",
        mac,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    let mut v = vec![
        "bridge",
        "-n",
        &ns.name,
        "fdb",
        "append",
        mac,
        "dev",
        "flannel.1",
        "dst",
        addr,
    ];
    let _ = &mut v;
    sh(&v);
}

/// `GET path` over HTTP/1.0 to `addr` from inside `ns`; returns (status code, body).
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> (u16, String) {
    use std::io::Write;
    ns.run(|| {
        let mut s =
            std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
}

/// An underlay switch: a namespace holding bridges that node namespaces plug into.
/// Moving a node's port to another bridge partitions it from the rest.
pub struct Switch {
    /// The switch's namespace.
    pub ns: Netns,
}

impl Switch {
    /// A switch with bridges `br0` (the default) and `br1` (for partitions).
    pub fn new() -> Switch {
        let ns = Netns::new("ovs");
        for br in ["br0", "br1"] {
            ns.ip(&["link", "add", br, "type", "bridge"]);
            ns.ip(&["link", "set", br, "up"]);
        }
        Switch { ns }
    }

    /// A node namespace plugged into `br0` as 198.18.0.`i`/24 on its `eth0`.
    pub fn node(&self, i: u8) -> Netns {
        let node = Netns::new("ovn");
        let port = format!("p{i}");
        sh(&[
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            &node.name,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.ns.name,
        ]);
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"]);
        node.ip(&["addr", "add", &format!("198.18.0.{i}/24"), "dev", "eth0"]);
        node.ip(&["link", "set", "eth0", "up"]);
        node
    }

    /// Moves node `i`'s port to bridge `br`.
    pub fn plug(&self, i: u8, br: &str) {
        self.ns.ip(&["link", "set", &format!("p{i}"), "master", br]);
    }
}

/// Output of one ping from `ns` to `dst` (stdout and stderr), whatever its result.
pub fn ping_output(ns: &Netns, dst: &str) -> String {
    let out = ns
        .command("ping")
        .args(["-c", "1", "-W", "2", dst])
        .output()
        .expect("ping");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A VXLAN datagram as the kernel sends it: I flag, `vni`, inner Ethernet to `dst_mac`
/// carrying an ICMP echo request from `src` to `dst`.
pub fn vxlan_icmp(vni: u32, dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0];
    d.extend_from_slice(&vni.to_be_bytes()[1..]);
    d.push(0);
    d.extend_from_slice(&dst_mac);
    d.extend_from_slice(&[0x02, 0, 0, 0, 0x09, 0x09, 0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
    d.extend_from_slice(&ip);
    d
}
