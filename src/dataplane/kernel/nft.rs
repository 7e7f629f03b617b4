//! Runs the `nft` binary: installs a ruleset script and reads the counters of table
//! `inet overlayd`. The text format is what an operator reads in `nft list ruleset`
//! and can paste back; talking nf_tables netlink directly would need a crate
//! (rustables) far less maintained than nft itself.

use std::io::Write;
use std::process::{Command, Stdio};

use super::ruleset::{parse_counters, Counters, TABLE};
use crate::dataplane::Error;

/// The nft binary: `OVERLAYD_NFT` if set, else `nft` from `PATH`.
fn nft() -> Command {
    Command::new(std::env::var_os("OVERLAYD_NFT").unwrap_or_else(|| "nft".into()))
}

/// `nft` could not be run or talked to while doing `what`.
fn nft_run(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::NftRun {
        what,
        source,
        hint: "",
    }
}

/// `nft` refused, saying `detail`.
fn nft_failed(what: &'static str, detail: impl std::fmt::Display) -> Error {
    Error::NftFailed {
        what,
        detail: detail.to_string(),
    }
}

/// Applies `script` with `nft -f -` (one transaction).
pub(crate) fn apply(script: &str) -> Result<(), Error> {
    let mut child = nft()
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::NftRun {
            what: "cannot run nft",
            source,
            hint: " (install the nftables package, or use --dataplane userspace)",
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(nft_run("writing the ruleset to nft"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(nft_run("waiting for nft"))?;
    if !out.status.success() {
        return Err(nft_failed(
            "nft -f refused the ruleset",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(())
}

/// The counters of table `inet overlayd`.
pub(crate) fn counters() -> Result<Counters, Error> {
    let out = nft()
        .args(["-j", "list", "counters", "table", "inet", TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(nft_run("cannot run nft"))?;
    if !out.status.success() {
        return Err(nft_failed(
            "nft list counters",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    parse_counters(&out.stdout).map_err(|e| nft_failed("nft list counters", e))
}

/// Whether table `inet overlayd` exists (false also when nft cannot run).
pub(crate) fn table_exists() -> bool {
    has_table("inet", TABLE)
}

/// Deletes table `name` of `family` if it exists; true if it did (`overlayd
/// uninstall`, for the CNI plugin's masquerade tables).
pub(crate) fn delete_table(family: &str, name: &str) -> Result<bool, Error> {
    if !has_table(family, name) {
        return Ok(false);
    }
    apply(&format!("delete table {family} {name}\n"))?;
    Ok(true)
}

/// Whether table `name` of `family` exists (false also when nft cannot run).
fn has_table(family: &str, name: &str) -> bool {
    nft()
        .args(["list", "table", family, name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
