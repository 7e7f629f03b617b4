//! Traffic tools run inside namespaces: iperf3, an HTTP GET, a ping's output, and a
//! hand-made VXLAN datagram as the kernel would send it.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use crate::cmd::wait_until;
use crate::netns::Netns;
use crate::process::ChildGuard;

/// Runs iperf3 from `client` to `server_ip` (server started in `server`) for `secs`
/// seconds with `extra` client flags; returns the JSON report.
pub fn iperf3_json(
    server: &Netns,
    client: &Netns,
    server_ip: &str,
    secs: u32,
    extra: &[&str],
) -> serde_json::Value {
    let srv = server
        .command("iperf3")
        .args(["-s", "-B", server_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    let mut srv = ChildGuard::new(srv);
    let listening = wait_until(Duration::from_secs(5), || {
        let out = server
            .command("ss")
            .args(["-Hltn", "sport = :5201"])
            .output();
        out.is_ok_and(|o| !o.stdout.is_empty())
    });
    let out = client
        .command("iperf3")
        .args(["-c", server_ip, "-t", &secs.to_string(), "-J"])
        .args(extra)
        .output()
        .expect("iperf3 -c");
    srv.kill();
    assert!(listening, "iperf3 server on {server_ip} never listened");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "iperf3 to {server_ip} failed: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 JSON: {e}: {text}"))
}

/// TCP throughput from `client` to `server_ip` over `secs` seconds, in Gbit/s.
pub fn iperf3(server: &Netns, client: &Netns, server_ip: &str, secs: u32) -> f64 {
    let v = iperf3_json(server, client, server_ip, secs, &[]);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no bits_per_second in iperf3 output: {v}"))
        / 1e9
}

/// `GET path` over HTTP/1.0 to `addr` from inside `ns`; returns (status code, body).
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> (u16, String) {
    ns.run(|| {
        let mut s =
            std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
}

/// Output of one ping from `ns` to `dst` (stdout and stderr), whatever its result.
pub fn ping_output(ns: &Netns, dst: &str) -> String {
    let out = ns
        .command("ping")
        .args(["-c", "1", "-W", "2", dst])
        .output()
        .expect("ping");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A VXLAN datagram as the kernel sends it: I flag, `vni`, inner Ethernet to `dst_mac`
/// carrying an ICMP echo request from `src` to `dst`.
pub fn vxlan_icmp(vni: u32, dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0];
    d.extend_from_slice(&vni.to_be_bytes()[1..]);
    d.push(0);
    d.extend_from_slice(&dst_mac);
    d.extend_from_slice(&[0x02, 0, 0, 0, 0x09, 0x09, 0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
    d.extend_from_slice(&ip);
    d
}
