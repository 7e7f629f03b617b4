//! The CNI commands: ADD, DEL, CHECK, GC, STATUS and VERSION.
//!
//! [`run`] is the whole plugin behind injected [`Env`], stdin and stdout, so unit tests can
//! drive it without a process. It writes exactly one JSON document (a result or an error)
//! to stdout, or nothing for a successful DEL, CHECK, GC or STATUS.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use ipnet::IpNet;
use serde_json::{json, Value};

use crate::config::{reply_version, Ipam, NetConf, Version, SUPPORTED_VERSIONS};
use crate::delegate;
use crate::env::{Attachment, Command, Env};
use crate::error::{Error, Result};
use crate::faultpoint;
use crate::ipam::{Owner, Store};
use crate::log::Logger;
use crate::masq;
use crate::netlink::{self, Netlink};
use crate::netns;
use crate::node::{Node, NodeInfo};
use crate::result::{CniResult, Interface, IpConfig, Route};

/// Prefix of host-side veth names: `ovlv` + 11 hex digits of a hash of the attachment.
pub const HOST_VETH_PREFIX: &str = "ovlv";
/// Prefix of the alias set on host veths: `overlayd-cni/<network>/<containerID>/<ifname>`.
pub const ALIAS_PREFIX: &str = "overlayd-cni/";

/// Runs one CNI command and returns the process exit code (0 on success, 1 on error).
pub fn run<E: Env, R: Read, W: Write>(env: &E, mut stdin: R, mut stdout: W) -> i32 {
    let mut input = Vec::new();
    let read = stdin.read_to_end(&mut input);
    let outcome = match (Command::from_env(env), read) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(Error::Decode(format!("reading stdin: {e}"))),
        (Ok(Command::Version), Ok(_)) => Ok(Some(json!({
            "cniVersion": reply_version(&input),
            "supportedVersions": SUPPORTED_VERSIONS,
        }))),
        (Ok(cmd), Ok(_)) => handle(cmd, env, &input),
    };
    let (reply, code) = match outcome {
        Ok(reply) => (reply, 0),
        Err(e) => (Some(e.to_reply(&reply_version(&input))), 1),
    };
    if let Some(reply) = reply {
        let mut text = reply.to_string();
        text.push('\n');
        // Nothing useful can be done if stdout is gone.
        let _ = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush());
    }
    code
}

fn handle<E: Env>(cmd: Command, env: &E, input: &[u8]) -> Result<Option<Value>> {
    let start = std::time::Instant::now();
    let conf = NetConf::parse(input)?;
    let log = Logger::open(conf.log_file.as_deref(), conf.log_level);
    let outcome = match cmd {
        Command::Add => Attachment::from_env(env, true)
            .and_then(|att| add(&conf, &att, input, &log))
            .map(|r| Some(r.to_json(conf.version))),
        Command::Del => Attachment::from_env(env, false)
            .and_then(|att| del(&conf, &att, input, &log))
            .map(|()| None),
        Command::Check => {
            if conf.version < Version::V0_4_0 {
                Err(Error::IncompatibleVersion(format!(
                    "CHECK needs cniVersion 0.4.0 or later, the config has {}",
                    conf.version.as_str()
                )))
            } else {
                Attachment::from_env(env, true)
                    .and_then(|att| check(&conf, &att, input))
                    .map(|()| None)
            }
        }
        Command::Gc | Command::Status if conf.version < Version::V1_1_0 => {
            Err(Error::IncompatibleVersion(format!(
                "{} needs cniVersion 1.1.0, the config has {}",
                cmd.as_str(),
                conf.version.as_str()
            )))
        }
        Command::Gc => gc(&conf, &log).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        // VERSION is answered in `run` before the config is parsed.
        Command::Version => Ok(None),
    };
    let id = env.var("CNI_CONTAINERID").unwrap_or_default();
    match &outcome {
        Ok(_) => log.info(format_args!(
            "{} container={id} ok in {:.1} ms",
            cmd.as_str(),
            start.elapsed().as_secs_f64() * 1e3
        )),
        Err(e) => log.error(format_args!(
            "{cmd:?} container={id} failed (code {}) in {:.1} ms: {e}",
            e.code(),
            start.elapsed().as_secs_f64() * 1e3
        )),
    }
    outcome
}

/// The host-side veth name of an attachment: `ovlv` + 11 hex digits (15 bytes, IFNAMSIZ-1).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bit: stable across Rust releases, unlike `DefaultHasher`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{HOST_VETH_PREFIX}{:011x}", h >> 20)
}

fn is_host_veth_name(name: &str) -> bool {
    name.len() == 15
        && name.starts_with(HOST_VETH_PREFIX)
        && name[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container MAC for `ip`: locally administered `0a:58` followed by the IPv4
/// address, or by the last four bytes of the IPv6 one.
pub fn mac_for(ip: IpAddr) -> [u8; 6] {
    let o = match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let b = a.octets();
            [b[12], b[13], b[14], b[15]]
        }
    };
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn open_netns(att: &Attachment) -> Result<std::fs::File> {
    let path = att.netns.clone().unwrap_or_default();
    netns::open(Path::new(&path)).map_err(|e| Error::InvalidEnv {
        var: "CNI_NETNS",
        value: path,
        reason: format!("cannot open the network namespace: {e}"),
    })
}

fn host_netlink() -> Result<Netlink> {
    Netlink::new().map_err(|e| Error::netlink("opening a netlink socket", e))
}

fn add(conf: &NetConf, att: &Attachment, input: &[u8], log: &Logger) -> Result<CniResult> {
    // Kept with the address (built-in IPAM); refused (code 4) before anything is done if
    // the store cannot hold it.
    let pod = att.pod()?;
    let netns = att.netns_record()?;
    let node = Node::load(&conf.run_dir)?;
    let ns = open_netns(att)?;
    let mut host = host_netlink()?;
    let bridge = host
        .link(&node.info.bridge)
        .map_err(|e| Error::netlink(format!("looking up bridge {}", node.info.bridge), e))?
        .ok_or_else(|| Error::BridgeMissing {
            bridge: node.info.bridge.clone(),
            path: NodeInfo::path(&conf.run_dir),
        })?;

    // Addresses first: the MAC is derived from the first.
    let addresses: Vec<(IpNet, IpAddr)> = match &conf.ipam {
        Ipam::BuiltIn => {
            let owner = Owner {
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
                host_veth: Some(host_veth_name(&att.container_id, &att.ifname)),
                created: Some(unix_now()),
                pod,
                netns,
            };
            allocate(conf, att, &node, &owner)?
        }
        Ipam::Delegate(plugin) => {
            let r = delegate::exec(plugin, "ADD", att, input)?.unwrap_or_default();
            if r.ips.is_empty() {
                return Err(Error::DelegateExec {
                    plugin: plugin.clone(),
                    reason: "no address in its result".into(),
                });
            }
            let mut out = Vec::new();
            for ip in &r.ips {
                let gateway = ip
                    .gateway
                    .or_else(|| node.family_of(ip.address.addr()).map(|f| f.gateway))
                    .ok_or_else(|| Error::DelegateExec {
                        plugin: plugin.clone(),
                        reason: format!(
                            "{} has no gateway, and this node has no subnet of its family",
                            ip.address
                        ),
                    })?;
                out.push((ip.address, gateway));
            }
            out
        }
    };
    let address = addresses
        .iter()
        .map(|(a, _)| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    log.debug(format_args!("ADD {} got {address}", att.container_id));

    let mut created = false;
    let outcome = setup(
        conf,
        att,
        &node,
        &ns,
        &mut host,
        bridge.header.index,
        &addresses,
        &mut created,
        log,
    );
    match outcome {
        Ok(r) => Ok(r),
        Err(e) => {
            // A failed ADD leaves nothing behind: no veth, no reserved address.
            log.warn(format_args!(
                "ADD {} failed, cleaning up: {e}",
                att.container_id
            ));
            if created {
                let name = host_veth_name(&att.container_id, &att.ifname);
                if let Err(ce) = host.delete_link_by_name(&name) {
                    log.error(format_args!("cleanup: deleting {name}: {ce}"));
                }
            }
            if let Err(ce) = release(conf, att, input) {
                log.error(format_args!("cleanup: releasing {address}: {ce}"));
            }
            Err(e)
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The built-in IPAM's addresses for the attachment, one per family of the node, with
/// their gateways, each reserved for `owner`. A requested address (config first, then
/// `CNI_ARGS`) is used for its family; the other family gets the next free one. If one
/// family fails, what the other took is released.
fn allocate(
    conf: &NetConf,
    att: &Attachment,
    node: &Node,
    owner: &Owner,
) -> Result<Vec<(IpNet, IpAddr)>> {
    let from_conf = conf.requested()?;
    let from_args = att.requested()?;
    if let Some(ip) = from_conf
        .iter()
        .chain(&from_args)
        .find(|ip| node.family_of(**ip).is_none())
    {
        return Err(Error::AddressNotUsable {
            ip: ip.to_string(),
            subnet: node.families[0].subnet,
            reason: "is of an address family this node has no subnet of",
        });
    }
    let store = Store::open(&conf.data_dir, &conf.name)?;
    let mut out = Vec::new();
    for family in &node.families {
        let same = |ip: &&IpAddr| ip.is_ipv4() == family.is_v4();
        let requested = from_conf
            .iter()
            .find(same)
            .or_else(|| from_args.iter().find(same))
            .copied();
        match store.allocate(family.subnet, family.gateway, requested, owner) {
            Ok(ip) => {
                let net = IpNet::new(ip, family.subnet.prefix_len()).unwrap_or_default();
                out.push((net, family.gateway));
            }
            Err(e) => {
                if !out.is_empty() {
                    store.release_owner(&att.container_id, &att.ifname)?;
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// Creates the veth pair: `host_name` on the host, `att.ifname` in the pod's netns
/// `ns`. A leftover host end of an earlier, interrupted ADD of this attachment is
/// deleted and the pair made again.
fn create_veth(
    host: &mut Netlink,
    host_name: &str,
    att: &Attachment,
    ns: &std::fs::File,
    mtu: u32,
    mac: [u8; 6],
) -> Result<()> {
    let netns_path = att.netns.clone().unwrap_or_default();
    let create =
        |host: &mut Netlink| host.create_veth(host_name, &att.ifname, ns.as_raw_fd(), mtu, mac);
    match create(host) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            // A leftover host veth of an earlier, interrupted ADD of this attachment.
            let stale = host
                .delete_link_by_name(host_name)
                .map_err(|e| Error::netlink(format!("deleting stale {host_name}"), e))?;
            if !stale {
                return Err(Error::netlink(
                    format!(
                        "creating veth {host_name}: {} already exists in {netns_path}",
                        att.ifname
                    ),
                    e,
                ));
            }
            create(host).map_err(|e| {
                Error::netlink(format!("creating veth {host_name} / {}", att.ifname), e)
            })?;
        }
        Err(e) => {
            return Err(Error::netlink(
                format!(
                    "creating veth {host_name} with peer {} in {netns_path}",
                    att.ifname
                ),
                e,
            ))
        }
    }
    Ok(())
}

/// Inside the pod's netns `ns`: puts `addresses` on `att.ifname`, brings it up and
/// adds a default route via each address's gateway; returns the routes.
fn configure_pod(
    ns: &std::fs::File,
    att: &Attachment,
    addresses: &[(IpNet, IpAddr)],
    netns_path: &str,
) -> Result<Vec<Route>> {
    let mut pod = netns::run_in(ns, Netlink::new)
        .map_err(|e| Error::netlink(format!("opening a netlink socket in {netns_path}"), e))?;
    let pod_index = pod
        .link(&att.ifname)
        .map_err(|e| Error::netlink(format!("looking up {} in {netns_path}", att.ifname), e))?
        .ok_or_else(|| {
            Error::netlink(
                format!("looking up {} in {netns_path}", att.ifname),
                std::io::Error::from_raw_os_error(libc::ENODEV),
            )
        })?
        .header
        .index;
    for (address, _) in addresses {
        pod.add_address(pod_index, *address)
            .map_err(|e| Error::netlink(format!("adding {address} to {}", att.ifname), e))?;
    }
    pod.set_up(pod_index, None, None)
        .map_err(|e| Error::netlink(format!("setting {} up", att.ifname), e))?;
    let mut routes = Vec::new();
    for (address, gateway) in addresses {
        let dst = IpNet::new(
            if address.addr().is_ipv4() {
                IpAddr::from([0u8; 4])
            } else {
                IpAddr::from([0u8; 16])
            },
            0,
        )
        .unwrap_or_default();
        pod.add_route(dst, Some(*gateway), pod_index)
            .map_err(|e| Error::netlink(format!("adding the default route via {gateway}"), e))?;
        routes.push(Route {
            dst,
            gw: Some(*gateway),
        });
    }
    Ok(routes)
}

#[allow(clippy::too_many_arguments)]
fn setup(
    conf: &NetConf,
    att: &Attachment,
    node: &Node,
    ns: &std::fs::File,
    host: &mut Netlink,
    bridge_index: u32,
    addresses: &[(IpNet, IpAddr)],
    created: &mut bool,
    log: &Logger,
) -> Result<CniResult> {
    let mtu = conf.mtu.unwrap_or(node.info.mtu);
    let host_name = host_veth_name(&att.container_id, &att.ifname);
    let netns_path = att.netns.clone().unwrap_or_default();
    let mac = mac_for(
        addresses
            .first()
            .map(|a| a.0.addr())
            .unwrap_or([0u8; 4].into()),
    );
    create_veth(host, &host_name, att, ns, mtu, mac)?;
    *created = true;
    faultpoint::stall("after-veth");

    let host_link = host
        .link(&host_name)
        .map_err(|e| Error::netlink(format!("looking up {host_name}"), e))?
        .ok_or_else(|| {
            Error::netlink(
                format!("looking up {host_name}"),
                std::io::Error::from_raw_os_error(libc::ENODEV),
            )
        })?;
    let host_index = host_link.header.index;
    let alias = format!(
        "{ALIAS_PREFIX}{}/{}/{}",
        conf.name, att.container_id, att.ifname
    );
    host.set_up(host_index, Some(bridge_index), Some(&alias))
        .map_err(|e| {
            Error::netlink(
                format!("attaching {host_name} to bridge {}", node.info.bridge),
                e,
            )
        })?;
    if conf.hairpin_mode {
        host.set_hairpin(host_index)
            .map_err(|e| Error::netlink(format!("enabling hairpin on {host_name}"), e))?;
    }

    let routes = configure_pod(ns, att, addresses, &netns_path)?;

    if conf.ip_masq {
        for family in &node.families {
            let outcome = masq::ensure(family.subnet, family.cluster_cidr)?;
            log.debug(format_args!(
                "ipMasq rule for {}: {outcome:?}",
                family.subnet
            ));
        }
    }

    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: host_name,
                mac: netlink::link_mac(&host_link)
                    .map(mac_string)
                    .unwrap_or_default(),
                sandbox: None,
                mtu: Some(mtu),
            },
            Interface {
                name: att.ifname.clone(),
                mac: mac_string(&mac),
                sandbox: Some(netns_path),
                mtu: Some(mtu),
            },
        ],
        ips: addresses
            .iter()
            .map(|(address, gateway)| IpConfig {
                address: *address,
                gateway: Some(*gateway),
                interface: Some(1),
            })
            .collect(),
        routes,
        dns: conf.dns.clone(),
    })
}

/// Releases the attachment's address (built-in store or delegated DEL). Only the
/// attachment's own records go: a repeated DEL (containerd's second, at
/// RemovePodSandbox, without netns or prevResult) finds none and changes nothing, even
/// if its address has gone to another pod since.
fn release(conf: &NetConf, att: &Attachment, input: &[u8]) -> Result<()> {
    match &conf.ipam {
        Ipam::BuiltIn => match Store::open_existing(&conf.data_dir, &conf.name)? {
            Some(store) => store
                .release_owner(&att.container_id, &att.ifname)
                .map(drop),
            None => Ok(()),
        },
        Ipam::Delegate(plugin) => delegate::exec(plugin, "DEL", att, input).map(drop),
    }
}

fn del(conf: &NetConf, att: &Attachment, input: &[u8], log: &Logger) -> Result<()> {
    // Deleting the host end removes the pair, wherever the container end is (or was).
    let name = host_veth_name(&att.container_id, &att.ifname);
    let mut host = host_netlink()?;
    let removed = host
        .delete_link_by_name(&name)
        .map_err(|e| Error::netlink(format!("deleting {name}"), e))?;
    log.debug(format_args!(
        "DEL {}: veth {name} removed={removed}",
        att.container_id
    ));
    release(conf, att, input)
}

fn check(conf: &NetConf, att: &Attachment, input: &[u8]) -> Result<()> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::InvalidConfig("CHECK requires prevResult".into()))?;
    let prev = CniResult::from_json(prev)?;
    let fail = |m: String| Err(Error::CheckFailed(m));
    let netns_path = att.netns.clone().unwrap_or_default();
    let Some((if_pos, iface)) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == att.ifname && i.sandbox.is_some())
    else {
        return fail(format!(
            "prevResult has no container interface {}",
            att.ifname
        ));
    };
    let ns = open_netns(att)?;
    let mut pod = netns::run_in(&ns, Netlink::new)
        .map_err(|e| Error::netlink(format!("opening a netlink socket in {netns_path}"), e))?;
    let Some(link) = pod
        .link(&att.ifname)
        .map_err(|e| Error::netlink(format!("looking up {}", att.ifname), e))?
    else {
        return fail(format!(
            "interface {} does not exist in {netns_path}",
            att.ifname
        ));
    };
    let mac = netlink::link_mac(&link).map(mac_string).unwrap_or_default();
    if !iface.mac.is_empty() && !iface.mac.eq_ignore_ascii_case(&mac) {
        return fail(format!(
            "{} has MAC {mac}, prevResult says {}",
            att.ifname, iface.mac
        ));
    }
    if let (Some(want), Some(have)) = (iface.mtu, netlink::link_mtu(&link)) {
        if want != have {
            return fail(format!(
                "{} has MTU {have}, prevResult says {want}",
                att.ifname
            ));
        }
    }
    let addrs = pod
        .addresses(link.header.index)
        .map_err(|e| Error::netlink(format!("listing addresses of {}", att.ifname), e))?;
    let ours: Vec<&IpConfig> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == if_pos))
        .collect();
    for ip in &ours {
        if !addrs.contains(&ip.address) {
            return fail(format!(
                "address {} is not on {} in {netns_path}",
                ip.address, att.ifname
            ));
        }
    }
    let routes = pod
        .routes()
        .map_err(|e| Error::netlink(format!("listing routes in {netns_path}"), e))?;
    for r in &prev.routes {
        let want_gw = r.gw.or_else(|| {
            ours.iter()
                .find(|ip| ip.address.addr().is_ipv4() == r.dst.addr().is_ipv4())
                .and_then(|ip| ip.gateway)
        });
        if !routes
            .iter()
            .any(|(dst, gw, _)| *dst == r.dst && (want_gw.is_none() || *gw == want_gw))
        {
            return fail(format!(
                "route to {} via {want_gw:?} is missing in {netns_path}",
                r.dst
            ));
        }
    }
    let host_name = host_veth_name(&att.container_id, &att.ifname);
    let mut host = host_netlink()?;
    if host
        .link(&host_name)
        .map_err(|e| Error::netlink(format!("looking up {host_name}"), e))?
        .is_none()
    {
        return fail(format!("host veth {host_name} does not exist"));
    }
    match &conf.ipam {
        Ipam::BuiltIn => {
            let store = Store::open(&conf.data_dir, &conf.name)?;
            for ip in &ours {
                let owner = store.owner(ip.address.addr())?;
                if !owner
                    .is_some_and(|o| o.container_id == att.container_id && o.ifname == att.ifname)
                {
                    return fail(format!(
                        "address {} is not reserved for {}/{} in {}",
                        ip.address.addr(),
                        att.container_id,
                        att.ifname,
                        conf.data_dir.display()
                    ));
                }
            }
            Ok(())
        }
        Ipam::Delegate(plugin) => delegate::exec(plugin, "CHECK", att, input).map(drop),
    }
}

fn gc(conf: &NetConf, log: &Logger) -> Result<()> {
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let valid_names: HashSet<String> = valid.iter().map(|(c, i)| host_veth_name(c, i)).collect();
    let own_alias = format!("{ALIAS_PREFIX}{}/", conf.name);

    let mut host = host_netlink()?;
    let links = host
        .links()
        .map_err(|e| Error::netlink("listing links", e))?;
    for l in links {
        let Some(name) = netlink::link_name(&l) else {
            continue;
        };
        if !is_host_veth_name(name) || !netlink::is_veth(&l) || valid_names.contains(name) {
            continue;
        }
        // Another network's veth keeps its alias; an interrupted ADD may have none yet.
        match netlink::link_alias(&l) {
            Some(a) if a.starts_with(ALIAS_PREFIX) && !a.starts_with(&own_alias) => continue,
            _ => {}
        }
        log.info(format_args!("GC: deleting veth {name}"));
        if let Err(e) = host.delete_link(l.header.index) {
            if !netlink::is_no_device(&e) {
                return Err(Error::netlink(format!("deleting {name}"), e));
            }
        }
    }
    if conf.ipam == Ipam::BuiltIn {
        let store = Store::open(&conf.data_dir, &conf.name)?;
        for (ip, owner) in store.list()? {
            if !valid.contains(&(owner.container_id.clone(), owner.ifname.clone())) {
                log.info(format_args!(
                    "GC: releasing {ip} of {}/{}",
                    owner.container_id, owner.ifname
                ));
                store.release(ip)?;
            }
        }
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<()> {
    Node::load(&conf.run_dir)
        .map(drop)
        .map_err(|e| Error::NotAvailable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn call(vars: &[(&str, &str)], stdin: &str) -> (i32, Value) {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut out = Vec::new();
        let code = run(&env, stdin.as_bytes(), &mut out);
        let v = if out.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out).expect("stdout is one JSON document")
        };
        (code, v)
    }

    #[test]
    fn version_lists_all() {
        let (code, v) = call(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(code, 0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let (code, v) = call(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!((code, v["cniVersion"].as_str()), (0, Some("1.1.0")));
    }

    #[test]
    fn error_replies_have_codes_and_messages() {
        let dir = std::env::temp_dir().join(format!("ovl-cni-plugin-{}", std::process::id()));
        let conf = |v: &str| {
            format!(
                r#"{{"cniVersion":"{v}","name":"n","type":"overlayd-cni","runDir":"{}","dataDir":"{}"}}"#,
                dir.display(),
                dir.display()
            )
        };
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/proc/self/ns/net"),
        ];
        type Case<'a> = (Vec<(&'a str, &'a str)>, String, u64, &'a str);
        let cases: Vec<Case> = vec![
            (vec![], conf("1.0.0"), 4, "CNI_COMMAND"),
            (vec![("CNI_COMMAND", "ADD")], "{".into(), 6, "decode"),
            (add.to_vec(), conf("9.9.9"), 1, "9.9.9"),
            (
                add.to_vec(),
                r#"{"cniVersion":"1.0.0","type":"x"}"#.into(),
                7,
                "name",
            ),
            (add[..2].to_vec(), conf("1.0.0"), 4, "CNI_IFNAME"),
            (add.to_vec(), conf("1.0.0"), 11, "node.json"),
            (
                vec![
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                conf("0.3.1"),
                1,
                "CHECK",
            ),
            (vec![("CNI_COMMAND", "GC")], conf("1.0.0"), 1, "1.1.0"),
            (
                vec![("CNI_COMMAND", "STATUS")],
                conf("1.1.0"),
                50,
                "node.json",
            ),
        ];
        for (vars, stdin, code, needle) in cases {
            let (rc, v) = call(&vars, &stdin);
            assert_eq!(rc, 1, "{stdin}");
            assert_eq!(v["code"], code, "{v}");
            let msg = v["msg"].as_str().unwrap();
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
            assert!(v["cniVersion"].is_string());
        }
        // The error reply uses the config's version when it is valid.
        let (_, v) = call(&add, &conf("0.3.1"));
        assert_eq!(v["cniVersion"], "0.3.1");
    }

    #[test]
    fn status_ok_with_node_file() {
        let dir = std::env::temp_dir().join(format!("ovl-cni-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(crate::node::NODE_FILE), r#"{"node_name":"n1","subnet":"10.244.1.0/24","gateway":"10.244.1.1","bridge":"ovl0","mtu":1450,"cluster_cidr":"10.244.0.0/16"}"#).unwrap();
        let conf = format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"overlayd-cni","runDir":"{}"}}"#,
            dir.display()
        );
        let (rc, v) = call(&[("CNI_COMMAND", "STATUS")], &conf);
        assert_eq!((rc, v), (0, Value::Null));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        /// Whatever arrives on stdin or in `CNI_COMMAND`, the plugin answers with exactly one
        /// JSON document (a VERSION reply or an error with a code and message), never panics,
        /// and touches nothing: the run-dir does not exist, so ADD stops at node.json, and
        /// CHECK has no prevResult. DEL and GC are left out: valid ones act on the current
        /// namespace, which is the root namespace here (the netns tests cover them).
        #[test]
        fn any_input_gets_one_reply(
            cmd in proptest::sample::select(vec!["ADD", "CHECK", "STATUS", "VERSION", "", "add"]),
            stdin in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            version in proptest::sample::select(vec!["0.3.0", "0.4.0", "1.0.0", "1.1.0", "2.0.0", ""]),
            mtu in proptest::option::of(0u32..100_000),
            use_json in proptest::bool::ANY,
        ) {
            let input = if use_json {
                let mut c = json!({"cniVersion": version, "name": "n", "type": "overlayd-cni",
                    "runDir": "/nonexistent/overlayd-proptest", "dataDir": "/nonexistent/overlayd-proptest"});
                if let Some(m) = mtu { c["mtu"] = json!(m); }
                c.to_string()
            } else {
                String::from_utf8_lossy(&stdin).into_owned()
            };
            let (code, v) = call(&[("CNI_COMMAND", cmd), ("CNI_CONTAINERID", "p1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/nonexistent/ns")], &input);
            if cmd == "VERSION" {
                proptest::prop_assert_eq!(code, 0);
                proptest::prop_assert!(v["supportedVersions"].is_array());
            } else if code != 0 {
                proptest::prop_assert!(v["code"].as_u64().is_some(), "{}", v);
                proptest::prop_assert!(!v["msg"].as_str().unwrap_or_default().is_empty());
            } else {
                proptest::prop_assert!(false, "{} succeeded without a node: {}", cmd, v);
            }
        }
    }

    #[test]
    fn veth_names_are_stable_and_valid() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert!(is_host_veth_name(&a), "{a}");
        assert!(!is_host_veth_name("ovl0"));
        assert_eq!(
            mac_string(&mac_for("10.244.1.5".parse().unwrap())),
            "0a:58:0a:f4:01:05"
        );
    }
}
