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

#[test]
fn kubernetes_manifest_has_the_expected_objects_and_valid_args() {
    use yaml_rust2::{Yaml, YamlLoader};
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/kubernetes/overlayd.yaml"
    ))
    .unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("valid YAML");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ServiceAccount", "ConfigMap", "DaemonSet"]);
    let config_map = &docs[1];
    let ds = &docs[2];
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let caps: Vec<&str> = container["securityContext"]["capabilities"]["add"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(caps, ["NET_ADMIN"]);
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for needed in [
        "/run/overlayd",
        "/var/lib/overlayd",
        "/host/opt/cni/bin",
        "/host/etc/cni/net.d",
        "/dev/net/tun",
    ] {
        assert!(mounts.contains(&needed), "missing mount {needed}");
    }

    // The container's flags and the ConfigMap's overlayd.toml parse with this overlayd.
    let dir = std::env::temp_dir().join(format!("overlayd-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml_path = dir.join("overlayd.toml");
    std::fs::write(
        &toml_path,
        config_map["data"]["overlayd.toml"].as_str().unwrap(),
    )
    .unwrap();
    let mut argv = vec!["overlayd".to_string()];
    for arg in container["args"].as_vec().unwrap() {
        argv.push(
            arg.as_str()
                .unwrap()
                .replace("/etc/overlayd/overlayd.toml", toml_path.to_str().unwrap()),
        );
    }
    let peers = config_map["data"]["peers"].as_str().unwrap();
    argv.extend([
        "--peers".into(),
        peers.into(),
        "--node-name".into(),
        "node-a".into(),
    ]);
    let cli = overlayd::config::parse_from(argv)
        .unwrap_or_else(|e| panic!("manifest args do not parse: {e}"));
    assert!(cli.daemon.install_cni);
    assert_eq!(cli.daemon.subnet, None, "the manifest must use leases");
    cli.daemon
        .validate()
        .unwrap_or_else(|e| panic!("manifest config does not validate: {e}"));
    let env: Vec<&str> = container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for var in [
        "OVERLAYD_NODE_NAME",
        "OVERLAYD_ADVERTISE_ADDR",
        "OVERLAYD_PEERS",
        "OVERLAYD_METRICS_ADDR",
    ] {
        assert!(env.contains(&var), "missing env {var}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
