//! The shipped packaging files are valid: the systemd unit passes
//! `systemd-analyze verify` (with ExecStart pointed at the binary under test).

use std::process::Command;

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/overlayd.service"
    ))
    .unwrap();
    assert!(
        unit.contains("CapabilityBoundingSet=CAP_NET_ADMIN\n"),
        "the unit must keep only CAP_NET_ADMIN"
    );
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!(
            "systemd-analyze is not installed: scripts/test.sh installs it; skipping the lint"
        );
        return;
    };
    assert!(out.status.success());
    let dir = std::env::temp_dir().join(format!("overlayd-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("overlayd.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/overlayd", env!("CARGO_BIN_EXE_overlayd")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only complaints about this unit count; the host's other units are not ours.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("overlayd.service"))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
