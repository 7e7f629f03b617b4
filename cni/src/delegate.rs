//! External IPAM: running another plugin (`ipam.type`) from `CNI_PATH`.
//!
//! As the spec's "Delegated plugins" section says, the delegate gets the same environment
//! (with `CNI_COMMAND` set to the operation) and the same network configuration on stdin.
//! Its error reply is passed through with its own code.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::env::Attachment;
use crate::error::{Error, Result};
use crate::result::CniResult;

/// Finds the plugin binary `name` in `CNI_PATH`.
pub fn find(name: &str, path: &[String]) -> Result<PathBuf> {
    path.iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::DelegateExec {
            plugin: name.to_owned(),
            reason: format!("not found in CNI_PATH {:?}", path.join(":")),
        })
}

/// Runs the delegate for `command` (`ADD`, `DEL`, `CHECK`) with `stdin` as configuration.
/// Returns its parsed result for ADD, `None` otherwise.
pub fn exec(
    plugin: &str,
    command: &str,
    att: &Attachment,
    stdin: &[u8],
) -> Result<Option<CniResult>> {
    let bin = find(plugin, &att.path)?;
    let fail = |reason: String| Error::DelegateExec {
        plugin: plugin.to_owned(),
        reason,
    };
    let args: Vec<String> = att.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut cmd = Command::new(&bin);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &att.container_id)
        .env("CNI_IFNAME", &att.ifname)
        .env("CNI_ARGS", args.join(";"))
        .env("CNI_PATH", att.path.join(":"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match &att.netns {
        Some(ns) => cmd.env("CNI_NETNS", ns),
        None => cmd.env_remove("CNI_NETNS"),
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", bin.display())))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin)
            .map_err(|e| fail(format!("writing its stdin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for it: {e}")))?;
    if !out.status.success() {
        let reply: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        let code = reply
            .as_ref()
            .and_then(|r| r.get("code"))
            .and_then(Value::as_u64)
            .map(|c| c as u32)
            .unwrap_or(crate::error::codes::DELEGATE);
        let text = |k: &str| {
            reply
                .as_ref()
                .and_then(|r| r.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let mut msg = text("msg");
        let details = text("details");
        if !details.is_empty() {
            msg = format!("{msg}: {details}");
        }
        if msg.is_empty() {
            msg = format!(
                "{command} exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        return Err(Error::Delegate {
            plugin: plugin.to_owned(),
            code,
            msg,
        });
    }
    if command != "ADD" {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(format!("its ADD result is not JSON: {e}")))?;
    let result = CniResult::from_json(&value).map_err(|e| fail(e.to_string()))?;
    if result.ips.is_empty() {
        return Err(fail("its ADD result has no IPv4 address".into()));
    }
    Ok(Some(result))
}
