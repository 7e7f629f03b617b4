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
pub(crate) const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Default UDP port of the encrypted dataplane (WireGuard's own default).
pub(crate) const DEFAULT_WG_PORT: u16 = 51820;

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
    /// Why can't this node reach a pod? Checks owner, peer state, routes, devices
    /// and recent VXLAN answers, and prints a verdict with the evidence.
    Diagnose {
        /// The pod: its address, or NAMESPACE/NAME of a pod on this node.
        #[arg(value_name = "POD_IP|NAMESPACE/NAME", value_parser = parse_diagnose_target)]
        target: DiagnoseTarget,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Where the daemon's socket lives.
        #[arg(long, env = "OVERLAYD_RUN_DIR", default_value = "/run/overlayd")]
        run_dir: PathBuf,
    },
    /// List the pods on this node: address(es), namespace/name, container, interface,
    /// host veth, age, and whether each still runs (from the CNI plugin's store).
    Pods {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Where the daemon's socket lives.
        #[arg(long, env = "OVERLAYD_RUN_DIR", default_value = "/run/overlayd")]
        run_dir: PathBuf,
    },
    /// Release this node's subnet to the cluster, leave, and stop the daemon.
    Leave {
        /// Where the daemon's socket lives.
        #[arg(long, env = "OVERLAYD_RUN_DIR", default_value = "/run/overlayd")]
        run_dir: PathBuf,
    },
    /// Take over a dead node's subnet now instead of after --reclaim-after.
    ///
    /// Only for a node known to be gone for good: if NAME is in fact alive behind a
    /// network partition, two nodes use the same subnet until the partition heals,
    /// and pods on both answer for the same addresses.
    Rmpeer {
        /// The node's name.
        name: String,
        /// Where the daemon's socket lives.
        #[arg(long, env = "OVERLAYD_RUN_DIR", default_value = "/run/overlayd")]
        run_dir: PathBuf,
    },
    /// Print a new random cluster key for --secret-file.
    Genkey,
    /// Print this node's WireGuard public key (base64, as `wg pubkey` prints keys),
    /// making the key pair in the state dir if there is none yet.
    Pubkey {
        /// The node's state dir.
        #[arg(long, env = "OVERLAYD_STATE_DIR", default_value = "/var/lib/overlayd")]
        state_dir: PathBuf,
    },
    /// Make a new WireGuard key pair, switch the running daemon to it and publish
    /// it; peers hand shake again with the new key.
    RotateKey {
        /// Where the daemon's socket lives.
        #[arg(long, env = "OVERLAYD_RUN_DIR", default_value = "/run/overlayd")]
        run_dir: PathBuf,
    },
    /// Remove overlayd from this host: the CNI conflist and plugin, the devices, their
    /// routes, the nftables table, and the files in the run and state dirs.
    ///
    /// Takes the daemon's flags (and --config), so it finds what that daemon made.
    /// Refuses while the daemon runs. A plain stop, restart or upgrade removes none
    /// of these; this is the explicit last step of an uninstall.
    Uninstall {
        /// After removing, keep running until SIGTERM (for a DaemonSet, whose pods
        /// must not exit).
        #[arg(long)]
        wait: bool,
        /// The daemon's flags.
        #[command(flatten)]
        daemon: Box<DaemonArgs>,
    },
    /// Show the node, its peers and dataplane counters.
    Status {
        /// Show only one part: `peers` or `leases`.
        #[arg(value_enum)]
        part: Option<StatusPart>,
        /// Print stable JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Where the daemon's socket lives.
        #[arg(long, env = "OVERLAYD_RUN_DIR", default_value = "/run/overlayd")]
        run_dir: PathBuf,
    },
}

/// What `overlayd diagnose` asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiagnoseTarget {
    /// A pod address.
    Ip(IpAddr),
    /// A pod on this node by its Kubernetes namespace and name.
    Pod {
        /// `K8S_POD_NAMESPACE`.
        namespace: String,
        /// `K8S_POD_NAME`.
        name: String,
    },
}

/// Parses `diagnose`'s argument: an address, or `NAMESPACE/NAME`.
pub(crate) fn parse_diagnose_target(s: &str) -> Result<DiagnoseTarget, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(DiagnoseTarget::Ip(ip));
    }
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(DiagnoseTarget::Pod {
                namespace: ns.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(format!(
            "'{s}' is neither a pod address (10.244.1.5, fd00:10:244:1::5) nor NAMESPACE/NAME"
        )),
    }
}

/// A part of `overlayd status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusPart {
    /// Every peer with its state, address, subnet and traffic.
    Peers,
    /// This node's lease and the cluster's lease usage.
    Leases,
}

/// Which dataplane carries pod traffic to peers (`--dataplane`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DataplaneChoice {
    /// The kernel's vxlan device where one can be created and nothing asked for
    /// needs userspace; the userspace dataplane otherwise.
    #[default]
    Auto,
    /// A kernel vxlan device programmed over rtnetlink, as flannel does.
    Kernel,
    /// The userspace dataplane on a TUN device.
    Userspace,
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
    /// A TOML file holding any of these flags as keys (`cluster_cidr = "..."`); a
    /// flag or an OVERLAYD_* variable overrides the file.
    #[arg(long, env = "OVERLAYD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Which flags came from `--config`, to name the key and file in errors.
    #[arg(skip)]
    pub from_file: Option<FileKeys>,
    /// The whole cluster's pod CIDR: one IPv4 CIDR, one IPv6 CIDR, or one of each
    /// for dual-stack (`10.244.0.0/16,fd00:10:244::/56`), as kube-controller-manager
    /// takes it. A dual-stack node leases one subnet of each.
    #[arg(
        long,
        env = "OVERLAYD_CLUSTER_CIDR",
        value_name = "CIDR[,CIDR]",
        default_value = "10.244.0.0/16"
    )]
    pub cluster_cidr: ClusterCidrs,
    /// A fixed pod subnet for this node (inside --cluster-cidr), instead of a lease
    /// agreed by gossip.
    #[arg(
        long,
        env = "OVERLAYD_SUBNET",
        value_name = "CIDR",
        conflicts_with = "peers"
    )]
    pub subnet: Option<IpNet>,
    /// Seed peers to join (gossip addresses, HOST[:PORT], comma-separated). The node
    /// learns the rest of the cluster from them and leases a subnet by gossip. A new
    /// cluster is founded once a majority of this node and its peers have met and
    /// agree (docs/founding.md). Without --peers and --subnet, this node founds a new
    /// cluster at once.
    #[arg(
        long,
        env = "OVERLAYD_PEERS",
        value_name = "HOST[:PORT],...",
        value_delimiter = ','
    )]
    pub peers: Vec<String>,
    /// Found a new cluster once a majority of N nodes started with the same N have
    /// met, instead of a majority of this node and its --peers (like Consul's
    /// -bootstrap-expect). Give every node of the new cluster the same N.
    #[arg(
        long,
        env = "OVERLAYD_BOOTSTRAP_EXPECT",
        value_name = "N",
        value_parser = parse_bootstrap_expect
    )]
    pub bootstrap_expect: Option<u32>,
    /// UDP port for gossip.
    #[arg(long, env = "OVERLAYD_GOSSIP_PORT", value_name = "N", default_value_t = crate::control::driver::DEFAULT_GOSSIP_PORT)]
    pub gossip_port: u16,
    /// Prefix length of each node's subnet lease, carved from --cluster-cidr (its
    /// IPv4 CIDR, or its only one in an IPv6-only cluster).
    #[arg(
        long,
        env = "OVERLAYD_SUBNET_LEN",
        value_name = "N",
        default_value_t = 24
    )]
    pub subnet_len: u8,
    /// Prefix length of each node's IPv6 subnet in a dual-stack cluster, carved from
    /// the IPv6 CIDR of --cluster-cidr. (In an IPv6-only cluster, --subnet-len
    /// applies.)
    #[arg(
        long,
        env = "OVERLAYD_SUBNET_LEN_V6",
        value_name = "N",
        default_value_t = 64
    )]
    pub subnet_len_v6: u8,
    /// How long a node must stay dead before its subnet is reclaimed (e.g. 24h, 90m).
    #[arg(long, env = "OVERLAYD_RECLAIM_AFTER", value_name = "DURATION", default_value = "24h",
          value_parser = parse_duration)]
    pub reclaim_after: std::time::Duration,
    /// Release this node's subnet when the daemon is stopped (SIGTERM/SIGINT).
    #[arg(long, env = "OVERLAYD_LEAVE_ON_EXIT")]
    pub leave_on_exit: bool,
    /// File with the cluster key that signs all gossip: one key per line, two during
    /// a rotation (the first signs, both are accepted). Re-read on SIGHUP. Make one
    /// with `overlayd genkey`. Without it, any host on the underlay can join.
    #[arg(long, env = "OVERLAYD_SECRET_FILE", value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Encrypt pod traffic between nodes with WireGuard (Noise IK, ChaCha20-Poly1305)
    /// in the userspace dataplane. Cluster-wide: every node must set it alike. Needs
    /// --secret-file, which authenticates the public keys that gossip carries.
    #[arg(long, env = "OVERLAYD_ENCRYPT")]
    pub encrypt: bool,
    /// UDP port of the encrypted dataplane (WireGuard) with --encrypt.
    #[arg(long, env = "OVERLAYD_WG_PORT", value_name = "N", default_value_t = DEFAULT_WG_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub wg_port: u16,
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
    /// Which dataplane carries pod traffic: `kernel` (a vxlan device the daemon
    /// programs), `userspace` (the TUN dataplane) or `auto` (kernel where a vxlan
    /// device can be created and nothing asked for needs userspace).
    #[arg(long, env = "OVERLAYD_DATAPLANE", value_enum, default_value_t = DataplaneChoice::Auto)]
    pub dataplane: DataplaneChoice,
    /// Name of the kernel vxlan device of the kernel dataplane.
    #[arg(long, env = "OVERLAYD_VXLAN_DEVICE", value_name = "NAME", default_value = "ovlvx0",
          value_parser = parse_ifname)]
    pub vxlan_device: String,
    /// Dataplane worker threads, each with its own TUN queue and VXLAN socket;
    /// 0 means one per available core.
    #[arg(long, env = "OVERLAYD_WORKERS", value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub workers: u16,
    /// How long an idle dataplane worker keeps polling after its last packet
    /// before it sleeps (e.g. 20ms; 0 sleeps at once). Saves the thread wake-ups
    /// that dominate pod-to-pod latency on VMs, at the cost of up to one core per
    /// worker while traffic keeps arriving within the window.
    #[arg(long, env = "OVERLAYD_BUSY_POLL", value_name = "DURATION", default_value = "0s",
          value_parser = parse_busy_poll)]
    pub busy_poll: std::time::Duration,
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
    /// A peer that owns SUBNET, reached at underlay ADDR, with VTEP MAC MAC (a VXLAN
    /// node), or with `wg-key=BASE64` in place of the MAC (a plain WireGuard peer,
    /// with --encrypt; PORT defaults to 51820); append `,allow-any-source` to accept
    /// inner sources outside SUBNET. Repeatable.
    #[arg(long = "static-peer", alias = "static-peers", env = "OVERLAYD_STATIC_PEERS", value_delimiter = ';',
          value_name = "SUBNET,ADDR[:PORT],MAC|wg-key=KEY", value_parser = parse_static_peer)]
    pub static_peers: Vec<StaticPeer>,
    /// Install the CNI plugin and its conflist on the host at start-up (as a
    /// DaemonSet does), writing only what changed.
    #[arg(long, env = "OVERLAYD_INSTALL_CNI")]
    pub install_cni: bool,
    /// CNI bin dir that --install-cni copies overlayd-cni into.
    #[arg(
        long,
        env = "OVERLAYD_CNI_BIN_DIR",
        value_name = "DIR",
        default_value = "/opt/cni/bin"
    )]
    pub cni_bin_dir: PathBuf,
    /// CNI conf dir that --install-cni writes the conflist into.
    #[arg(
        long,
        env = "OVERLAYD_CNI_CONF_DIR",
        value_name = "DIR",
        default_value = "/etc/cni/net.d"
    )]
    pub cni_conf_dir: PathBuf,
    /// The overlayd-cni binary --install-cni copies [default: next to overlayd].
    #[arg(long, env = "OVERLAYD_CNI_PLUGIN", value_name = "PATH")]
    pub cni_plugin: Option<PathBuf>,
    /// File name of the conflist --install-cni writes.
    #[arg(
        long,
        env = "OVERLAYD_CNI_CONFLIST",
        value_name = "NAME",
        default_value = "10-overlayd.conflist"
    )]
    pub cni_conflist: String,
    /// The CNI plugin's IPAM store (its `dataDir`, written into the conflist that
    /// --install-cni writes): the daemon lists the pods there (`overlayd pods`) and
    /// frees the addresses of pods gone for --reclaim-pod-after [default:
    /// /var/lib/cni/overlayd with --install-cni, else none].
    #[arg(long, env = "OVERLAYD_CNI_DATA_DIR", value_name = "DIR")]
    pub cni_data_dir: Option<PathBuf>,
    /// Free a pod's addresses once its netns and its host veth have both been gone
    /// this long (a DEL that never came); `0s` turns the reclaim off.
    #[arg(long, env = "OVERLAYD_RECLAIM_POD_AFTER", value_name = "DURATION", default_value = "60s",
          value_parser = parse_duration)]
    pub reclaim_pod_after: std::time::Duration,
    /// Address for Prometheus `/metrics` and `/healthz`, or `off`.
    #[arg(
        long,
        env = "OVERLAYD_METRICS_ADDR",
        value_name = "ADDR|off",
        default_value = "127.0.0.1:9469"
    )]
    pub metrics_addr: MetricsAddr,
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

/// Where metrics are served, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddr {
    /// No metrics listener.
    Off,
    /// Listen on this address.
    On(SocketAddr),
}

impl std::str::FromStr for MetricsAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<MetricsAddr, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(MetricsAddr::Off);
        }
        s.parse()
            .map(MetricsAddr::On)
            .map_err(|_| format!("'{s}' is neither IP:PORT (e.g. 127.0.0.1:9469) nor 'off'"))
    }
}

/// A peer given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPeer {
    /// The subnet it owns.
    pub(crate) subnet: IpNet,
    /// Its underlay address and VXLAN port.
    pub(crate) addr: SocketAddr,
    /// Its VTEP MAC.
    pub(crate) mac: MacAddr,
    /// Accept inner source addresses outside `subnet` from it.
    pub(crate) allow_any_source: bool,
    /// A plain WireGuard peer's public key (`wg-key=`); `mac` is then unused (zero).
    pub wg_key: Option<[u8; 32]>,
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
/// `--cluster-cidr`: the cluster's pod CIDR, or its IPv4 and IPv6 CIDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidrs {
    /// The CIDR leases are numbered in: the IPv4 one, or the only one.
    pub primary: IpNet,
    /// Dual-stack: the IPv6 CIDR. A node's IPv6 subnet has the same index in it as
    /// its primary subnet has in `primary`, so one lease gives both.
    pub second: Option<IpNet>,
}

impl ClusterCidrs {
    /// Both CIDRs, the primary first.
    pub(crate) fn all(&self) -> impl Iterator<Item = IpNet> {
        std::iter::once(self.primary).chain(self.second)
    }
}

impl std::fmt::Display for ClusterCidrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.primary)?;
        if let Some(s) = self.second {
            write!(f, ",{s}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ClusterCidrs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nets = s
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<IpNet>()
                    .map_err(|e| format!("`{}`: {e}", p.trim()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        match nets[..] {
            [one] => Ok(ClusterCidrs {
                primary: one,
                second: None,
            }),
            [IpNet::V4(v4), IpNet::V6(v6)] | [IpNet::V6(v6), IpNet::V4(v4)] => Ok(ClusterCidrs {
                primary: IpNet::V4(v4),
                second: Some(IpNet::V6(v6)),
            }),
            [_, _] => Err("two CIDRs must be one IPv4 and one IPv6 (dual-stack)".into()),
            _ => Err("takes one CIDR, or one IPv4 and one IPv6 CIDR".into()),
        }
    }
}

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

/// The keys `--config` supplied, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKeys {
    /// The config file.
    pub(crate) path: PathBuf,
    /// Long flag names (without dashes) whose value came from the file.
    pub(crate) keys: Vec<String>,
}

/// The plugin's default `dataDir`, the daemon's with --install-cni.
pub(crate) const DEFAULT_CNI_DATA_DIR: &str = "/var/lib/cni/overlayd";

impl DaemonArgs {
    /// The plugin's store the daemon watches: `--cni-data-dir`, or with --install-cni
    /// the plugin's default; none otherwise (the daemon does not know where it is).
    pub(crate) fn cni_data_dir(&self) -> Option<PathBuf> {
        self.cni_data_dir.clone().or_else(|| {
            self.install_cni
                .then(|| PathBuf::from(DEFAULT_CNI_DATA_DIR))
        })
    }

    /// Dual-stack: the IPv6 cluster CIDR and `--subnet-len-v6`, as gossip carries them.
    pub(crate) fn second(&self) -> Option<crate::control::SecondCidr> {
        Some(crate::control::SecondCidr {
            cidr: self.cluster_cidr.second?,
            subnet_len: self.subnet_len_v6,
        })
    }

    /// Checks what spans several flags; returns the fixed node subnet, if any (else
    /// the subnet comes from a lease). When a flag's value came from `--config`, the
    /// message names the key and the file too.
    pub fn validate(&self) -> Result<Option<IpNet>, ConfigError> {
        self.validate_flags().map_err(|e| self.annotate(e))
    }

    fn annotate(&self, e: ConfigError) -> ConfigError {
        let Some(file) = &self.from_file else {
            return e;
        };
        let (ConfigError::Missing { flag, .. } | ConfigError::Invalid { flag, .. }) = &e;
        let long = flag.trim_start_matches("--");
        if !file.keys.iter().any(|k| k == long) {
            return e;
        }
        let key = long.replace('-', "_");
        match e {
            ConfigError::Invalid { flag, value, why } => ConfigError::Invalid {
                flag,
                value,
                why: format!("{why} (key `{key}` in {})", file.path.display()),
            },
            other => other,
        }
    }

    fn validate_flags(&self) -> Result<Option<IpNet>, ConfigError> {
        self.check_addressing()?;
        self.check_others()?;
        for (i, peer) in self.static_peers.iter().enumerate() {
            self.check_static_peer(peer, &self.static_peers[..i])?;
        }
        Ok(self.subnet)
    }

    /// The cluster CIDRs, `--subnet` or the lease sizes, and `--reclaim-after`.
    fn check_addressing(&self) -> Result<(), ConfigError> {
        for cidr in self.cluster_cidr.all() {
            check_network("--cluster-cidr", &cidr)?;
        }
        let cluster = self.cluster_cidr.primary;
        if let (Some(subnet), Some(_)) = (self.subnet, self.cluster_cidr.second) {
            return Err(invalid(
                "--subnet",
                subnet,
                format!(
                    "is one family's; a dual-stack --cluster-cidr {} needs leases (drop --subnet)",
                    self.cluster_cidr
                ),
            ));
        }
        if let Some(v6) = self.cluster_cidr.second {
            let len = self.subnet_len_v6;
            if len < v6.prefix_len() || len > 126 {
                return Err(invalid(
                    "--subnet-len-v6",
                    len,
                    format!(
                        "must lie between the IPv6 --cluster-cidr prefix /{} and /126",
                        v6.prefix_len()
                    ),
                ));
            }
        }
        if let Some(subnet) = self.subnet {
            check_network("--subnet", &subnet)?;
            if !cluster.contains(&subnet) {
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
        } else {
            let len = self.subnet_len;
            if len < cluster.prefix_len() || len > cluster.max_prefix_len() - 2 {
                return Err(invalid(
                    "--subnet-len",
                    len,
                    format!(
                        "must lie between the --cluster-cidr prefix /{} and /{} (a gateway and one pod at least)",
                        cluster.prefix_len(),
                        cluster.max_prefix_len() - 2
                    ),
                ));
            }
            if self.reclaim_after < std::time::Duration::from_secs(10) {
                return Err(invalid(
                    "--reclaim-after",
                    format!("{:?}", self.reclaim_after),
                    "must be at least 10s (the fence bound is half of it)",
                ));
            }
            // Deadlines are `now + reclaim_after / 2`; bounded, they can't overflow.
            if self.reclaim_after > MAX_RECLAIM_AFTER {
                return Err(invalid(
                    "--reclaim-after",
                    format!("{:?}", self.reclaim_after),
                    "must be at most 3650days (ten years)",
                ));
            }
        }
        Ok(())
    }

    /// The other flags, each on its own or with one other.
    fn check_others(&self) -> Result<(), ConfigError> {
        if !self.reclaim_pod_after.is_zero()
            && (self.reclaim_pod_after < std::time::Duration::from_secs(1)
                || self.reclaim_pod_after > MAX_RECLAIM_AFTER)
        {
            return Err(invalid(
                "--reclaim-pod-after",
                format!("{:?}", self.reclaim_pod_after),
                "must be 0s (off) or from 1s to 3650days",
            ));
        }
        if let (Some(n), Some(_)) = (self.bootstrap_expect, self.subnet) {
            return Err(invalid(
                "--bootstrap-expect",
                n,
                "founds a cluster of leases; it cannot go with a fixed --subnet",
            ));
        }
        for peer in &self.peers {
            if peer.trim().is_empty() || peer.contains(char::is_whitespace) {
                return Err(invalid(
                    "--peers",
                    peer,
                    "must be HOST or HOST:PORT, comma-separated",
                ));
            }
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
        if self.vxlan_device == self.bridge || self.vxlan_device == self.tun {
            return Err(invalid(
                "--vxlan-device",
                &self.vxlan_device,
                "must differ from --bridge and --tun",
            ));
        }
        if self.dataplane == DataplaneChoice::Kernel && !self.busy_poll.is_zero() {
            return Err(invalid(
                "--busy-poll",
                format!("{:?}", self.busy_poll),
                "tunes the userspace dataplane; it cannot go with --dataplane kernel",
            ));
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
        if self.encrypt && self.secret_file.is_none() {
            return Err(invalid(
                "--encrypt",
                "true",
                "needs --secret-file: gossip carries each node's WireGuard public key, and without the cluster key anyone on the underlay could publish a key for any node (make one with `overlayd genkey > FILE`)",
            ));
        }
        if self.encrypt && self.wg_port == self.port {
            return Err(invalid(
                "--wg-port",
                self.wg_port,
                format!("must differ from --port {} (the VXLAN port)", self.port),
            ));
        }
        Ok(())
    }

    /// One `--static-peer`, against the flags and the peers given before it.
    fn check_static_peer(
        &self,
        peer: &StaticPeer,
        before: &[StaticPeer],
    ) -> Result<(), ConfigError> {
        let value = match peer.wg_key {
            Some(k) => format!(
                "{},{},wg-key={}",
                peer.subnet,
                peer.addr,
                crate::dataplane::wg::key::encode(&k)
            ),
            None => format!("{},{},{}", peer.subnet, peer.addr, peer.mac),
        };
        if self.encrypt && peer.wg_key.is_none() {
            return Err(invalid(
                "--static-peer",
                value,
                "has no wg-key=: with --encrypt every peer speaks WireGuard, and a VXLAN peer would carry pod traffic in clear",
            ));
        }
        if !self.encrypt && peer.wg_key.is_some() {
            return Err(invalid(
                "--static-peer",
                value,
                "a WireGuard peer (wg-key=) needs --encrypt",
            ));
        }
        check_network("--static-peer", &peer.subnet)?;
        if !self.cluster_cidr.all().any(|c| c.contains(&peer.subnet)) {
            return Err(invalid(
                "--static-peer",
                value,
                format!("subnet is not inside --cluster-cidr {}", self.cluster_cidr),
            ));
        }
        if let Some(subnet) = self.subnet.filter(|s| overlaps(&peer.subnet, s)) {
            return Err(invalid(
                "--static-peer",
                value,
                format!("subnet overlaps this node's --subnet {subnet}"),
            ));
        }
        for other in before {
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
        Ok(())
    }
}

/// Why the command line plus `--config` could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// clap's own error (bad flag, `--help`, `--version`): print it and exit as clap does.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// The config file is unreadable, not TOML, or holds a bad key or value.
    #[error("config file {path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        msg: String,
    },
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.trim_start_matches("error: ").to_string()
}

/// The flags the keys of a `--config` file stand for, appended to `merged` (a key
/// whose flag was given on the command line or through its variable is skipped);
/// returns the flags' long names. `command` and `matches` are the (sub)command the
/// file is for and what the command line gave it.
fn file_flags(
    table: &toml::Table,
    command: &clap::Command,
    matches: &clap::ArgMatches,
    file_err: &dyn Fn(String) -> ParseError,
    merged: &mut Vec<std::ffi::OsString>,
) -> Result<Vec<String>, ParseError> {
    use clap::parser::ValueSource;
    use clap::ArgAction;

    let args: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| a.get_long().is_some())
        .collect();
    let known = || {
        let mut keys: Vec<String> = args
            .iter()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "config")
            .map(|l| l.replace('-', "_"))
            .collect();
        keys.sort();
        keys.join(", ")
    };
    let mut keys = Vec::new();
    for (key, value) in table {
        let wanted = key.replace('_', "-");
        let arg = args
            .iter()
            .find(|a| {
                wanted != "config"
                    && (a.get_long() == Some(wanted.as_str())
                        || a.get_all_aliases()
                            .is_some_and(|al| al.contains(&wanted.as_str())))
            })
            .ok_or_else(|| file_err(format!("unknown key `{key}` (known keys: {})", known())))?;
        let long = arg.get_long().unwrap_or_default().to_string();
        if matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            other => Err(file_err(format!(
                "key `{key}`: expected a string or a number, not {}",
                other.type_str()
            ))),
        };
        let values = match (value, arg.get_action()) {
            (toml::Value::Boolean(b), ArgAction::SetTrue) => {
                if *b {
                    merged.push(format!("--{long}").into());
                    keys.push(long);
                }
                continue;
            }
            (toml::Value::Array(items), ArgAction::Append) => {
                items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?
            }
            (toml::Value::Array(_), _) => {
                return Err(file_err(format!("key `{key}` takes one value, not a list")))
            }
            (v, _) => vec![scalar(v)?],
        };
        for v in values {
            merged.push(format!("--{long}={v}").into());
        }
        keys.push(long);
    }
    Ok(keys)
}

/// Parses `argv`, merging `--config FILE` under the flags: each key of the file is
/// handed to clap as the flag of the same name unless that flag was given on the
/// command line or through its OVERLAYD_* variable. So file values are checked by the
/// same parsers as flags, and errors about them name the key and the file.
pub fn parse_from<I, T>(argv: I) -> Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};

    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(&argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    // `--config` is merged for the daemon and for `uninstall`, which takes its flags.
    let (path, sub) = match &cli.command {
        None => (cli.daemon.config.clone(), None),
        Some(Command::Uninstall { daemon, .. }) => (daemon.config.clone(), Some("uninstall")),
        Some(_) => (None, None),
    };
    let Some(path) = path else {
        return Ok(cli);
    };
    let (command, matches, sub_at) = match sub {
        None => (command, matches, 1),
        Some(name) => {
            let at = argv
                .iter()
                .position(|a| a.to_str() == Some(name))
                .map_or(1, |i| i + 1);
            let sub_command =
                command
                    .find_subcommand(name)
                    .cloned()
                    .ok_or_else(|| ParseError::File {
                        path: path.clone(),
                        msg: format!("no subcommand {name}"),
                    })?;
            let sub_matches = matches
                .subcommand_matches(name)
                .cloned()
                .unwrap_or_default();
            (sub_command, sub_matches, at)
        }
    };
    let file_err = |msg: String| ParseError::File {
        path: path.clone(),
        msg,
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| file_err(format!("cannot read it: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_err(e.to_string().trim_end().replace('\n', " ")))?;

    let mut merged: Vec<std::ffi::OsString> = argv[..sub_at.min(argv.len())].to_vec();
    if merged.is_empty() {
        merged.push("overlayd".into());
    }
    let keys = file_flags(&table, &command, &matches, &file_err, &mut merged)?;
    merged.extend(argv.iter().skip(sub_at).cloned());
    let parse = match sub {
        None => command.try_get_matches_from(&merged),
        // The subcommand's own matches; its name is the program name here.
        Some(_) => command.try_get_matches_from(&merged[sub_at - 1..]),
    };
    let matches = parse.map_err(|e| {
        let bad = match e.get(clap::error::ContextKind::InvalidArg) {
            Some(clap::error::ContextValue::String(s)) => s
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_start_matches("--")
                .to_string(),
            _ => String::new(),
        };
        if keys.contains(&bad) {
            file_err(format!(
                "key `{}`: {}",
                bad.replace('-', "_"),
                clap_line(&e)
            ))
        } else {
            ParseError::Clap(e)
        }
    })?;
    let file = Some(FileKeys { path, keys });
    match sub {
        None => {
            let mut cli = Cli::from_arg_matches(&matches)?;
            cli.daemon.from_file = file;
            Ok(cli)
        }
        Some(_) => {
            let mut daemon = Box::new(DaemonArgs::from_arg_matches(&matches)?);
            daemon.from_file = file;
            let wait = matches.get_flag("wait");
            Ok(Cli {
                command: Some(Command::Uninstall { wait, daemon }),
                daemon: cli.daemon,
            })
        }
    }
}

/// True when one network contains the other's network address.
pub(crate) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parses `SUBNET,ADDR[:PORT],MAC[,allow-any-source]`; ADDR may be IPv6 in brackets
/// when a port is given (`[fd00::1]:4789`).
pub(crate) fn parse_static_peer(s: &str) -> Result<StaticPeer, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let usage = "expected SUBNET,ADDR[:PORT],MAC[,allow-any-source], e.g. 10.244.2.0/24,198.18.0.2,02:00:00:00:00:02, or SUBNET,ADDR[:PORT],wg-key=BASE64 for a WireGuard peer";
    if !(3..=4).contains(&parts.len()) {
        return Err(format!("'{s}': {usage}"));
    }
    let subnet: IpNet = parts[0]
        .parse()
        .map_err(|_| format!("'{}' is not a subnet in CIDR form ({usage})", parts[0]))?;
    let wg_key = match parts[2].strip_prefix("wg-key=") {
        Some(key) => Some(
            crate::dataplane::wg::key::decode(key)
                .map_err(|e| format!("wg-key '{key}': {e} (print a node's key with `overlayd pubkey`, a WireGuard peer's with `wg pubkey`)"))?,
        ),
        None => None,
    };
    let default_port = if wg_key.is_some() {
        DEFAULT_WG_PORT
    } else {
        DEFAULT_VXLAN_PORT
    };
    let addr = match parts[1].parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let ip: IpAddr = parts[1]
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| format!("'{}' is not an IP address or IP:PORT ({usage})", parts[1]))?;
            SocketAddr::new(ip, default_port)
        }
    };
    if addr.port() == 0 {
        return Err(format!(
            "'{}': port 0 is not a UDP port a peer can use",
            parts[1]
        ));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!("'{}' is not a unicast address", parts[1]));
    }
    let mac: MacAddr = if wg_key.is_some() {
        MacAddr([0; 6])
    } else {
        let mac: MacAddr = parts[2].parse().map_err(|e| format!("{e}"))?;
        if mac.is_multicast() || mac.0 == [0; 6] {
            return Err(format!("'{}' must be a unicast, non-zero MAC", parts[2]));
        }
        mac
    };
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
        wg_key,
    })
}

/// A busy-poll window: a duration of at most 1 s (0 is off).
/// The longest `--reclaim-after`: ten years, far beyond any use and far below an
/// overflow of the deadlines built from it.
const MAX_RECLAIM_AFTER: std::time::Duration = std::time::Duration::from_secs(3650 * 24 * 3600);

fn parse_busy_poll(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d > std::time::Duration::from_secs(1) {
        return Err(format!(
            "{s} is longer than 1s; a worker busy-polls for at most a second after its last packet"
        ));
    }
    Ok(d)
}

/// Parses `--bootstrap-expect N`: a node count from 1 to 10,000.
fn parse_bootstrap_expect(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a node count (a whole number from 1 to 10000)"))?;
    if !(1..=10_000).contains(&n) {
        return Err(format!("{n} is not a node count from 1 to 10000"));
    }
    Ok(n)
}

/// Parses a duration such as `24h`, `90m`, `30s` or `1h30m`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration such as 24h, 90m or 30s: {e}"))
}

/// Checks a Linux interface name: 1 to 15 bytes, no '/', ':' or white space.
pub(crate) fn parse_ifname(s: &str) -> Result<String, String> {
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

    fn validate(args: &[&str]) -> Result<Option<IpNet>, String> {
        parse(args)?.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn a_dual_stack_cluster_cidr_takes_one_cidr_of_each_family() {
        let a = parse(&["--cluster-cidr", "fd00:10:244::/56,10.244.0.0/16"]).unwrap();
        assert_eq!(a.cluster_cidr.primary.to_string(), "10.244.0.0/16");
        assert_eq!(
            a.second(),
            Some(crate::control::SecondCidr {
                cidr: "fd00:10:244::/56".parse().unwrap(),
                subnet_len: 64
            }),
            "the IPv4 CIDR numbers the leases; /64 by default"
        );
        assert_eq!(
            validate(&["--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56"]),
            Ok(None)
        );
        assert_eq!(
            validate(&["--cluster-cidr", "fd00:10:244::/48", "--subnet-len", "64"]),
            Ok(None),
            "IPv6 only"
        );
        let two_v4 = parse(&["--cluster-cidr", "10.244.0.0/16,10.245.0.0/16"]).unwrap_err();
        assert!(
            two_v4.contains("--cluster-cidr") && two_v4.contains("one IPv4 and one IPv6"),
            "{two_v4}"
        );
        let len = validate(&[
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--subnet-len-v6",
            "48",
        ])
        .unwrap_err();
        assert!(len.contains("--subnet-len-v6"), "{len}");
        let fixed = validate(&[
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--subnet",
            "10.244.1.0/24",
        ])
        .unwrap_err();
        assert!(
            fixed.contains("--subnet") && fixed.contains("dual-stack"),
            "{fixed}"
        );
    }

    #[test]
    fn defaults() {
        let a = parse(&["--subnet", "10.244.1.0/24"]).unwrap();
        assert_eq!(
            a.cluster_cidr.primary,
            "10.244.0.0/16".parse::<IpNet>().unwrap()
        );
        assert_eq!(a.cluster_cidr.second, None);
        assert_eq!(a.port, 4789);
        assert_eq!(a.vni, 1);
        assert_eq!(a.bridge, "ovl0");
        assert_eq!(
            validate(&["--subnet", "10.244.1.0/24"]).unwrap(),
            Some("10.244.1.0/24".parse::<IpNet>().unwrap())
        );
        // Without --subnet the subnet comes from a lease.
        assert_eq!(validate(&["--peers", "198.18.0.1"]).unwrap(), None);
        let a = parse(&[]).unwrap();
        assert_eq!(a.gossip_port, 7946);
        assert_eq!(a.subnet_len, 24);
        assert_eq!(a.reclaim_after, std::time::Duration::from_secs(24 * 3600));
        assert_eq!(a.busy_poll, std::time::Duration::ZERO);
        assert_eq!(a.bootstrap_expect, None);
        let a = parse(&["--bootstrap-expect", "3", "--peers", "198.18.0.1"]).unwrap();
        assert_eq!(a.bootstrap_expect, Some(3));
        for (flag, want) in [("0", 0), ("0s", 0), ("200us", 200), ("20ms", 20_000)] {
            let a = parse(&["--busy-poll", flag]).unwrap();
            assert_eq!(
                a.busy_poll,
                std::time::Duration::from_micros(want),
                "{flag}"
            );
        }
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
            (
                &["--subnet", "10.244.1.0/24", "--peers", "198.18.0.1"],
                "--peers",
            ),
            (&["--subnet-len", "31"], "--subnet-len"),
            (&["--subnet-len", "8"], "--subnet-len"),
            (&["--reclaim-after", "soon"], "--reclaim-after"),
            (&["--reclaim-after", "2s"], "--reclaim-after"),
            (&["--busy-poll", "fast"], "--busy-poll"),
            (&["--bootstrap-expect", "0"], "--bootstrap-expect"),
            (&["--bootstrap-expect", "three"], "--bootstrap-expect"),
            (&["--bootstrap-expect=-1"], "--bootstrap-expect"),
            (
                &["--bootstrap-expect", "3", "--subnet", "10.244.1.0/24"],
                "--bootstrap-expect",
            ),
            (&["--busy-poll", "5s"], "--busy-poll"),
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

    fn with_file(toml: &str, args: &[&str]) -> Result<Cli, String> {
        let path = std::env::temp_dir().join(format!(
            "overlayd-config-test-{}-{}.toml",
            std::process::id(),
            toml.len()
        ));
        std::fs::write(&path, toml).unwrap();
        let mut argv = vec![
            "overlayd".to_string(),
            "--config".to_string(),
            path.display().to_string(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let result = parse_from(argv).map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&path);
        result
    }

    #[test]
    fn config_file_values_and_flag_precedence() {
        let toml = r#"
            subnet = "10.244.7.0/24"
            vni = 42
            static_peers = ["10.244.2.0/24,198.18.0.2,02:00:00:00:00:02", "10.244.3.0/24,198.18.0.3,02:00:00:00:00:03"]
            metrics_addr = "off"
        "#;
        let cli = with_file(toml, &[]).unwrap();
        assert_eq!(cli.daemon.subnet, Some("10.244.7.0/24".parse().unwrap()));
        assert_eq!(cli.daemon.vni, 42);
        assert_eq!(cli.daemon.static_peers.len(), 2);
        assert_eq!(cli.daemon.metrics_addr, MetricsAddr::Off);
        let cli = with_file("bootstrap_expect = 5\npeers = [\"198.18.0.1\"]", &[]).unwrap();
        assert_eq!(cli.daemon.bootstrap_expect, Some(5));
        assert!(cli.daemon.validate().is_ok());
        // A flag overrides the file.
        let cli = with_file(toml, &["--vni", "7"]).unwrap();
        assert_eq!(cli.daemon.vni, 7);
        assert!(cli.daemon.validate().is_ok());
    }

    #[test]
    fn config_file_errors_name_key_and_file() {
        let cases: &[(&str, &str)] = &[
            ("subnett = \"10.244.1.0/24\"", "unknown key `subnett`"),
            ("vni = 99999999", "key `vni`"),
            ("subnet = \"banana\"", "key `subnet`"),
            ("port = \"x\"", "key `port`"),
            ("bridge = [\"a\"]", "key `bridge` takes one value"),
            ("vni = 1.5", "key `vni`"),
            ("this is not toml", "config file"),
        ];
        for (toml, needle) in cases {
            let err = with_file(toml, &[]).expect_err(toml);
            assert!(err.contains(needle), "{toml}: '{err}' lacks {needle}");
            assert!(
                err.contains("overlayd-config-test"),
                "{toml}: '{err}' does not name the file"
            );
        }
        // A contradiction between file values names the key and the file as well.
        let cli = with_file("subnet = \"10.245.1.0/24\"", &[]).unwrap();
        let err = cli.daemon.validate().unwrap_err().to_string();
        assert!(
            err.contains("key `subnet`") && err.contains("overlayd-config-test"),
            "{err}"
        );
        let err = with_file("", &["--config-nope"]).unwrap_err();
        assert!(err.contains("--config-nope"), "{err}");
    }

    #[test]
    fn shipped_example_config_names_every_flag() {
        use clap::CommandFactory;
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/overlayd.toml"))
                .unwrap();
        let command = Cli::command();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["config", "help", "version"].contains(&long) {
                continue;
            }
            let key = long.replace('-', "_");
            let alias_key = arg
                .get_all_aliases()
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.replace('-', "_"))
                .collect::<Vec<_>>();
            let named = |k: &str| {
                text.lines().any(|l| {
                    l.trim_start_matches('#')
                        .trim_start()
                        .starts_with(&format!("{k} ="))
                })
            };
            assert!(
                named(&key) || alias_key.iter().any(|k| named(k)),
                "config/overlayd.toml does not show key `{key}`"
            );
        }
    }

    #[test]
    fn shipped_example_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/overlayd.toml");
        let cli = parse_from(["overlayd", "--config", path]).unwrap_or_else(|e| panic!("{e}"));
        cli.daemon.validate().unwrap();
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
