//! The binary rejects bad flags with a non-zero exit and a message naming the flag.
//! No root needed: validation happens before any device is touched.

use std::process::Command;

/// The binary, run so that a case it fails to refuse does the host no harm: as root,
/// in a network namespace of its own (`unshare --net`), with its run and state
/// directories under a temporary directory unless a case gives them, and under
/// `timeout`, so that a daemon started by mistake fails the test instead of
/// configuring the host's network or hanging the suite.
fn overlayd() -> Command {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    });
    let mut c = Command::new(if root { "unshare" } else { "timeout" });
    if root {
        c.args(["--net", "--", "timeout"]);
    }
    c.args(["30", env!("CARGO_BIN_EXE_overlayd")]);
    let scratch = std::env::temp_dir().join(format!("overlayd-cli-scratch-{}", std::process::id()));
    c.env("OVERLAYD_RUN_DIR", scratch.join("run"))
        .env("OVERLAYD_STATE_DIR", scratch.join("state"));
    c
}

fn run(args: &[&str]) -> (bool, String) {
    let out = overlayd().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_name_the_flag() {
    let dir = std::env::temp_dir().join(format!("overlayd-cli-{}", std::process::id()));
    let state = format!("--state-dir={}", dir.display());
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--cluster-cidr",
                "10.244.0.0/99",
                "--subnet",
                "10.244.1.0/24",
            ],
            "--cluster-cidr",
        ),
        (&["--subnet", "10.245.1.0/24"], "--subnet"),
        (
            &["--reclaim-after", "18446744073709551615s"],
            "--reclaim-after",
        ),
        (
            &[
                "--subnet",
                "10.244.1.0/24",
                "--static-peer",
                "10.244.2.0/24,198.18.0.2",
            ],
            "--static-peer",
        ),
        (
            &[
                "--subnet",
                "10.244.1.0/24",
                "--static-peer",
                "10.244.2.0/24,198.18.0.2,not-a-mac",
            ],
            "--static-peer",
        ),
        (&["--subnet", "10.244.1.0/24", "--port", "70000"], "--port"),
        (
            &["--subnet", "10.244.1.0/24", "--no-such-flag"],
            "--no-such-flag",
        ),
    ];
    for (args, flag) in cases {
        let mut argv = args.to_vec();
        argv.push(&state);
        let (ok, stderr) = run(&argv);
        assert!(!ok, "{args:?} was accepted");
        assert!(
            stderr.contains(flag),
            "{args:?}: stderr does not name {flag}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn status_without_daemon_says_so_in_one_line() {
    let dir = std::env::temp_dir().join(format!("overlayd-nodaemon-{}", std::process::id()));
    let (ok, stderr) = run(&["status", "--run-dir", dir.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not running"), "{stderr}");
}

#[test]
fn bad_config_file_names_key_and_file() {
    let path = std::env::temp_dir().join(format!("overlayd-cli-bad-{}.toml", std::process::id()));
    for (toml, key) in [
        ("vni = \"seven\"\n", "`vni`"),
        ("subnet = \"10.244.1.0/24\"\nsubnett = 1\n", "`subnett`"),
    ] {
        std::fs::write(&path, toml).unwrap();
        let (ok, stderr) = run(&["--config", path.to_str().unwrap()]);
        assert!(!ok, "{toml} was accepted");
        assert!(
            stderr.contains(key) && stderr.contains(path.to_str().unwrap()),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn diagnose_without_daemon_says_so() {
    let dir = std::env::temp_dir().join(format!("overlayd-nodaemon-diag-{}", std::process::id()));
    let (ok, stderr) = run(&["diagnose", "10.244.1.2", "--run-dir", dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("not running"), "{stderr}");
    let (ok, stderr) = run(&["diagnose", "not-an-ip"]);
    assert!(!ok && stderr.contains("POD_IP"), "{stderr}");
}

#[test]
fn bad_secret_files_name_the_flag_and_the_problem() {
    let dir = std::env::temp_dir().join(format!("overlayd-cli-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let cases = [
        (dir.join("missing").display().to_string(), "No such file"),
        (write("empty", "# nothing here\n\n"), "holds no key"),
        (write("short", "hunter2\n"), "line 1: key is 7 bytes"),
        (
            write(
                "three",
                "aaaaaaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbbbbbb\ncccccccccccccccccccc\n",
            ),
            "holds 3 keys",
        ),
    ];
    for (path, why) in &cases {
        let (ok, stderr) = run(&[
            "--cluster-cidr",
            "10.244.0.0/16",
            "--state-dir",
            dir.to_str().unwrap(),
            "--secret-file",
            path,
        ]);
        assert!(!ok, "{path} was accepted");
        assert!(
            stderr.contains("--secret-file") && stderr.contains(path.as_str()),
            "{stderr}"
        );
        assert!(stderr.contains(why), "{path}: expected '{why}' in {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn genkey_prints_a_fresh_key() {
    let key = |_| {
        let out = overlayd().arg("genkey").output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (a, b) = (key(0), key(1));
    assert_eq!(a.len(), 64);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
}

/// `overlayd genkey | head -c0`: a reader that closes the pipe before the output is
/// written ends the command quietly and successfully, as `ls | head` does, instead of
/// a panic about a broken pipe.
#[test]
fn a_closed_output_pipe_is_not_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = overlayd().arg("genkey").stdout(writer).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `overlayd … 2>&1 | logger` when the reader has gone: the log line and the error
/// message are lost, and the command still ends with its own exit status (1 for a
/// bad flag), not a panic (101).
#[test]
fn a_closed_error_pipe_is_not_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = overlayd()
        .args(["--subnet", "10.245.1.0/24"])
        .stderr(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{:?}", out.status);
}
