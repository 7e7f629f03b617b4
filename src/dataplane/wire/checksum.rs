//! The Internet checksum ([RFC 1071]): the one implementation the dataplane uses, for
//! the IPv4 header view, TSO segmentation, GRO coalescing and ICMP replies.
//!
//! Sums run over native-endian words, which RFC 1071 allows (§2(B), byte order
//! independence); [`fold`] and [`finish`] return values in the byte order that is
//! stored as is with `to_ne_bytes`, so no byte is swapped on the packet path. A
//! running sum is a `u64` that callers continue across pieces with [`add`], each
//! piece starting at an even offset of the checksummed range.
//!
//! [RFC 1071]: https://www.rfc-editor.org/rfc/rfc1071

/// Adds `data` to the running ones'-complement sum `acc`. Chunks must start at
/// even offsets of the checksummed range (only the last one may be odd-sized).
///
/// 32-bit words are added into eight independent 64-bit lanes, which cannot
/// overflow for any packet and have no carry chain between them, so the loop
/// runs several words per cycle (the compiler turns it into SIMD adds). Modulo
/// 0xffff a 32-bit word is the sum of its two 16-bit halves, so the folded
/// result is the RFC 1071 sum.
#[inline]
pub fn add(acc: u64, data: &[u8]) -> u64 {
    let word = |b: &[u8]| u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let mut lanes = [0u64; 8];
    let mut blocks = data.chunks_exact(32);
    for block in &mut blocks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane += word(&block[4 * i..]);
        }
    }
    let mut total: u64 = lanes.iter().sum();
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        total += word(w);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 4];
        last[..rest.len()].copy_from_slice(rest);
        total += word(&last);
    }
    let (s, carry) = acc.overflowing_add(total);
    s + u64::from(carry)
}

/// Folds a running sum to 16 bits (not complemented), as stored with `to_ne_bytes`.
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The checksum field value for a sum over everything it covers (field zeroed).
#[inline]
pub fn finish(acc: u64) -> [u8; 2] {
    (!fold(acc)).to_ne_bytes()
}

/// Whether a sum over everything a checksum covers, the field included, verifies
/// (the ones'-complement sum is all ones).
#[inline]
pub(crate) fn verifies(acc: u64) -> bool {
    fold(acc) == 0xffff
}

/// The pseudo-header sum for TCP/UDP/ICMPv6 over `ip` (an IPv4 or IPv6 header, told
/// apart by its version nibble) with upper-layer protocol `proto` and upper-layer
/// length `len` (RFC 793 §3.1, RFC 8200 §8.1).
#[inline]
pub fn pseudo(ip: &[u8], proto: u8, len: u32) -> u64 {
    if ip[0] >> 4 == 4 {
        let mut p = [0u8; 12];
        p[..8].copy_from_slice(&ip[12..20]);
        p[9] = proto;
        p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
        add(0, &p)
    } else {
        let mut p = [0u8; 40];
        p[..32].copy_from_slice(&ip[8..40]);
        p[32..36].copy_from_slice(&len.to_be_bytes());
        p[39] = proto;
        add(0, &p)
    }
}

/// The running sum of an IPv4 `header`, as [`add`] computes it. The usual header
/// without options (20 bytes) is five words added with no loop: the view checks one
/// on every packet, both ways.
#[inline(always)]
pub(crate) fn add_ipv4_header(header: &[u8]) -> u64 {
    match <&[u8; 20]>::try_from(header) {
        Ok(h) => {
            let word =
                |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
            word(0) + word(4) + word(8) + word(12) + word(16)
        }
        Err(_) => add(0, header),
    }
}

/// Recomputes the checksum of the IPv4 header `ip[..ihl]` in place.
#[inline]
pub fn ipv4_header(ip: &mut [u8], ihl: usize) {
    ip[10] = 0;
    ip[11] = 0;
    let c = finish(add_ipv4_header(&ip[..ihl]));
    ip[10..12].copy_from_slice(&c);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_sum_at_every_length_and_split() {
        let data: Vec<u8> = (0..700u32).map(|i| (i * 151 + i / 7) as u8).collect();
        let naive = |d: &[u8]| {
            let mut s: u32 = 0;
            for c in d.chunks(2) {
                s += u32::from(u16::from_ne_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            s as u16
        };
        for n in 0..data.len() {
            let d = &data[..n];
            assert_eq!(fold(add(0, d)), naive(d), "n={n}");
            // Split at an even offset and continued from a running sum.
            let cut = (n / 3) & !1;
            let acc = add(add(u64::MAX - 3, &d[..cut]), &d[cut..]);
            let expect = naive(d) as u32 + 0xfffc;
            let expect = ((expect & 0xffff) + (expect >> 16)) as u16;
            assert_eq!(fold(acc), expect, "n={n} cut={cut}");
        }
    }

    #[test]
    fn matches_reference() {
        // RFC 1071 example bytes, and odd lengths.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7, 0x12];
        for n in 0..=data.len() {
            let mut s: u32 = 0;
            for c in data[..n].chunks(2) {
                s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            let ours = u16::from_be_bytes(fold(add(0, &data[..n])).to_ne_bytes());
            assert_eq!(ours, s as u16, "n={n}");
        }
    }

    #[test]
    fn ipv4_header_matches_etherparse() {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .udp(1, 2)
            .write(&mut out, b"payload")
            .unwrap();
        let expected = [out[10], out[11]];
        out[10] = 0xde;
        out[11] = 0xad;
        ipv4_header(&mut out, 20);
        assert_eq!([out[10], out[11]], expected);
        assert!(verifies(add(0, &out[..20])));
        assert_eq!(add_ipv4_header(&out[..20]), add(0, &out[..20]));
        assert_eq!(add_ipv4_header(&out[..19]), add(0, &out[..19]));
    }
}
