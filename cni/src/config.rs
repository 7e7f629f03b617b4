//! The network configuration read from stdin, and CNI version negotiation.
//!
//! Parsing is two-step so errors get the right code: stdin that is not JSON is code 6,
//! an unsupported `cniVersion` is code 1, and JSON that is not a valid configuration is
//! code 7. Unknown keys are ignored, as the spec asks.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The CNI versions this plugin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// 0.3.0
    V0_3_0,
    /// 0.3.1
    V0_3_1,
    /// 0.4.0 (adds CHECK)
    V0_4_0,
    /// 1.0.0 (drops `ips[].version`)
    V1_0_0,
    /// 1.1.0 (adds GC, STATUS and `interfaces[].mtu`)
    V1_1_0,
}

/// Every supported version, as VERSION lists them.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

impl Version {
    /// Parses a `cniVersion` string.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "0.3.0" => Version::V0_3_0,
            "0.3.1" => Version::V0_3_1,
            "0.4.0" => Version::V0_4_0,
            "1.0.0" => Version::V1_0_0,
            "1.1.0" => Version::V1_1_0,
            _ => {
                return Err(Error::IncompatibleVersion(format!(
                    "cniVersion {s:?} is not supported; supported versions are {}",
                    SUPPORTED_VERSIONS.join(", ")
                )))
            }
        })
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }
}

/// Default `runDir`: where the daemon writes `node.json`.
pub const DEFAULT_RUN_DIR: &str = "/run/overlayd";
/// Default `dataDir`: the IPAM store.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/overlayd";

/// Log verbosity for `logLevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Failures only.
    Error,
    /// Failures and oddities.
    Warn,
    /// One line per command (the default).
    #[default]
    Info,
    /// Every step.
    Debug,
}

/// The `dns` key, passed through to the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A `{containerID, ifname}` pair of GC's valid-attachments list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    /// The container.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface.
    pub ifname: String,
}

#[derive(Debug, Default, Deserialize)]
struct IpsHolder {
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ArgsHolder {
    #[serde(default)]
    cni: Option<IpsHolder>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    name: String,
    #[serde(rename = "type")]
    plugin_type: String,
    #[serde(default)]
    run_dir: Option<PathBuf>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    log_file: Option<PathBuf>,
    #[serde(default)]
    log_level: Option<LogLevel>,
    #[serde(default)]
    runtime_config: Option<IpsHolder>,
    #[serde(default)]
    args: Option<ArgsHolder>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
    #[serde(default, rename = "cni.dev/attachments")]
    attachments: Option<Vec<ValidAttachment>>,
}

/// Where addresses come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Ipam {
    /// The built-in allocator over the node subnet.
    BuiltIn,
    /// Another IPAM plugin from `CNI_PATH`, such as `host-local` or `static`.
    Delegate(String),
}

/// A validated network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// The negotiated version: results and errors are formatted for it.
    pub version: Version,
    /// The network name (`name`).
    pub name: String,
    /// Directory holding `node.json`.
    pub run_dir: PathBuf,
    /// Directory of the IPAM store.
    pub data_dir: PathBuf,
    /// Pod MTU override.
    pub mtu: Option<u32>,
    /// Masquerade traffic leaving the cluster CIDR.
    pub ip_masq: bool,
    /// Enable hairpin on the host veth.
    pub hairpin_mode: bool,
    /// Address management.
    pub ipam: Ipam,
    /// DNS settings returned in the result.
    pub dns: Dns,
    /// Log file (logs never go to stdout).
    pub log_file: Option<PathBuf>,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Requested addresses, in precedence order: runtimeConfig `ips`, `args.cni.ips`.
    pub requested_ips: Vec<String>,
    /// `prevResult`, as given.
    pub prev_result: Option<Value>,
    /// GC's list of attachments to keep (`cni.dev/valid-attachments` or `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

impl NetConf {
    /// Parses stdin into a configuration. Errors carry codes 6, 1 or 7.
    pub fn parse(stdin: &[u8]) -> Result<Self> {
        let value: Value =
            serde_json::from_slice(stdin).map_err(|e| Error::Decode(e.to_string()))?;
        if !value.is_object() {
            return Err(Error::Decode("expected a JSON object".into()));
        }
        let version = match value.get("cniVersion") {
            Some(Value::String(v)) => Version::parse(v)?,
            Some(_) => return Err(Error::InvalidConfig("cniVersion must be a string".into())),
            None => return Err(Error::InvalidConfig("cniVersion is missing".into())),
        };
        let raw: RawConf = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                Error::InvalidConfig(inner.to_string())
            } else {
                Error::InvalidConfig(format!("{path}: {inner}"))
            }
        })?;
        if raw.name.is_empty() {
            return Err(Error::InvalidConfig("name must not be empty".into()));
        }
        if !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(Error::InvalidConfig(format!(
                "name {:?} may contain only letters, digits, '_', '.' and '-'",
                raw.name
            )));
        }
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(Error::InvalidConfig(format!(
                    "mtu {mtu} is outside 68..=65535"
                )));
            }
        }
        let ipam = match &raw.ipam {
            None => Ipam::BuiltIn,
            Some(Value::Object(map)) => match map.get("type") {
                None => Ipam::BuiltIn,
                Some(Value::String(t)) if t.is_empty() || t == &raw.plugin_type => Ipam::BuiltIn,
                Some(Value::String(t)) => {
                    if t.contains('/') || t.starts_with('.') {
                        return Err(Error::InvalidConfig(format!(
                            "ipam.type {t:?} must be a plugin name, not a path"
                        )));
                    }
                    Ipam::Delegate(t.clone())
                }
                Some(_) => return Err(Error::InvalidConfig("ipam.type must be a string".into())),
            },
            Some(_) => return Err(Error::InvalidConfig("ipam must be an object".into())),
        };
        let mut requested_ips = Vec::new();
        if let Some(rc) = raw.runtime_config {
            requested_ips.extend(rc.ips);
        }
        if let Some(cni) = raw.args.and_then(|a| a.cni) {
            requested_ips.extend(cni.ips);
        }
        Ok(NetConf {
            version,
            name: raw.name,
            run_dir: raw.run_dir.unwrap_or_else(|| DEFAULT_RUN_DIR.into()),
            data_dir: raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            mtu: raw.mtu,
            ip_masq: raw.ip_masq,
            hairpin_mode: raw.hairpin_mode,
            ipam,
            dns: raw.dns.unwrap_or_default(),
            log_file: raw.log_file,
            log_level: raw.log_level.unwrap_or_default(),
            requested_ips,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments.or(raw.attachments),
        })
    }

    /// The requested addresses from the config (runtimeConfig `ips`, then
    /// `args.cni.ips`), parsed, in that order; either family, with or without a
    /// prefix length.
    pub fn requested(&self) -> Result<Vec<IpAddr>> {
        self.requested_ips
            .iter()
            .map(|r| {
                r.split('/')
                    .next()
                    .unwrap_or(r)
                    .parse::<IpAddr>()
                    .map_err(|_| {
                        Error::InvalidConfig(format!(
                            "requested address {r:?} is not an IP address"
                        ))
                    })
            })
            .collect()
    }
}

/// The `cniVersion` to use in an error reply when the config could not be fully parsed.
pub fn reply_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"ovl","type":"overlayd-cni","runDir":"/tmp/r",
            "dataDir":"/tmp/d","mtu":1400,"ipMasq":true,"hairpinMode":true,
            "dns":{"nameservers":["10.96.0.10"]},"logFile":"/tmp/l","logLevel":"debug",
            "runtimeConfig":{"ips":["10.244.1.7/24"]},"args":{"cni":{"ips":["10.244.1.8"]}},
            "somethingElse":{"ignored":true}}"#,
        )
        .unwrap();
        assert_eq!(conf.version, Version::V1_0_0);
        assert_eq!(conf.mtu, Some(1400));
        assert!(conf.ip_masq && conf.hairpin_mode);
        assert_eq!(conf.ipam, Ipam::BuiltIn);
        assert_eq!(conf.log_level, LogLevel::Debug);
        // runtimeConfig comes before args.cni.ips.
        assert_eq!(
            conf.requested().unwrap(),
            vec![
                "10.244.1.7".parse::<IpAddr>().unwrap(),
                "10.244.1.8".parse().unwrap()
            ]
        );
        assert_eq!(conf.run_dir, PathBuf::from("/tmp/r"));
    }

    #[test]
    fn defaults_and_delegate() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"ovl","type":"overlayd-cni","ipam":{"type":"host-local"}}"#,
        )
        .unwrap();
        assert_eq!(conf.run_dir, PathBuf::from(DEFAULT_RUN_DIR));
        assert_eq!(conf.ipam, Ipam::Delegate("host-local".into()));
        assert!(!conf.ip_masq);
        assert!(conf.requested().unwrap().is_empty());
    }

    #[test]
    fn error_codes() {
        let cases: &[(&[u8], u32, &str)] = &[
            (b"", 6, "decode"),
            (b"{not json", 6, "decode"),
            (b"[1,2]", 6, "object"),
            (
                br#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#,
                1,
                "0.2.0",
            ),
            (br#"{"name":"n","type":"t"}"#, 7, "cniVersion"),
            (br#"{"cniVersion":"1.0.0","type":"t"}"#, 7, "name"),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":10}"#,
                7,
                "mtu",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":"big"}"#,
                7,
                "invalid type",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"../x"}}"#,
                7,
                "ipam.type",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"a/b","type":"t"}"#,
                7,
                "name",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"t","logLevel":"loud"}"#,
                7,
                "loud",
            ),
        ];
        for (input, code, needle) in cases {
            let err = NetConf::parse(input).unwrap_err();
            assert_eq!(
                err.code(),
                *code,
                "{}: {err}",
                String::from_utf8_lossy(input)
            );
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn gc_attachments_both_keys() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let input = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"t","{key}":[{{"containerID":"c1","ifname":"eth0"}}]}}"#
            );
            let conf = NetConf::parse(input.as_bytes()).unwrap();
            assert_eq!(conf.valid_attachments.unwrap()[0].container_id, "c1");
        }
    }
}
