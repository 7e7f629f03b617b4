//! The ADD result, and its shape for each CNI version.
//!
//! [`CniResult`] is version-independent; [`CniResult::to_json`] emits the shape a version
//! defines (0.3.x/0.4.0 carry `ips[].version`, 1.1.0 adds `interfaces[].mtu`), and
//! [`CniResult::from_json`] reads any of them back (`prevResult`, a delegate's answer).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Map, Value};

use crate::config::{Dns, Version};
use crate::error::{Error, Result};

/// An interface the plugin created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Netns path for container interfaces; `None` for host interfaces.
    pub sandbox: Option<String>,
    /// MTU (emitted for 1.1.0 only).
    pub mtu: Option<u32>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix length.
    pub address: IpNet,
    /// Default gateway for this address.
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// A route in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; `None` means the address's gateway (of the same family).
    pub gw: Option<IpAddr>,
}

/// A version-independent CNI result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS settings.
    pub dns: Dns,
}

impl CniResult {
    /// Emits the result in the shape `version` defines.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                o.insert("mac".into(), json!(i.mac));
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                if let (Some(mtu), Version::V1_1_0) = (i.mtu, version) {
                    o.insert("mtu".into(), json!(mtu));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version < Version::V1_0_0 {
                    let v = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    o.insert("version".into(), json!(v));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| match r.gw {
                Some(gw) => json!({"dst": r.dst.to_string(), "gw": gw.to_string()}),
                None => json!({"dst": r.dst.to_string()}),
            })
            .collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns,
        })
    }

    /// Reads a result of any supported version, both address families.
    pub fn from_json(value: &Value) -> Result<Self> {
        let bad = |what: &str| Error::InvalidConfig(format!("result/prevResult: {what}"));
        let obj = value.as_object().ok_or_else(|| bad("not an object"))?;
        let mut out = CniResult::default();
        for i in array(obj.get("interfaces")) {
            out.interfaces.push(Interface {
                name: str_field(i, "name").ok_or_else(|| bad("interface without name"))?,
                mac: str_field(i, "mac").unwrap_or_default(),
                sandbox: str_field(i, "sandbox").filter(|s| !s.is_empty()),
                mtu: i.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
            });
        }
        for ip in array(obj.get("ips")) {
            let address =
                str_field(ip, "address").ok_or_else(|| bad("ips entry without address"))?;
            let address: IpNet = address
                .parse()
                .map_err(|_| bad(&format!("address {address:?} is not a CIDR")))?;
            let gateway = match str_field(ip, "gateway") {
                Some(g) => match g.parse::<IpAddr>() {
                    Ok(g) if g.is_ipv4() == address.addr().is_ipv4() => Some(g),
                    _ => {
                        return Err(bad(&format!(
                            "gateway {g:?} is not an address of {address}'s family"
                        )))
                    }
                },
                None => None,
            };
            out.ips.push(IpConfig {
                address,
                gateway,
                interface: ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|i| i as usize),
            });
        }
        for r in array(obj.get("routes")) {
            let dst = str_field(r, "dst").ok_or_else(|| bad("route without dst"))?;
            let dst: IpNet = dst
                .parse()
                .map_err(|_| bad(&format!("route dst {dst:?} is not a CIDR")))?;
            let gw = str_field(r, "gw").and_then(|g| g.parse().ok());
            out.routes.push(Route { dst, gw });
        }
        if let Some(dns) = obj.get("dns") {
            out.dns = serde_json::from_value(dns.clone()).map_err(|e| bad(&format!("dns: {e}")))?;
        }
        Ok(out)
    }
}

fn array(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "ovlv0123456789a".into(),
                    mac: "0a:58:0a:f4:01:01".into(),
                    sandbox: None,
                    mtu: Some(1450),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:05".into(),
                    sandbox: Some("/var/run/netns/p".into()),
                    mtu: Some(1450),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00:10:244:1::5/64".parse().unwrap(),
                    gateway: Some("fd00:10:244:1::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: Some("10.244.1.1".parse().unwrap()),
                },
                Route {
                    dst: "::/0".parse().unwrap(),
                    gw: Some("fd00:10:244:1::1".parse().unwrap()),
                },
            ],
            dns: Dns::default(),
        }
    }

    #[test]
    fn shapes_per_version() {
        let r = sample();
        let v031 = r.to_json(Version::V0_3_1);
        assert_eq!(v031["cniVersion"], "0.3.1");
        assert_eq!(v031["ips"][0]["version"], "4");
        assert_eq!(v031["ips"][1]["version"], "6");
        assert_eq!(v031["routes"][1]["dst"], "::/0");
        assert!(v031["interfaces"][1].get("mtu").is_none());
        let v100 = r.to_json(Version::V1_0_0);
        assert!(v100["ips"][0].get("version").is_none());
        assert!(v100["interfaces"][1].get("mtu").is_none());
        assert_eq!(v100["ips"][0]["interface"], 1);
        assert_eq!(v100["routes"][0]["dst"], "0.0.0.0/0");
        let v110 = r.to_json(Version::V1_1_0);
        assert_eq!(v110["interfaces"][1]["mtu"], 1450);
        assert_eq!(v110["interfaces"][1]["sandbox"], "/var/run/netns/p");
        assert!(v110["interfaces"][0].get("sandbox").is_none());
    }

    #[test]
    fn round_trip_every_version() {
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let version = Version::parse(v).unwrap();
            let back = CniResult::from_json(&sample().to_json(version)).unwrap();
            let mut expect = sample();
            if version != Version::V1_1_0 {
                expect.interfaces.iter_mut().for_each(|i| i.mtu = None);
            }
            assert_eq!(back, expect, "{v}");
        }
    }

    #[test]
    fn reads_delegate_results() {
        // host-local 0.4.0 style, dual-stack.
        let r = CniResult::from_json(&json!({
            "cniVersion":"0.4.0",
            "ips":[{"version":"4","address":"10.244.1.2/24","gateway":"10.244.1.1"},
                   {"version":"6","address":"fd00::2/64"}],
            "dns":{}
        }))
        .unwrap();
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.ips[0].gateway, Some("10.244.1.1".parse().unwrap()));
        assert_eq!(r.ips[1].address, "fd00::2/64".parse().unwrap());
        let e = CniResult::from_json(&json!({
            "ips":[{"address":"fd00::2/64","gateway":"10.244.1.1"}]
        }))
        .unwrap_err();
        assert!(e.to_string().contains("family"), "{e}");
        let e = CniResult::from_json(&json!({"ips":[{"address":"nope"}]})).unwrap_err();
        assert!(e.to_string().contains("nope"));
    }
}
