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
    assert_eq!(
        kinds,
        ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]
    );
    assert_eq!(
        docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str(),
        Some("privileged"),
        "host network, NET_ADMIN and hostPath need the privileged Pod Security level"
    );
    assert_eq!(
        docs[1]["automountServiceAccountToken"].as_bool(),
        Some(false),
        "overlayd never calls the API: no token"
    );
    let config_map = &docs[2];
    let ds = &docs[3];
    assert_eq!(
        ds["spec"]["template"]["spec"]["automountServiceAccountToken"].as_bool(),
        Some(false)
    );
    // Founding is by agreement now: no word of a founding node that must come first.
    assert!(
        !text.contains("founding node first") && !text.contains("first node listed founds"),
        "the manifest still describes founding by the first seed"
    );
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

#[test]
fn kubernetes_uninstall_manifest_parses_and_reaches_what_the_daemon_wrote() {
    use yaml_rust2::YamlLoader;
    let read = |f: &str| {
        std::fs::read_to_string(format!(
            "{}/config/kubernetes/{f}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let daemon_docs = YamlLoader::load_from_str(&read("overlayd.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&read("overlayd-uninstall.yaml")).unwrap();
    let ds = &docs[0];
    assert_eq!(ds["kind"].as_str(), Some("DaemonSet"));
    let daemon_ds = &daemon_docs[3];
    assert_eq!(
        ds["metadata"]["namespace"].as_str(),
        daemon_ds["metadata"]["namespace"].as_str(),
        "it reads the daemon's ConfigMap, so it lives in the daemon's namespace"
    );
    let host_paths = |ds: &yaml_rust2::Yaml| -> Vec<(String, String)> {
        let pod = &ds["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_vec().unwrap();
        let mut out = Vec::new();
        for m in pod["containers"][0]["volumeMounts"].as_vec().unwrap() {
            let v = volumes
                .iter()
                .find(|v| v["name"].as_str() == m["name"].as_str())
                .expect("every mount has a volume");
            if let Some(p) = v["hostPath"]["path"].as_str() {
                out.push((m["mountPath"].as_str().unwrap().into(), p.into()));
            }
        }
        out
    };
    let theirs = host_paths(daemon_ds);
    let ours = host_paths(ds);
    for pair in &theirs {
        // Not what uninstall removes: the TUN device, the plugin's IPAM store (left,
        // as docs/kubernetes.md says) and the pods' netns.
        if ["/dev/net/tun", "/var/lib/cni/overlayd", "/var/run/netns"].contains(&pair.0.as_str()) {
            continue;
        }
        assert!(ours.contains(pair), "uninstall does not mount {pair:?}");
    }
    let dir = std::env::temp_dir().join(format!("overlayd-k8s-u-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml_path = dir.join("overlayd.toml");
    std::fs::write(
        &toml_path,
        daemon_docs[2]["data"]["overlayd.toml"].as_str().unwrap(),
    )
    .unwrap();
    let mut argv = vec!["overlayd".to_string()];
    for arg in ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_vec()
        .unwrap()
    {
        argv.push(
            arg.as_str()
                .unwrap()
                .replace("/etc/overlayd/overlayd.toml", toml_path.to_str().unwrap()),
        );
    }
    let cli = overlayd::config::parse_from(argv)
        .unwrap_or_else(|e| panic!("uninstall args do not parse: {e}"));
    match cli.command {
        Some(overlayd::config::Command::Uninstall { wait, daemon }) => {
            assert!(wait, "a DaemonSet's pod must not exit");
            assert_eq!(
                daemon.cni_bin_dir,
                std::path::PathBuf::from("/host/opt/cni/bin")
            );
            assert_eq!(
                daemon.cluster_cidr.primary.to_string(),
                "10.244.0.0/16",
                "the ConfigMap's cluster_cidr is merged"
            );
        }
        other => panic!("not an uninstall: {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
