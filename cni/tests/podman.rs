//! A real runtime: Debian's podman 4.3 (CNI backend, runc) runs containers on the
//! overlayd network from a busybox-static rootfs; they get addresses from the plugin and
//! ping each other. Podman runs inside a node namespace this test creates.
//!
//! Two environment workarounds, neither about the plugin:
//! - podman is entered with `nsenter --net` rather than `ip netns exec`, because the latter
//!   remounts /sys, which hides /sys/fs/cgroup and makes runc fail ("no cgroup mount found").
//! - rlimits are pinned below the current hard limits (`--ulimit nofile=1024:1024
//!   nproc=1024:1024`): with podman's defaults runc fails with "error setting rlimits for
//!   ready process ... operation not permitted" here (no CAP_SYS_RESOURCE).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Podman<'a> {
    node: &'a CniHost,
    dir: PathBuf,
}

impl Podman<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.display().to_string();
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node.ns.path()))
            .arg("podman")
            .args([
                "--root",
                &format!("{d}/root"),
                "--runroot",
                &format!("{d}/runroot"),
            ])
            .args([
                "--network-backend",
                "cni",
                "--cni-config-dir",
                &format!("{d}/cni"),
            ])
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(args)
            .env("CONTAINERS_CONF", format!("{d}/containers.conf"));
        c
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self.cmd(args).output().expect("podman is installed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn container(&self, extra: &[&str], cmd: &[&str]) -> (bool, String) {
        let rootfs = format!("{}/rootfs", self.dir.display());
        let mut args = vec!["run", "--network", "ovl", "--ulimit", "nofile=1024:1024"];
        args.extend(["--ulimit", "nproc=1024:1024"]);
        args.extend_from_slice(extra);
        // `--rootfs` turns the image argument into a rootfs path.
        args.extend(["--rootfs", &rootfs]);
        args.extend_from_slice(cmd);
        self.run(&args)
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-af", "-t", "0"]).output();
    }
}

/// A podman set up on `node` (its dirs, a busybox rootfs, the `ovl` conflist with our
/// plugin, portmap and tuning, and containers.conf).
fn podman(node: &CniHost) -> Podman<'_> {
    let dir = node.dir.path().join("podman");
    for sub in [
        "cni",
        "root",
        "runroot",
        "tmp",
        "rootfs/bin",
        "rootfs/proc",
        "rootfs/sys",
        "rootfs/dev",
        "rootfs/etc",
    ] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox"))
        .expect("busybox-static is installed");
    for applet in ["sh", "ping", "sleep", "ip"] {
        std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet)).unwrap();
    }
    let plugin_dir = Path::new(PLUGIN).parent().unwrap().display().to_string();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "ovl",
        "plugins": [
            node.plugin_conf(serde_json::json!({"capabilities": {"ips": true}})),
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "tuning"}
        ]
    });
    std::fs::write(dir.join("cni/ovl.conflist"), conflist.to_string()).unwrap();
    std::fs::write(
        dir.join("containers.conf"),
        format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{plugin_dir}\", \"{REF_PLUGINS}\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    Podman { node, dir }
}

#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn podman_containers_ping_each_other() {
    let node = host(10, 24);
    let podman = podman(&node);

    let (ok, out) = podman.container(&["-d", "--name", "ovl-a"], &["/bin/sleep", "120"]);
    assert!(ok, "podman run a: {out}");
    let (ok, ip_a) = podman.run(&[
        "inspect",
        "ovl-a",
        "--format",
        "{{(index .NetworkSettings.Networks \"ovl\").IPAddress}}",
    ]);
    let ip_a = ip_a.trim().to_owned();
    assert!(ok && ip_a.starts_with("10.244.10."), "inspect: {ip_a}");
    assert_eq!(
        node.reserved("ovl"),
        vec![ip_a.clone()],
        "the address came from our store"
    );

    let (ok, out) = podman.container(
        &["--rm", "--name", "ovl-b"],
        &["/bin/ping", "-c", "2", "-W", "2", &ip_a],
    );
    assert!(
        ok && out.contains(" 0% packet loss"),
        "b cannot ping a: {out}"
    );
    // `--ip` reaches the plugin through the `ips` capability.
    let (ok, out) = podman.container(
        &["--rm", "--name", "ovl-c", "--ip", "10.244.10.77"],
        &["/bin/ip", "-4", "addr", "show", "eth0"],
    );
    assert!(ok && out.contains("10.244.10.77/24"), "--ip: {out}");

    let (ok, out) = podman.run(&["rm", "-af", "-t", "0"]);
    assert!(ok, "podman rm: {out}");
    node.assert_nothing_left("ovl", "after podman rm");
}

#[test]
#[cfg_attr(not(feature = "netns-tests"), ignore)]
fn podman_dual_stack_containers_ping_each_other_over_ipv6() {
    let node = CniHost::new_dual(CniPlugins::new(PLUGIN), 15, 24);
    let podman = podman(&node);
    let (ok, out) = podman.container(&["-d", "--name", "ovl-a6"], &["/bin/sleep", "120"]);
    assert!(ok, "podman run a: {out}");
    let inspect = |field: &str| {
        let (ok, v) = podman.run(&[
            "inspect",
            "ovl-a6",
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"ovl\").{field}}}}}"),
        ]);
        assert!(ok, "inspect: {v}");
        v.trim().to_owned()
    };
    let (ip4, ip6) = (inspect("IPAddress"), inspect("GlobalIPv6Address"));
    assert!(ip4.starts_with("10.244.15."), "{ip4}");
    assert!(ip6.starts_with("fd00:10:244:f::"), "{ip6}");
    let mut reserved = node.reserved("ovl");
    reserved.sort();
    assert_eq!(
        reserved,
        vec![ip4.clone(), ip6.clone()],
        "both came from our store"
    );
    let (ok, out) = podman.container(
        &["--rm", "--name", "ovl-b6"],
        &["/bin/ping", "-c", "2", "-W", "2", &ip6],
    );
    assert!(
        ok && out.contains(" 0% packet loss"),
        "b cannot ping a over IPv6: {out}"
    );
    let (ok, out) = podman.run(&["rm", "-af", "-t", "0"]);
    assert!(ok, "podman rm: {out}");
    node.assert_nothing_left("ovl", "after podman rm");
}
