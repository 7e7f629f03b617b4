//! Test topologies built from namespaces: a pod on a node's bridge, an underlay switch
//! whose bridges partition nodes, and a flannel-style kernel VXLAN node.
//!
//! Underlay addresses come from 198.18.0.0/15 and pod addresses from 10.244.0.0/16.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cmd::sh;
use crate::netns::Netns;

/// A pod: a namespace whose `eth0` is a veth attached to a bridge in its node.
pub struct Pod {
    /// The pod's namespace.
    pub ns: Netns,
    /// The pod's address without prefix.
    pub ip: String,
}

impl Pod {
    /// Attaches a pod with address `cidr` (e.g. 10.244.1.2/24) and default route via `gw`
    /// to `bridge` in `node`, through host-side veth `host_if`.
    pub fn attach(
        node: &Netns,
        bridge: &str,
        host_if: &str,
        cidr: &str,
        gw: &str,
        mtu: u32,
    ) -> Pod {
        let ns = Netns::new("p");
        sh(&[
            "ip", "link", "add", host_if, "netns", &node.name, "type", "veth", "peer", "name",
            "eth0", "netns", &ns.name,
        ]);
        let mtu = mtu.to_string();
        node.ip(&["link", "set", host_if, "mtu", &mtu, "master", bridge, "up"]);
        ns.ip(&["link", "set", "eth0", "mtu", &mtu, "up"]);
        ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
        ns.ip(&["route", "add", "default", "via", gw]);
        let ip = cidr.split('/').next().unwrap().to_string();
        Pod { ns, ip }
    }
}

/// An underlay switch: a namespace holding bridges that node namespaces plug into.
/// Moving a node's port to another bridge partitions it from the rest.
pub struct Switch {
    /// The switch's namespace.
    pub ns: Netns,
}

impl Switch {
    /// A switch with bridges `br0` (the default) and `br1` (for partitions).
    pub fn new() -> Switch {
        let ns = Netns::new("s");
        for br in ["br0", "br1"] {
            ns.ip(&["link", "add", br, "type", "bridge"]);
            ns.ip(&["link", "set", br, "up"]);
        }
        Switch { ns }
    }

    /// A node namespace plugged into `br0` as 198.18.0.`i`/24 on its `eth0`.
    pub fn node(&self, i: u8) -> Netns {
        let node = Netns::new("n");
        let port = format!("p{i}");
        sh(&[
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            &node.name,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.ns.name,
        ]);
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"]);
        node.ip(&["addr", "add", &format!("198.18.0.{i}/24"), "dev", "eth0"]);
        node.ip(&["link", "set", "eth0", "up"]);
        node
    }

    /// Moves node `i`'s port to bridge `br`.
    pub fn plug(&self, i: u8, br: &str) {
        self.ns.ip(&["link", "set", &format!("p{i}"), "master", br]);
    }
}

impl Default for Switch {
    fn default() -> Switch {
        Switch::new()
    }
}

/// The network address of `subnet` (`10.244.2.0/24`, `fd00:10:244:2::/64`), its
/// first host address (the gateway) and the prefix length.
fn subnet_parts(subnet: &str) -> (IpAddr, IpAddr, u8) {
    let (addr, len) = subnet
        .split_once('/')
        .expect("subnet without a prefix length");
    let net: IpAddr = addr.parse().expect("subnet address");
    let gw = match net {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + 1)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + 1)),
    };
    (net, gw, len.parse().expect("prefix length"))
}

/// Adds `addr/len` to `dev`; an IPv6 address without duplicate address detection.
fn add_addr(ns: &Netns, addr: IpAddr, len: u8, dev: &str) {
    let cidr = format!("{addr}/{len}");
    let mut args = vec!["addr", "add", &cidr, "dev", dev];
    if addr.is_ipv6() {
        args.push("nodad");
    }
    ns.ip(&args);
}

/// Configures `ns` as a flannel-style kernel VXLAN node: device `flannel.1` with VNI
/// `vni` on underlay address `local` (IPv4 or IPv6), the network address of `subnet`
/// (`10.244.2.0/24` or `fd00:10:244:2::/64`) on it, and a bridge `cni0` holding the
/// subnet's first address as the gateway. Returns the device's MAC.
pub fn kernel_vxlan_node(
    ns: &Netns,
    underlay_if: &str,
    local: &str,
    vni: u32,
    subnet: &str,
    mtu: u32,
) -> String {
    let (vni, mtu) = (vni.to_string(), mtu.to_string());
    let (net, gw, len) = subnet_parts(subnet);
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        &vni,
        "local",
        local,
        "dev",
        underlay_if,
        "dstport",
        "4789",
        "nolearning",
    ]);
    ns.ip(&["link", "set", "flannel.1", "mtu", &mtu, "up"]);
    add_addr(ns, net, if net.is_ipv4() { 32 } else { 128 }, "flannel.1");
    ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    add_addr(ns, gw, len, "cni0");
    ns.ip(&["link", "set", "cni0", "mtu", &mtu, "up"]);
    if net.is_ipv4() {
        ns.sysctl("net.ipv4.ip_forward", "1");
    } else {
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    }
    let out = ns.ip(&["-j", "link", "show", "flannel.1"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["address"].as_str().unwrap().to_string()
}

/// Two flannel-style kernel VXLAN nodes on a veth underlay (198.18.1.1 and .2),
/// owning 10.244.1.0/24 and 10.244.2.0/24, with a pod at .2 of each: the reference
/// that overlayd's throughput is compared with in the same run.
pub struct KernelVxlanPair {
    /// The pod on the first node.
    pub p1: Pod,
    /// The pod on the second node.
    pub p2: Pod,
    /// The first node.
    pub k1: Netns,
    /// The second node.
    pub k2: Netns,
}

impl KernelVxlanPair {
    /// Builds the pair with MTU 1450 and checks that its pods reach each other.
    pub fn new() -> KernelVxlanPair {
        let k1 = Netns::new("k");
        let k2 = Netns::new("k");
        crate::netns::link(&k1, "u1", "198.18.1.1/24", &k2, "u2", "198.18.1.2/24");
        let km1 = kernel_vxlan_node(&k1, "u1", "198.18.1.1", 1, "10.244.1.0/24", 1450);
        let km2 = kernel_vxlan_node(&k2, "u2", "198.18.1.2", 1, "10.244.2.0/24", 1450);
        kernel_vxlan_route(&k1, "10.244.2.0/24", &km2, "198.18.1.2");
        kernel_vxlan_route(&k2, "10.244.1.0/24", &km1, "198.18.1.1");
        let p1 = Pod::attach(&k1, "cni0", "veth1", "10.244.1.2/24", "10.244.1.1", 1450);
        let p2 = Pod::attach(&k2, "cni0", "veth2", "10.244.2.2/24", "10.244.2.1", 1450);
        assert!(
            p1.ns.ping(&p2.ip),
            "kernel vxlan reference does not forward"
        );
        KernelVxlanPair { p1, p2, k1, k2 }
    }
}

impl Default for KernelVxlanPair {
    fn default() -> KernelVxlanPair {
        KernelVxlanPair::new()
    }
}

/// On kernel node `ns`, routes `peer_subnet` (IPv4 or IPv6) to a VTEP with MAC `mac`
/// at underlay `addr`, as flannel's vxlan backend does: via the subnet's network
/// address, onlink, a permanent neighbour entry for it and an FDB entry.
pub fn kernel_vxlan_route(ns: &Netns, peer_subnet: &str, mac: &str, addr: &str) {
    let gw = subnet_parts(peer_subnet).0.to_string();
    ns.ip(&[
        "route",
        "add",
        peer_subnet,
        "via",
        &gw,
        "dev",
        "flannel.1",
        "onlink",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        &gw,
        "lladdr",
        mac,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    sh(&[
        "bridge",
        "-n",
        &ns.name,
        "fdb",
        "append",
        mac,
        "dev",
        "flannel.1",
        "dst",
        addr,
    ]);
}
