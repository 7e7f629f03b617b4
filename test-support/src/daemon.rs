//! One overlayd daemon running in a namespace, and the overlayd binary it runs from.
//! Tests read the daemon through its typed status ([`StatusReport`]), never by
//! indexing JSON.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub use overlayd::ops::status::{PeerReport, StatusReport};

use crate::cmd::wait_until;
use crate::netns::Netns;
use crate::process::ChildGuard;

/// The dataplane the suites' daemons run unless a test passes `--dataplane` (the
/// flag wins over the variable): the userspace one, whose behaviour most suites
/// check packet by packet (drop reasons, offloads, workers). The kernel dataplane's
/// own suite (`netns_kernel`) passes `--dataplane` explicitly.
pub const DATAPLANE_ENV: (&str, &str) = ("OVERLAYD_DATAPLANE", "userspace");

/// The overlayd binary under test. Its path comes from the caller: the daemon's own
/// integration tests have `env!("CARGO_BIN_EXE_overlayd")`, other packages'
/// tests use [`crate::cmd::workspace_bin`].
#[derive(Debug, Clone)]
pub struct Overlayd {
    /// Path of the binary.
    pub bin: PathBuf,
}

impl Overlayd {
    /// The binary at `bin`.
    pub fn at(bin: impl Into<PathBuf>) -> Overlayd {
        Overlayd { bin: bin.into() }
    }

    /// `overlayd <args>` as a client (run in the caller's namespace).
    pub fn run(&self, args: &[&str], run_dir: &Path) -> Output {
        Command::new(&self.bin)
            .args(args)
            .arg("--run-dir")
            .arg(run_dir)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()))
    }

    /// `overlayd status --json` against the daemon in `run_dir`, parsed into the typed
    /// report, or None if no daemon answers.
    pub fn status(&self, run_dir: &Path) -> Option<StatusReport> {
        let out = self.run(&["status", "--json"], run_dir);
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status is not a StatusReport: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        }))
    }
}

/// The directories and log file of one daemon.
#[derive(Debug, Clone)]
pub struct DaemonDirs {
    /// Its run dir (status socket, node.json).
    pub run_dir: PathBuf,
    /// Its state dir (lease, VTEP MAC).
    pub state_dir: PathBuf,
    /// Its log file (stdout and stderr, appended across restarts).
    pub log: PathBuf,
}

impl DaemonDirs {
    /// `<dir>/<name>-run`, `<dir>/<name>-state` and `<dir>/<name>.log`.
    pub fn under(dir: &Path, name: &str) -> DaemonDirs {
        DaemonDirs {
            run_dir: dir.join(format!("{name}-run")),
            state_dir: dir.join(format!("{name}-state")),
            log: dir.join(format!("{name}.log")),
        }
    }
}

/// A running overlayd, stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct DaemonProcess {
    child: ChildGuard,
    bin: Overlayd,
    /// Its log file.
    pub log: PathBuf,
    /// Its run dir (status socket, node.json).
    pub run_dir: PathBuf,
    /// Its state dir.
    pub state_dir: PathBuf,
}

impl DaemonProcess {
    /// Starts overlayd in `ns` with `args` plus `--run-dir`/`--state-dir` under `dir`,
    /// and waits until its status socket answers.
    pub fn start(bin: &Overlayd, ns: &Netns, dir: &Path, name: &str, args: &[&str]) -> Self {
        Self::start_with(bin, ns, DaemonDirs::under(dir, name), name, args)
    }

    /// Like [`DaemonProcess::start`] with explicit directories (for restarts).
    pub fn start_with(
        bin: &Overlayd,
        ns: &Netns,
        dirs: DaemonDirs,
        name: &str,
        args: &[&str],
    ) -> Self {
        Self::start_with_env(bin, ns, dirs, name, args, &[])
    }

    /// Like [`DaemonProcess::start_with`], with extra environment variables (e.g. a
    /// test fault point).
    pub fn start_with_env(
        bin: &Overlayd,
        ns: &Netns,
        dirs: DaemonDirs,
        name: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Self {
        Self::start_in(bin, ns, None, dirs, name, args, env)
    }

    /// Like [`DaemonProcess::start_with_env`]; with `mount_of` the daemon also joins the
    /// mount namespace of that process (e.g. a test containerd's, so it sees the host
    /// paths the plugin records as a DaemonSet's hostPath volumes would show them).
    pub fn start_in(
        bin: &Overlayd,
        ns: &Netns,
        mount_of: Option<u32>,
        dirs: DaemonDirs,
        name: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Self {
        let mut command = match mount_of {
            None => ns.command(&bin.bin),
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.path()))
                    .arg(format!("--mount=/proc/{pid}/ns/mnt"))
                    .arg("--")
                    .arg(&bin.bin);
                c
            }
        };
        let logfile = File::options()
            .create(true)
            .append(true)
            .open(&dirs.log)
            .unwrap_or_else(|e| panic!("{}: {e}", dirs.log.display()));
        let child = command
            .args(["--node-name", name])
            .arg("--run-dir")
            .arg(&dirs.run_dir)
            .arg("--state-dir")
            .arg(&dirs.state_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .env(DATAPLANE_ENV.0, DATAPLANE_ENV.1)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(logfile.try_clone().unwrap())
            .stderr(logfile)
            .spawn()
            .expect("spawn overlayd");
        let mut d = DaemonProcess {
            child: ChildGuard::new(child),
            bin: bin.clone(),
            log: dirs.log,
            run_dir: dirs.run_dir,
            state_dir: dirs.state_dir,
        };
        let up = wait_until(Duration::from_secs(10), || {
            d.child.has_exited() || d.status().is_some()
        });
        if !up || d.status().is_none() {
            panic!("overlayd {name} did not come up:\n{}", d.log_text());
        }
        d
    }

    /// Its directories, to start it again on the same state.
    pub fn dirs(&self) -> DaemonDirs {
        DaemonDirs {
            run_dir: self.run_dir.clone(),
            state_dir: self.state_dir.clone(),
            log: self.log.clone(),
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its status, or None if the daemon does not answer.
    pub fn status(&self) -> Option<StatusReport> {
        self.bin.status(&self.run_dir)
    }

    /// `overlayd <args> --run-dir <its run dir>` as a client.
    pub fn client(&self, args: &[&str]) -> Output {
        self.bin.run(args, &self.run_dir)
    }

    /// The dataplane drop counter for `reason` (0 if absent or no answer).
    pub fn drops(&self, reason: &str) -> u64 {
        self.status()
            .and_then(|s| s.dataplane.drops.get(reason).copied())
            .unwrap_or(0)
    }

    /// Sends SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        self.child.kill();
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`) to the daemon, if it runs.
    pub fn signal(&self, sig: i32) {
        self.child.signal(sig);
    }

    /// Sends SIGTERM and waits up to 5 s for a clean exit; true if it exited with
    /// success.
    pub fn terminate(&mut self) -> bool {
        self.child
            .terminate(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    }
}

/// The name status gives a peer state (`"alive"`, `"suspect"`, `"dead"`): its serde
/// form, which is what the JSON and the text output show.
pub fn state_name(state: &impl serde::Serialize) -> String {
    match serde_json::to_value(state) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// Peer `name` in `status`; panics with the status if it is missing.
pub fn peer<'a>(status: &'a StatusReport, name: &str) -> &'a PeerReport {
    status
        .peers
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no peer {name} in status: {status:?}"))
}
