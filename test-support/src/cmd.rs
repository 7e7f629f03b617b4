//! Running commands, polling for a condition, unique names, and where the workspace's
//! binaries are.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `ov<tag><pid>x<n>`, the pattern
/// scripts/test.sh checks for leftover namespaces (`^ov[a-z]*[0-9]+x[0-9]+`).
pub fn unique(tag: &str) -> String {
    format!(
        "ov{tag}{}x{}",
        std::process::id(),
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
///
/// Prints how long the wait took beside its bound, so a run shows how far each
/// deadline is from what the machine needs (the suite keeps every bound at 10x the
/// typical wait or more).
#[track_caller]
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let at = std::panic::Location::caller();
    let start = Instant::now();
    let deadline = start + timeout;
    let met = loop {
        if f() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "wait_until {}:{}: {} after {:.2?} of {timeout:?}",
        at.file(),
        at.line(),
        if met { "met" } else { "NOT met" },
        start.elapsed()
    );
    met
}

/// The path of binary `name` built by another package of this workspace, in the same
/// target directory and profile as the running test (a test runs from
/// `target/<profile>/deps/`). Panics with what to build when it is missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test runs from target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo test --workspace`, or build it first with the same \
         profile (`cargo build -p {name}`)",
        bin.display()
    );
    bin
}
