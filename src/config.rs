//! The daemon's settings: command-line flags (which also read `OVERLAYD_*` environment
//! variables) and their validation.
//!
//! Parsing a single value (a CIDR, a MAC, a static peer) is clap's job through the
//! value parsers here, so its errors already name the flag. [`DaemonArgs::validate`]
//! checks what spans several flags and names every flag involved. Settings that need
//! the host (the default advertise address, the underlay MTU) are resolved at start-up
//! by the daemon.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::dataplane::wire::MacAddr;

/// The default VXLAN UDP port (IANA-assigned, RFC 7348 §5).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;

/// `overlayd`: with no subcommand it runs the daemon.
#[derive(Debug, Parser)]
#[command(
    name = "overlayd",
    version,
    about = "Container overlay network daemon (userspace VXLAN)"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// A client command; without one, the daemon runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Daemon flags.
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Client commands that talk to a running daemon.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the node, its peers and dataplane counters.
    Status {
        /// Print stable JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Where the daemon's socket lives.
        #[arg(long, env = "OVERLAYD_RUN_DIR", default_value = "/run/overlayd")]
        run_dir: PathBuf,
    },
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The daemon's flags.
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// The whole cluster's pod CIDR.
    #[arg(
        long,
        env = "OVERLAYD_CLUSTER_CIDR",
        value_name = "CIDR",
        default_value = "10.244.0.0/16"
    )]
    pub cluster_cidr: IpNet,
    /// This node's pod subnet (inside --cluster-cidr).
    #[arg(long, env = "OVERLAYD_SUBNET", value_name = "CIDR")]
    pub subnet: Option<IpNet>,
    /// This node's name [default: the hostname].
    #[arg(long, env = "OVERLAYD_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Underlay address peers send VXLAN to [default: the address of the interface
    /// that holds the default route].
    #[arg(long, env = "OVERLAYD_ADVERTISE_ADDR", value_name = "IP")]
    pub advertise_addr: Option<IpAddr>,
    /// VXLAN UDP port.
    #[arg(long, env = "OVERLAYD_PORT", value_name = "N", default_value_t = DEFAULT_VXLAN_PORT)]
    pub port: u16,
    /// VXLAN network identifier (24 bits).
    #[arg(long, env = "OVERLAYD_VNI", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=0x00ff_ffff))]
    pub vni: u32,
    /// This node's VTEP MAC [default: random locally administered, kept in --state-dir].
    #[arg(long, env = "OVERLAYD_VTEP_MAC", value_name = "MAC")]
    pub vtep_mac: Option<MacAddr>,
    /// Overlay MTU [default: underlay MTU − 50 (IPv4 underlay) or − 70 (IPv6)].
    #[arg(long, env = "OVERLAYD_MTU", value_name = "N",
          value_parser = clap::value_parser!(u32).range(576..=65_000))]
    pub mtu: Option<u32>,
    /// Name of the node bridge that pods attach to.
    #[arg(long, env = "OVERLAYD_BRIDGE", value_name = "NAME", default_value = "ovl0",
          value_parser = parse_ifname)]
    pub bridge: String,
    /// Name of the TUN device the dataplane reads and writes.
    #[arg(long, env = "OVERLAYD_TUN", value_name = "NAME", default_value = "ovltun0",
          value_parser = parse_ifname)]
    pub tun: String,
    /// Directory for state kept across restarts (VTEP MAC, lease).
    #[arg(
        long,
        env = "OVERLAYD_STATE_DIR",
        value_name = "DIR",
        default_value = "/var/lib/overlayd"
    )]
    pub state_dir: PathBuf,
    /// Directory for runtime files (node.json, the status socket).
    #[arg(
        long,
        env = "OVERLAYD_RUN_DIR",
        value_name = "DIR",
        default_value = "/run/overlayd"
    )]
    pub run_dir: PathBuf,
    /// A peer that owns SUBNET, reached at underlay ADDR, with VTEP MAC MAC; append
    /// `,allow-any-source` to accept inner sources outside SUBNET. Repeatable.
    #[arg(long = "static-peer", env = "OVERLAYD_STATIC_PEERS", value_delimiter = ';',
          value_name = "SUBNET,ADDR[:PORT],MAC", value_parser = parse_static_peer)]
    pub static_peers: Vec<StaticPeer>,
    /// Log filter (tracing syntax); RUST_LOG overrides it.
    #[arg(
        long,
        env = "OVERLAYD_LOG_LEVEL",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "OVERLAYD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A peer given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPeer {
    /// The subnet it owns.
    pub subnet: IpNet,
    /// Its underlay address and VXLAN port.
    pub addr: SocketAddr,
    /// Its VTEP MAC.
    pub mac: MacAddr,
    /// Accept inner source addresses outside `subnet` from it.
    pub allow_any_source: bool,
}

/// A flag or a combination of flags that makes no sense. Every message names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A flag needed for this configuration is missing.
    #[error("{flag} is required: {why}")]
    Missing {
        /// The flag.
        flag: &'static str,
        /// What it is needed for.
        why: &'static str,
    },
    /// A flag's value is wrong given the others.
    #[error("{flag} {value}: {why}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
}

fn invalid(flag: &'static str, value: impl ToString, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_string(),
        why: why.into(),
    }
}

/// Checks that a CIDR has no host bits set and names the one that was meant.
fn check_network(flag: &'static str, net: &IpNet) -> Result<(), ConfigError> {
    if net.addr() != net.network() {
        return Err(invalid(
            flag,
            net,
            format!("host bits are set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(())
}

impl DaemonArgs {
    /// Checks what spans several flags; returns the node subnet.
    pub fn validate(&self) -> Result<IpNet, ConfigError> {
        check_network("--cluster-cidr", &self.cluster_cidr)?;
        let subnet = self.subnet.ok_or(ConfigError::Missing {
            flag: "--subnet",
            why: "this node's pod subnet, for example 10.244.1.0/24 inside --cluster-cidr",
        })?;
        check_network("--subnet", &subnet)?;
        if !self.cluster_cidr.contains(&subnet) {
            return Err(invalid(
                "--subnet",
                subnet,
                format!("is not inside --cluster-cidr {}", self.cluster_cidr),
            ));
        }
        let host_bits = subnet.max_prefix_len() - subnet.prefix_len();
        if host_bits < 2 {
            return Err(invalid("--subnet", subnet, "is too small: a node subnet needs at least a gateway and one pod address (/30 or larger for IPv4)"));
        }
        if let Some(name) = &self.node_name {
            if name.is_empty()
                || name.len() > 253
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(
                    "--node-name",
                    name,
                    "must be 1 to 253 characters without spaces",
                ));
            }
        }
        if self.bridge == self.tun {
            return Err(invalid("--tun", &self.tun, "must differ from --bridge"));
        }
        if let Some(mac) = self.vtep_mac {
            if mac.is_multicast() || mac.0 == [0; 6] {
                return Err(invalid(
                    "--vtep-mac",
                    mac,
                    "must be a unicast, non-zero MAC",
                ));
            }
        }
        for (i, peer) in self.static_peers.iter().enumerate() {
            let value = format!("{},{},{}", peer.subnet, peer.addr, peer.mac);
            check_network("--static-peer", &peer.subnet)?;
            if !self.cluster_cidr.contains(&peer.subnet) {
                return Err(invalid(
                    "--static-peer",
                    value,
                    format!("subnet is not inside --cluster-cidr {}", self.cluster_cidr),
                ));
            }
            if overlaps(&peer.subnet, &subnet) {
                return Err(invalid(
                    "--static-peer",
                    value,
                    format!("subnet overlaps this node's --subnet {subnet}"),
                ));
            }
            for other in &self.static_peers[..i] {
                if overlaps(&peer.subnet, &other.subnet) {
                    return Err(invalid(
                        "--static-peer",
                        value,
                        format!("subnet overlaps another --static-peer's {}", other.subnet),
                    ));
                }
                if other.addr.ip() == peer.addr.ip() {
                    return Err(invalid(
                        "--static-peer",
                        value,
                        format!("underlay address {} is given twice", peer.addr.ip()),
                    ));
                }
            }
            if let Some(adv) = self.advertise_addr {
                if adv.is_ipv4() != peer.addr.is_ipv4() {
                    return Err(invalid(
                        "--static-peer",
                        value,
                        format!("address family differs from --advertise-addr {adv}"),
                    ));
                }
            }
        }
        Ok(subnet)
    }
}

/// True when one network contains the other's network address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parses `SUBNET,ADDR[:PORT],MAC[,allow-any-source]`; ADDR may be IPv6 in brackets
/// when a port is given (`[fd00::1]:4789`).
pub fn parse_static_peer(s: &str) -> Result<StaticPeer, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let usage = "expected SUBNET,ADDR[:PORT],MAC[,allow-any-source], e.g. 10.244.2.0/24,198.18.0.2,02:00:00:00:00:02";
    if !(3..=4).contains(&parts.len()) {
        return Err(format!("'{s}': {usage}"));
    }
    let subnet: IpNet = parts[0]
        .parse()
        .map_err(|_| format!("'{}' is not a subnet in CIDR form ({usage})", parts[0]))?;
    let addr = match parts[1].parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let ip: IpAddr = parts[1]
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| format!("'{}' is not an IP address or IP:PORT ({usage})", parts[1]))?;
            SocketAddr::new(ip, DEFAULT_VXLAN_PORT)
        }
    };
    if addr.port() == 0 {
        return Err(format!("'{}': port 0 is not a VXLAN port", parts[1]));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!("'{}' is not a unicast address", parts[1]));
    }
    let mac: MacAddr = parts[2].parse().map_err(|e| format!("{e}"))?;
    if mac.is_multicast() || mac.0 == [0; 6] {
        return Err(format!("'{}' must be a unicast, non-zero MAC", parts[2]));
    }
    let allow_any_source = match parts.get(3) {
        None => false,
        Some(&"allow-any-source") => true,
        Some(other) => return Err(format!("unknown option '{other}' ({usage})")),
    };
    Ok(StaticPeer {
        subnet,
        addr,
        mac,
        allow_any_source,
    })
}

/// Checks a Linux interface name: 1 to 15 bytes, no '/', ':' or white space.
pub fn parse_ifname(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!(
            "'{s}' must be 1 to 15 bytes long (a Linux interface name)"
        ));
    }
    if s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) || s == "." || s == ".." {
        return Err(format!("'{s}' is not a valid interface name"));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<DaemonArgs, String> {
        let mut argv = vec!["overlayd"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .map(|c| c.daemon)
            .map_err(|e| e.to_string())
    }

    fn validate(args: &[&str]) -> Result<IpNet, String> {
        parse(args)?.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let a = parse(&["--subnet", "10.244.1.0/24"]).unwrap();
        assert_eq!(a.cluster_cidr, "10.244.0.0/16".parse::<IpNet>().unwrap());
        assert_eq!(a.port, 4789);
        assert_eq!(a.vni, 1);
        assert_eq!(a.bridge, "ovl0");
        assert_eq!(
            validate(&["--subnet", "10.244.1.0/24"]).unwrap(),
            "10.244.1.0/24".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &[
                    "--cluster-cidr",
                    "10.244.0.0/33",
                    "--subnet",
                    "10.244.1.0/24",
                ],
                "--cluster-cidr",
            ),
            (&["--subnet", "banana"], "--subnet"),
            (&["--subnet", "10.245.1.0/24"], "--subnet"),
            (&["--subnet", "10.244.1.5/24"], "did you mean 10.244.1.0/24"),
            (&[], "--subnet is required"),
            (
                &[
                    "--subnet",
                    "10.244.1.0/24",
                    "--static-peer",
                    "10.244.2.0/24,198.18.0.2",
                ],
                "--static-peer",
            ),
            (
                &[
                    "--subnet",
                    "10.244.1.0/24",
                    "--static-peer",
                    "10.244.2.0/24,nowhere,02:00:00:00:00:02",
                ],
                "--static-peer",
            ),
            (
                &[
                    "--subnet",
                    "10.244.1.0/24",
                    "--static-peer",
                    "10.244.2.0/24,198.18.0.2,zz:00:00:00:00:02",
                ],
                "--static-peer",
            ),
            (
                &[
                    "--subnet",
                    "10.244.1.0/24",
                    "--static-peer",
                    "10.244.1.0/25,198.18.0.2,02:00:00:00:00:02",
                ],
                "overlaps this node's --subnet",
            ),
            (
                &[
                    "--subnet",
                    "10.244.1.0/24",
                    "--static-peer",
                    "10.99.0.0/24,198.18.0.2,02:00:00:00:00:02",
                ],
                "--cluster-cidr",
            ),
            (&["--subnet", "10.244.1.0/24", "--vni", "16777216"], "--vni"),
            (
                &[
                    "--subnet",
                    "10.244.1.0/24",
                    "--vtep-mac",
                    "01:00:00:00:00:01",
                ],
                "--vtep-mac",
            ),
            (
                &[
                    "--subnet",
                    "10.244.1.0/24",
                    "--bridge",
                    "a-name-much-too-long",
                ],
                "--bridge",
            ),
            (&["--subnet", "10.244.1.0/24", "--mtu", "100"], "--mtu"),
        ];
        for (args, needle) in cases {
            let err = validate(args).expect_err(needle);
            assert!(
                err.contains(needle),
                "{args:?}: '{err}' does not name {needle}"
            );
        }
    }

    #[test]
    fn static_peer_forms() {
        let p = parse_static_peer("10.244.2.0/24,198.18.0.2,02:00:00:00:00:02").unwrap();
        assert_eq!(p.addr, "198.18.0.2:4789".parse().unwrap());
        assert!(!p.allow_any_source);
        let p =
            parse_static_peer("10.244.2.0/24, 198.18.0.2:8472 ,02:00:00:00:00:02,allow-any-source")
                .unwrap();
        assert_eq!(p.addr.port(), 8472);
        assert!(p.allow_any_source);
        let p = parse_static_peer("fd00:2::/64,[2001:db8::2]:4789,02:00:00:00:00:02").unwrap();
        assert_eq!(p.addr, "[2001:db8::2]:4789".parse().unwrap());
        let p = parse_static_peer("fd00:2::/64,2001:db8::2,02:00:00:00:00:02").unwrap();
        assert_eq!(p.addr.port(), 4789);
        assert!(parse_static_peer("10.244.2.0/24,198.18.0.2:0,02:00:00:00:00:02").is_err());
        assert!(parse_static_peer("10.244.2.0/24,198.18.0.2,02:00:00:00:00:02,bogus").is_err());
    }

    #[test]
    fn subcommand_and_daemon_flags_do_not_mix() {
        let argv = ["overlayd", "status", "--json"];
        let cli = Cli::try_parse_from(argv).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Status { json: true, .. })
        ));
    }
}
