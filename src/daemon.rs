//! `run(config, shutdown)`: brings the node up and forwards until `shutdown` resolves.
//!
//! Start-up order: check the flags, resolve what depends on the host (node name,
//! advertise address, MTU), load or create the VTEP MAC, set up the bridge and its
//! gateway address, enable forwarding, create the TUN and route the cluster CIDR
//! through it, open the VXLAN socket, start the dataplane, then publish `node.json`
//! and the status socket. On shutdown the TUN (and with it the cluster route) goes
//! away with the process; the bridge, its address and `node.json` stay, so pods keep
//! their addresses across a restart.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;

use crate::config::{ConfigError, DaemonArgs};
use crate::dataplane::driver::{open_socket, open_tun, DataplaneDriver};
use crate::dataplane::encap::{OVERHEAD_V4, OVERHEAD_V6};
use crate::dataplane::netlink::{disable_ipv6, enable_forwarding, Netlink};
use crate::dataplane::wire::MacAddr;
use crate::dataplane::{EncapConfig, Fib, Peer, PeerOrigin, PeerState};
use crate::fsutil::write_atomic;
use crate::node::{NodeInfo, NODE_FILE};
use crate::status::{self, NodeReport, StatusSource};

/// File inside `--state-dir` that keeps the VTEP MAC across restarts.
pub const VTEP_MAC_FILE: &str = "vtep_mac";

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The flags do not make a valid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Device setup or forwarding failed.
    #[error(transparent)]
    Dataplane(#[from] crate::dataplane::Error),
    /// A state or runtime file could not be read or written.
    #[error("{what} {path}: {source}")]
    File {
        /// What the file is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_path_buf();
    move |source| DaemonError::File { what, path, source }
}

/// The first host address of `subnet`: the node's gateway.
pub fn gateway_of(subnet: &IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + 1).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + 1).into()),
    }
}

/// The node's name when no `--node-name` is given: the kernel hostname.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Loads the VTEP MAC kept in the state dir, or creates and keeps one. An explicit
/// `--vtep-mac` wins and is kept too.
fn vtep_mac(state_dir: &Path, given: Option<MacAddr>) -> Result<MacAddr, DaemonError> {
    let path = state_dir.join(VTEP_MAC_FILE);
    let mac = match given {
        Some(mac) => mac,
        None => match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|e| DaemonError::File {
                what: "VTEP MAC file",
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{e}; delete it to pick a new MAC"),
                ),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                MacAddr::random_local(&mut rand::rng())
            }
            Err(e) => return Err(file_err("VTEP MAC file", &path)(e)),
        },
    };
    write_atomic(&path, format!("{mac}\n").as_bytes(), 0o600, 0o700)
        .map_err(file_err("VTEP MAC file", &path))?;
    Ok(mac)
}

/// Builds the peers of the forwarding table from `--static-peer`.
pub fn static_peers(args: &DaemonArgs) -> Vec<Peer> {
    args.static_peers
        .iter()
        .map(|p| Peer {
            name: format!("static:{}", p.subnet),
            subnet: p.subnet,
            underlay: p.addr,
            vtep_mac: p.mac,
            state: PeerState::Alive,
            origin: PeerOrigin::Static,
            allow_any_source: p.allow_any_source,
            stats: Arc::default(),
        })
        .collect()
}

/// Runs the daemon until `shutdown` resolves or the dataplane fails.
pub async fn run(args: DaemonArgs, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let started = Instant::now();
    let subnet = args.validate()?;
    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    let netlink = Netlink::connect()?;

    let (advertise_addr, underlay_mtu) = match args.advertise_addr {
        Some(addr) => {
            let (_, mtu) = netlink.link_of_addr(addr).await?.ok_or_else(|| ConfigError::Invalid {
                flag: "--advertise-addr",
                value: addr.to_string(),
                why: "is not an address of any interface on this host".into(),
            })?;
            (addr, mtu)
        }
        None => match netlink.default_route_addr(false).await? {
            Some(found) => found,
            None => netlink.default_route_addr(true).await?.ok_or(ConfigError::Missing {
                flag: "--advertise-addr",
                why: "no default route to take the underlay address from; pass the address peers should send VXLAN to",
            })?,
        },
    };
    let overhead = if advertise_addr.is_ipv4() {
        OVERHEAD_V4
    } else {
        OVERHEAD_V6
    };
    let mtu = match args.mtu {
        Some(mtu) => {
            if mtu + overhead > underlay_mtu {
                tracing::warn!(mtu, underlay_mtu, overhead, "--mtu plus VXLAN overhead exceeds the underlay MTU: large packets will be fragmented or lost");
            }
            mtu
        }
        None => underlay_mtu.saturating_sub(overhead).max(576),
    };
    let vtep_mac = vtep_mac(&args.state_dir, args.vtep_mac)?;
    let gateway = gateway_of(&subnet);

    // The bridge pods attach to, holding the gateway address.
    let bridge_index = netlink.ensure_bridge(&args.bridge, mtu).await?;
    let gateway_net = IpNet::new(gateway, subnet.prefix_len()).expect("prefix from a valid subnet");
    netlink
        .ensure_address(bridge_index, gateway_net, args.cluster_cidr)
        .await?;
    enable_forwarding(&args.cluster_cidr)?;

    // The TUN carries everything else in the cluster CIDR.
    let tun = open_tun(&args.tun, mtu)?;
    let tun_index = netlink
        .link_by_name(&args.tun)
        .await?
        .ok_or_else(|| {
            crate::dataplane::Error::Host(format!("TUN {} vanished after creation", args.tun))
        })?
        .header
        .index;
    if args.cluster_cidr.addr().is_ipv4() {
        disable_ipv6(&args.tun)?;
    }
    netlink.set_up(tun_index, mtu).await?;
    for (dst, oif, msg) in netlink.routes_within(args.cluster_cidr).await? {
        let stale = (oif == Some(bridge_index)
            && dst != subnet
            && dst.prefix_len() != dst.max_prefix_len())
            || (oif == Some(tun_index) && dst != args.cluster_cidr);
        if stale {
            tracing::info!(route = %dst, "removing stale route");
            netlink.delete_route(msg).await?;
        }
    }
    netlink
        .replace_route(args.cluster_cidr, tun_index, gateway)
        .await?;

    let bind = SocketAddr::new(advertise_addr, args.port);
    let udp = open_socket(bind)?;
    let fib = Fib::new(static_peers(&args)).map_err(|e| ConfigError::Invalid {
        flag: "--static-peer",
        value: String::new(),
        why: e.to_string(),
    })?;
    let config = EncapConfig {
        vni: args.vni,
        local_mac: vtep_mac,
    };
    let (mut driver, handle) = DataplaneDriver::spawn(tun, udp, config, Arc::new(fib));

    let node = NodeInfo {
        node_name: node_name.clone(),
        subnet,
        gateway,
        bridge: args.bridge.clone(),
        mtu,
        cluster_cidr: args.cluster_cidr,
    };
    let node_path = args.run_dir.join(NODE_FILE);
    let json = serde_json::to_vec_pretty(&node).expect("NodeInfo serializes");
    write_atomic(&node_path, &json, 0o644, 0o755).map_err(file_err("node file", &node_path))?;

    let socket_path = args.run_dir.join(status::SOCKET_FILE);
    let listener = status::bind(&socket_path).map_err(file_err("status socket", &socket_path))?;
    let source = Arc::new(StatusSource {
        node: NodeReport {
            name: node_name.clone(),
            advertise_addr,
            port: args.port,
            vni: args.vni,
            vtep_mac,
            subnet,
            gateway,
            cluster_cidr: args.cluster_cidr,
            mtu,
            bridge: args.bridge.clone(),
            tun: args.tun.clone(),
            uptime_secs: 0,
        },
        started,
        dataplane: handle.clone(),
    });
    let status_task = tokio::spawn(status::serve(listener, source));

    tracing::info!(
        node = %node_name, %subnet, %gateway, %advertise_addr, port = args.port, vni = args.vni,
        %vtep_mac, mtu, peers = args.static_peers.len(), "overlayd is up"
    );

    let result = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
        r = driver.wait() => r.map_err(DaemonError::from),
    };
    status_task.abort();
    let _ = std::fs::remove_file(&socket_path);
    driver.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_first_host() {
        assert_eq!(
            gateway_of(&"10.244.3.0/24".parse().unwrap()),
            "10.244.3.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            gateway_of(&"fd00:1::/64".parse().unwrap()),
            "fd00:1::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn vtep_mac_is_kept_across_restarts() {
        let dir = std::env::temp_dir().join(format!("overlayd-mac-{}", std::process::id()));
        let first = vtep_mac(&dir, None).unwrap();
        assert_eq!(vtep_mac(&dir, None).unwrap(), first);
        let given: MacAddr = "02:00:00:00:00:09".parse().unwrap();
        assert_eq!(vtep_mac(&dir, Some(given)).unwrap(), given);
        assert_eq!(vtep_mac(&dir, None).unwrap(), given);
        std::fs::write(dir.join(VTEP_MAC_FILE), "garbage").unwrap();
        let err = vtep_mac(&dir, None).unwrap_err().to_string();
        assert!(err.contains("vtep_mac"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
