//! The runtime's side of the call: `CNI_*` environment variables, behind the [`Env`] trait.
//!
//! Tests inject a map instead of the process environment (the rscni `Env` pattern). This
//! module only parses and validates; it performs no I/O besides reading variables.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::error::{Error, Result};

/// Source of environment variables.
pub trait Env {
    /// The value of `key`, or `None` if it is unset or not UTF-8.
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

/// The `CNI_COMMAND` values the spec defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Release everything not in the valid-attachments list (1.1.0).
    Gc,
    /// Report whether ADD can succeed (1.1.0).
    Status,
    /// Report the supported versions.
    Version,
}

impl Command {
    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// Parses `CNI_COMMAND`.
    pub fn from_env(env: &impl Env) -> Result<Self> {
        let value = env
            .var("CNI_COMMAND")
            .ok_or(Error::MissingEnv("CNI_COMMAND"))?;
        Ok(match value.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => {
                return Err(Error::InvalidEnv {
                    var: "CNI_COMMAND",
                    value,
                    reason: "expected ADD, DEL, CHECK, GC, STATUS or VERSION".into(),
                })
            }
        })
    }
}

/// The per-attachment variables of ADD, DEL and CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface name inside the container.
    pub ifname: String,
    /// `CNI_NETNS`: path of the container's network namespace (optional for DEL).
    pub netns: Option<String>,
    /// `CNI_ARGS`, split into `KEY=VALUE` pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<String>,
}

impl Attachment {
    /// Reads and validates the attachment variables; `netns_required` is true for ADD and CHECK.
    pub fn from_env(env: &impl Env, netns_required: bool) -> Result<Self> {
        let container_id = non_empty(env, "CNI_CONTAINERID")?;
        validate_container_id(&container_id)?;
        let ifname = non_empty(env, "CNI_IFNAME")?;
        validate_ifname(&ifname)?;
        let netns = env.var("CNI_NETNS").filter(|v| !v.is_empty());
        if netns_required && netns.is_none() {
            return Err(Error::MissingEnv("CNI_NETNS"));
        }
        let args = match env.var("CNI_ARGS") {
            Some(raw) => parse_cni_args(&raw)?,
            None => Vec::new(),
        };
        let path = env
            .var("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Attachment {
            container_id,
            ifname,
            netns,
            args,
            path,
        })
    }

    /// The addresses requested with `CNI_ARGS` `IP=` (none if not given).
    pub fn requested(&self) -> Result<Vec<IpAddr>> {
        let Some((_, value)) = self.args.iter().find(|(k, _)| k == "IP") else {
            return Ok(Vec::new());
        };
        // `IP=` may carry a prefix length (static IPAM accepts both forms), and one
        // address per family, comma-separated (as host-local takes it).
        value
            .split(',')
            .map(|a| {
                a.split('/')
                    .next()
                    .unwrap_or(a)
                    .parse()
                    .map_err(|_| Error::InvalidEnv {
                        var: "CNI_ARGS",
                        value: format!("IP={value}"),
                        reason: "IP must be IP addresses, comma-separated".into(),
                    })
            })
            .collect()
    }
}

fn non_empty(env: &impl Env, var: &'static str) -> Result<String> {
    env.var(var)
        .filter(|v| !v.is_empty())
        .ok_or(Error::MissingEnv(var))
}

/// Container IDs are alphanumeric plus `_`, `.` and `-` (the spec's rule), which also keeps
/// them safe inside store file contents.
fn validate_container_id(id: &str) -> Result<()> {
    let ok_first = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_first
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(())
    } else {
        Err(Error::InvalidEnv {
            var: "CNI_CONTAINERID",
            value: id.to_owned(),
            reason: "must start with a letter or digit and contain only letters, digits, '_', '.' and '-'".into(),
        })
    }
}

/// Linux interface names: at most 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
fn validate_ifname(name: &str) -> Result<()> {
    let reason = if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is not a valid interface name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidEnv {
            var: "CNI_IFNAME",
            value: name.to_owned(),
            reason: reason.into(),
        }),
    }
}

/// Splits `CNI_ARGS` (`K1=V1;K2=V2`) into pairs.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>> {
    raw.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Error::InvalidEnv {
                var: "CNI_ARGS",
                value: raw.to_owned(),
                reason: format!("{kv:?} is not KEY=VALUE"),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn command_parsing() {
        assert_eq!(
            Command::from_env(&env(&[("CNI_COMMAND", "ADD")])).unwrap(),
            Command::Add
        );
        let e = Command::from_env(&env(&[])).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("CNI_COMMAND"));
        let e = Command::from_env(&env(&[("CNI_COMMAND", "ATTACH")])).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("ATTACH"));
    }

    #[test]
    fn attachment_validation() {
        let ok = env(&[
            ("CNI_CONTAINERID", "abc-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.1.9"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]);
        let a = Attachment::from_env(&ok, true).unwrap();
        assert_eq!(
            a.requested().unwrap(),
            vec!["10.244.1.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(a.path.len(), 2);

        let mut no_netns = ok.clone();
        no_netns.remove("CNI_NETNS");
        assert!(Attachment::from_env(&no_netns, false).is_ok());
        let e = Attachment::from_env(&no_netns, true).unwrap_err();
        assert!(e.to_string().contains("CNI_NETNS"));

        for (var, bad) in [
            ("CNI_IFNAME", "a-very-long-interface"),
            ("CNI_IFNAME", "eth/0"),
            ("CNI_CONTAINERID", "../etc"),
            ("CNI_ARGS", "IP"),
        ] {
            let mut e = ok.clone();
            e.insert(var.into(), bad.into());
            let err = Attachment::from_env(&e, true).unwrap_err();
            assert_eq!(err.code(), 4, "{var}={bad}");
            assert!(err.to_string().contains(var), "{err}");
        }
        let mut bad_ip = ok.clone();
        bad_ip.insert("CNI_ARGS".into(), "IP=10.244.1".into());
        let a = Attachment::from_env(&bad_ip, true).unwrap();
        assert_eq!(a.requested().unwrap_err().code(), 4);
    }
}
