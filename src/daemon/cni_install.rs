//! `--install-cni`: the daemon installs its CNI plugin on the host, as flannel's and
//! weave's DaemonSets do. It copies `overlayd-cni` into the CNI bin dir at start and
//! writes the conflist into the CNI conf dir once the node has a subnet (the kubelet
//! keeps the node NotReady until a conflist exists, so no pod is sent to a node that
//! cannot address it yet), each atomically and only when the content changed, so
//! kubelet never sees a half-written file and a restart rewrites nothing.
//! [`InstallCni::uninstall`] removes both (`overlayd uninstall`).

use std::path::{Path, PathBuf};

use crate::fsutil::write_atomic;

/// The conflist the daemon installs: overlayd-cni first, then portmap and bandwidth
/// (the same as `config/overlayd-k8s.conflist`), with `runDir` set to the daemon's.
pub(crate) const CONFLIST_TEMPLATE: &str = include_str!("../../config/overlayd-k8s.conflist");

/// Where and what to install.
#[derive(Debug, Clone)]
pub(crate) struct InstallCni {
    /// The plugin binary to copy.
    pub(crate) plugin: PathBuf,
    /// The CNI bin dir (`--cni-bin-dir`).
    pub(crate) bin_dir: PathBuf,
    /// The CNI conf dir (`--cni-conf-dir`).
    pub(crate) conf_dir: PathBuf,
    /// The conflist file name.
    pub(crate) conflist_name: String,
    /// The daemon's run dir, where the plugin finds node.json.
    pub(crate) run_dir: PathBuf,
    /// The plugin's IPAM store (`dataDir`), where the daemon lists and reclaims pods.
    pub(crate) data_dir: PathBuf,
}

/// What an install changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg(test)]
pub(crate) struct Installed {
    /// The plugin binary was (re)written.
    pub(crate) binary: bool,
    /// The conflist was (re)written.
    pub(crate) conflist: bool,
}

/// Why the install failed.
#[derive(Debug, thiserror::Error)]
#[error("--install-cni: {what} {path}: {source}")]
pub struct InstallError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError { what, path, source }
}

/// The conflist text for a daemon whose run dir is `run_dir` and whose plugin keeps
/// its store in `data_dir`.
pub(crate) fn conflist(run_dir: &Path, data_dir: &Path) -> String {
    let quote = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap_or_default();
    CONFLIST_TEMPLATE
        .replace("\"/run/overlayd\"", &quote(run_dir))
        .replace("\"/var/lib/cni/overlayd\"", &quote(data_dir))
}

impl InstallCni {
    /// Installs the plugin and the conflist; writes only what differs.
    #[cfg(test)]
    pub(crate) fn install(&self) -> Result<Installed, InstallError> {
        Ok(Installed {
            binary: self.install_plugin()?,
            conflist: self.install_conflist()?,
        })
    }

    /// Copies the plugin binary into the bin dir unless it is there already.
    /// Returns whether it was written.
    pub(crate) fn install_plugin(&self) -> Result<bool, InstallError> {
        let binary =
            std::fs::read(&self.plugin).map_err(err("cannot read the plugin", &self.plugin))?;
        let bin_path = self.plugin_path();
        let changed = std::fs::read(&bin_path).map_or(true, |old| old != binary);
        if changed {
            write_atomic(&bin_path, &binary, 0o755, 0o755)
                .map_err(err("cannot write", &bin_path))?;
        }
        Ok(changed)
    }

    /// Writes the conflist unless it is there already. Returns whether it was written.
    pub(crate) fn install_conflist(&self) -> Result<bool, InstallError> {
        let text = conflist(&self.run_dir, &self.data_dir);
        let conf_path = self.conflist_path();
        let changed = std::fs::read_to_string(&conf_path).map_or(true, |old| old != text);
        if changed {
            write_atomic(&conf_path, text.as_bytes(), 0o644, 0o755)
                .map_err(err("cannot write", &conf_path))?;
        }
        Ok(changed)
    }

    /// Removes the conflist first (the kubelet stops sending pods here), then the
    /// plugin. Returns the files removed; a file already gone is not an error.
    pub(crate) fn uninstall(&self) -> Result<Vec<PathBuf>, InstallError> {
        let mut removed = Vec::new();
        for path in [self.conflist_path(), self.plugin_path()] {
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err("cannot remove", &path)(e)),
            }
        }
        Ok(removed)
    }

    /// Where the plugin is installed.
    pub(crate) fn plugin_path(&self) -> PathBuf {
        self.bin_dir.join("overlayd-cni")
    }

    /// Where the conflist is installed.
    pub(crate) fn conflist_path(&self) -> PathBuf {
        self.conf_dir.join(&self.conflist_name)
    }
}

/// `overlayd-cni` next to the running `overlayd`, the default `--cni-plugin`.
pub(crate) fn default_plugin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("overlayd-cni")))
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/overlayd-cni"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_once_and_repairs_changes() {
        let dir = std::env::temp_dir().join(format!("overlayd-install-{}", std::process::id()));
        let plugin = dir.join("src/overlayd-cni");
        std::fs::create_dir_all(plugin.parent().unwrap()).unwrap();
        std::fs::write(&plugin, b"\x7fELF fake plugin").unwrap();
        let install = InstallCni {
            plugin,
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            conflist_name: "10-overlayd.conflist".into(),
            run_dir: PathBuf::from("/run/ovl-test"),
            data_dir: PathBuf::from("/var/lib/ovl-test"),
        };
        assert_eq!(
            install.install().unwrap(),
            Installed {
                binary: true,
                conflist: true
            }
        );
        assert_eq!(
            install.install().unwrap(),
            Installed {
                binary: false,
                conflist: false
            }
        );
        let conf: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("net.d/10-overlayd.conflist")).unwrap(),
        )
        .unwrap();
        assert_eq!(conf["plugins"][0]["type"], "overlayd-cni");
        assert_eq!(conf["plugins"][0]["runDir"], "/run/ovl-test");
        assert_eq!(conf["plugins"][0]["dataDir"], "/var/lib/ovl-test");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.join("bin/overlayd-cni"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        // A changed file on the host is put back.
        std::fs::write(dir.join("bin/overlayd-cni"), b"tampered").unwrap();
        assert_eq!(
            install.install().unwrap(),
            Installed {
                binary: true,
                conflist: false
            }
        );
        // Uninstall removes both, and a second uninstall finds nothing to remove.
        assert_eq!(
            install.uninstall().unwrap(),
            vec![
                dir.join("net.d/10-overlayd.conflist"),
                dir.join("bin/overlayd-cni")
            ]
        );
        assert!(!dir.join("bin/overlayd-cni").exists());
        assert!(!dir.join("net.d/10-overlayd.conflist").exists());
        assert!(install.uninstall().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_plugin_is_a_clear_error() {
        let install = InstallCni {
            plugin: PathBuf::from("/nonexistent/overlayd-cni"),
            bin_dir: PathBuf::from("/tmp"),
            conf_dir: PathBuf::from("/tmp"),
            conflist_name: "x".into(),
            run_dir: PathBuf::from("/run/overlayd"),
            data_dir: PathBuf::from("/var/lib/cni/overlayd"),
        };
        let e = install.install().unwrap_err().to_string();
        assert!(
            e.contains("--install-cni") && e.contains("/nonexistent/overlayd-cni"),
            "{e}"
        );
    }
}
