//! Gossip authentication with the cluster key (`--secret-file`): every datagram
//! carries an HMAC-SHA-256-128 tag (RFC 4868's truncation) over the whole frame, the
//! sender's wall-clock time and a per-process session with a counter, so that a host
//! without the key can neither join, nor publish a lease, nor replay what it recorded.
//!
//! The auth field sits in the frame header's reserved slot
//! ([`message`](super::message)), `alen` = [`AUTH_LEN`]:
//!
//! ```text
//!  0        4                 12                20                28               44
//! +--------+-----------------+-----------------+-----------------+----------------+
//! | key id | sent at (ms,    | session         | counter         | tag: HMAC over |
//! |        | unix, sender)   | (random/start)  | (per datagram)  | all but itself |
//! +--------+-----------------+-----------------+-----------------+----------------+
//! ```
//!
//! - **Keys.** The secret file holds one or two keys, one per line (blank lines and
//!   `#` comments are skipped). The first signs; all are accepted, so a cluster rolls
//!   a new key in three steps: add it second everywhere, move it first everywhere,
//!   remove the old one. The MAC key is `HMAC-SHA-256("overlayd gossip v1", line)`, and
//!   the key id (first 4 bytes of `HMAC(mac key, "key id")`) picks the key to verify
//!   with and names it in logs without revealing it.
//! - **Replay.** A datagram is accepted only if its timestamp is within
//!   [`DEFAULT_MAX_SKEW`] of our clock and its (session, counter) was not seen before
//!   (a 128-entry sliding window per session, as IPsec does). Sessions are forgotten
//!   after twice the skew bound, when the timestamp check alone rejects their
//!   datagrams. What is left: after *our* restart, a datagram recorded less than the
//!   skew bound earlier is accepted once; foca's incarnations and the lease versions
//!   make such a duplicate a no-op.
//! - **No key.** A node without a key sends `alen` = 0 and rejects signed datagrams,
//!   so keyed and keyless nodes never mix silently.
//!
//! Left out: encryption. Gossip carries addresses, MACs and subnet numbers, which any
//! host on the underlay sees in the VXLAN traffic anyway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::message::HEADER_LEN;

type HmacSha256 = Hmac<Sha256>;

/// Length of the auth field when a key is in use.
pub const AUTH_LEN: usize = 44;
/// Length of the truncated tag.
pub(crate) const TAG_LEN: usize = 16;
/// Keys a secret file may hold at once (current and next).
pub(crate) const MAX_KEYS: usize = 2;
/// Shortest key accepted, in bytes (after trimming whitespace).
pub(crate) const MIN_KEY_LEN: usize = 16;
/// How far a datagram's timestamp may be from our clock.
pub(crate) const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(120);
/// Sessions remembered at once; beyond this the least recently seen is forgotten.
const MAX_SESSIONS: usize = 4096;
/// Replay window per session, in datagrams.
const WINDOW: u64 = 128;

const KEY_SALT: &[u8] = b"overlayd gossip v1";

/// Why a secret file was refused. The daemon adds the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key in the file.
    #[error("holds no key (one key per line; `overlayd genkey` makes one)")]
    Empty,
    /// A key is too short to be a secret.
    #[error("line {line}: key is {len} bytes, at least {MIN_KEY_LEN} are needed (`overlayd genkey` makes one)")]
    TooShort {
        /// 1-based line number.
        line: usize,
        /// The key's length.
        len: usize,
    },
    /// More than [`MAX_KEYS`] keys.
    #[error("holds {count} keys, at most {MAX_KEYS} (the current and the next) are allowed")]
    TooMany {
        /// Keys found.
        count: usize,
    },
    /// Two lines hold the same key.
    #[error("line {line} repeats an earlier key")]
    Duplicate {
        /// 1-based line number.
        line: usize,
    },
}

/// One cluster key, ready to sign and verify.
#[derive(Clone)]
pub(crate) struct ClusterKey {
    id: [u8; 4],
    mac: HmacSha256,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({})", hex(&self.id))
    }
}

impl ClusterKey {
    /// Derives the MAC key and key id from the key text.
    pub(crate) fn derive(secret: &[u8]) -> Self {
        // Any key length is valid for HMAC, so these never fail.
        let mut ext = HmacSha256::new_from_slice(KEY_SALT).expect("HMAC takes any key length");
        ext.update(secret);
        let k = ext.finalize().into_bytes();
        let mac = HmacSha256::new_from_slice(&k).expect("HMAC takes any key length");
        let mut idm = mac.clone();
        idm.update(b"key id");
        let full = idm.finalize().into_bytes();
        ClusterKey {
            id: [full[0], full[1], full[2], full[3]],
            mac,
        }
    }

    /// The key id, in hex, as logs and `overlayd status` show it.
    pub(crate) fn id(&self) -> String {
        hex(&self.id)
    }
}

/// The keys of a secret file; the first one signs.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<ClusterKey>,
}

impl KeySet {
    /// Parses a secret file: one key per line, blank lines and `#` comments skipped.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<ClusterKey> = Vec::new();
        let mut count = 0;
        for (i, line) in text.lines().enumerate() {
            let k = line.trim();
            if k.is_empty() || k.starts_with('#') {
                continue;
            }
            count += 1;
            if k.len() < MIN_KEY_LEN {
                return Err(KeyError::TooShort {
                    line: i + 1,
                    len: k.len(),
                });
            }
            let key = ClusterKey::derive(k.as_bytes());
            if keys.iter().any(|o| o.id == key.id) {
                return Err(KeyError::Duplicate { line: i + 1 });
            }
            keys.push(key);
        }
        match count {
            0 => Err(KeyError::Empty),
            n if n > MAX_KEYS => Err(KeyError::TooMany { count: n }),
            _ => Ok(KeySet { keys }),
        }
    }

    /// Key ids, signing key first.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.keys.iter().map(ClusterKey::id).collect()
    }

    fn find(&self, id: &[u8]) -> Option<&ClusterKey> {
        self.keys.iter().find(|k| k.id[..] == *id)
    }
}

/// Why a datagram was rejected by the authentication layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// We have a key and the datagram carries no tag.
    Unsigned,
    /// We have no key and the datagram is signed.
    Signed,
    /// The auth field has the wrong length.
    Malformed,
    /// Signed with a key we do not hold.
    UnknownKey([u8; 4]),
    /// The tag does not verify.
    BadTag,
    /// The timestamp is too far from our clock (sender's time minus ours, in ms).
    Stale(i64),
    /// A (session, counter) seen before.
    Replay,
}

impl Reject {
    /// Short label, used as the metrics `reason`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Reject::Unsigned => "unsigned",
            Reject::Signed => "signed_without_key",
            Reject::Malformed => "malformed_auth",
            Reject::UnknownKey(_) => "unknown_key",
            Reject::BadTag => "bad_tag",
            Reject::Stale(_) => "stale",
            Reject::Replay => "replay",
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::Unsigned => write!(
                f,
                "unsigned gossip, but this node requires the cluster key (the sender has no --secret-file)"
            ),
            Reject::Signed => write!(
                f,
                "signed gossip, but this node has no cluster key (set --secret-file)"
            ),
            Reject::Malformed => write!(f, "malformed auth field"),
            Reject::UnknownKey(id) => write!(
                f,
                "signed with key {}, which is not in our --secret-file",
                hex(id)
            ),
            Reject::BadTag => write!(f, "tag does not verify (forged or corrupted)"),
            Reject::Stale(ms) => write!(
                f,
                "timestamp is {:.1} s {} our clock (replay, or clocks out of sync by more than {} s)",
                ms.unsigned_abs() as f64 / 1000.0,
                if *ms < 0 { "behind" } else { "ahead of" },
                DEFAULT_MAX_SKEW.as_secs()
            ),
            Reject::Replay => write!(f, "replayed datagram"),
        }
    }
}

/// Rejected datagrams by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectCounters {
    /// [`Reject::Unsigned`].
    pub(crate) unsigned: u64,
    /// [`Reject::Signed`].
    pub(crate) signed_without_key: u64,
    /// [`Reject::Malformed`].
    pub(crate) malformed: u64,
    /// [`Reject::UnknownKey`].
    pub(crate) unknown_key: u64,
    /// [`Reject::BadTag`].
    pub(crate) bad_tag: u64,
    /// [`Reject::Stale`].
    pub(crate) stale: u64,
    /// [`Reject::Replay`].
    pub(crate) replay: u64,
}

impl RejectCounters {
    fn count(&mut self, r: Reject) {
        let c = match r {
            Reject::Unsigned => &mut self.unsigned,
            Reject::Signed => &mut self.signed_without_key,
            Reject::Malformed => &mut self.malformed,
            Reject::UnknownKey(_) => &mut self.unknown_key,
            Reject::BadTag => &mut self.bad_tag,
            Reject::Stale(_) => &mut self.stale,
            Reject::Replay => &mut self.replay,
        };
        *c += 1;
    }

    /// `(label, count)` pairs, for metrics and status.
    pub(crate) fn by_reason(&self) -> [(&'static str, u64); 7] {
        [
            ("unsigned", self.unsigned),
            ("signed_without_key", self.signed_without_key),
            ("malformed_auth", self.malformed),
            ("unknown_key", self.unknown_key),
            ("bad_tag", self.bad_tag),
            ("stale", self.stale),
            ("replay", self.replay),
        ]
    }

    /// All rejections.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    top: u64,
    bits: u128,
    seen: Instant,
}

impl Window {
    /// Marks `n` seen; false if it was seen already or is older than the window.
    fn accept(&mut self, n: u64) -> bool {
        if n > self.top {
            let shift = n - self.top;
            self.bits = if shift >= WINDOW {
                0
            } else {
                self.bits << shift
            };
            self.bits |= 1;
            self.top = n;
            return true;
        }
        let back = self.top - n;
        if back >= WINDOW {
            return false;
        }
        let bit = 1u128 << back;
        if self.bits & bit != 0 {
            return false;
        }
        self.bits |= bit;
        true
    }
}

/// Signs outgoing and verifies incoming gossip frames. Sans-IO: the caller passes the
/// wall-clock time (unix ms) and `now`.
#[derive(Debug)]
pub struct Authenticator {
    keys: Option<KeySet>,
    session: u64,
    counter: u64,
    max_skew_ms: i64,
    windows: HashMap<u64, Window>,
    rejected: RejectCounters,
}

impl Authenticator {
    /// `session` must be random per process start (it keeps counters unique).
    pub fn new(keys: Option<KeySet>, session: u64) -> Self {
        Authenticator {
            keys,
            session,
            counter: 0,
            max_skew_ms: DEFAULT_MAX_SKEW.as_millis() as i64,
            windows: HashMap::new(),
            rejected: RejectCounters::default(),
        }
    }

    /// Replaces the keys (a reload of the secret file).
    pub(crate) fn set_keys(&mut self, keys: Option<KeySet>) {
        self.keys = keys;
    }

    /// The key ids in use, signing key first; empty without a key.
    pub(crate) fn key_ids(&self) -> Vec<String> {
        self.keys.as_ref().map(KeySet::ids).unwrap_or_default()
    }

    /// Rejections so far.
    pub(crate) fn rejected(&self) -> RejectCounters {
        self.rejected
    }

    /// Fills in the auth field of `frame`, a frame emitted with an empty one.
    pub fn seal(&mut self, mut frame: Vec<u8>, wall_ms: u64) -> Vec<u8> {
        let Some(keys) = &self.keys else {
            return frame;
        };
        if frame.len() < HEADER_LEN || frame[HEADER_LEN - 1] != 0 {
            return frame;
        }
        let key = &keys.keys[0];
        self.counter += 1;
        let mut auth = [0u8; AUTH_LEN];
        auth[..4].copy_from_slice(&key.id);
        auth[4..12].copy_from_slice(&wall_ms.to_be_bytes());
        auth[12..20].copy_from_slice(&self.session.to_be_bytes());
        auth[20..28].copy_from_slice(&self.counter.to_be_bytes());
        frame[HEADER_LEN - 1] = AUTH_LEN as u8;
        frame.splice(HEADER_LEN..HEADER_LEN, auth);
        let tag = compute_tag(key, &frame);
        let t = HEADER_LEN + AUTH_LEN - TAG_LEN;
        frame[t..t + TAG_LEN].copy_from_slice(&tag[..TAG_LEN]);
        frame
    }

    /// Verifies a frame whose header [`parse_frame`](super::message::parse_frame)
    /// accepted. Counts and returns the reason of a rejection.
    pub fn open(&mut self, frame: &[u8], wall_ms: u64, now: Instant) -> Result<(), Reject> {
        let r = self.verify(frame, wall_ms, now);
        if let Err(reason) = r {
            self.rejected.count(reason);
        }
        r
    }

    fn verify(&mut self, frame: &[u8], wall_ms: u64, now: Instant) -> Result<(), Reject> {
        let alen = frame
            .get(HEADER_LEN - 1)
            .copied()
            .ok_or(Reject::Malformed)? as usize;
        let Some(keys) = &self.keys else {
            return if alen == 0 {
                Ok(())
            } else {
                Err(Reject::Signed)
            };
        };
        if alen == 0 {
            return Err(Reject::Unsigned);
        }
        if alen != AUTH_LEN || frame.len() < HEADER_LEN + AUTH_LEN {
            return Err(Reject::Malformed);
        }
        let a = &frame[HEADER_LEN..HEADER_LEN + AUTH_LEN];
        let key = keys
            .find(&a[..4])
            .ok_or(Reject::UnknownKey([a[0], a[1], a[2], a[3]]))?;
        let mut m = key.mac.clone();
        feed(&mut m, frame);
        m.verify_truncated_left(&a[AUTH_LEN - TAG_LEN..])
            .map_err(|_| Reject::BadTag)?;
        let field = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&a[r]);
            u64::from_be_bytes(b)
        };
        let sent = field(4..12);
        let session = field(12..20);
        let counter = field(20..28);
        let ahead = (sent as i128 - wall_ms as i128).clamp(i64::MIN as i128, i64::MAX as i128);
        if ahead.unsigned_abs() > self.max_skew_ms as u128 {
            return Err(Reject::Stale(ahead as i64));
        }
        self.prune(now);
        let w = self.windows.entry(session).or_insert(Window {
            top: 0,
            bits: 0,
            seen: now,
        });
        if !w.accept(counter) {
            return Err(Reject::Replay);
        }
        w.seen = now;
        Ok(())
    }

    /// Forgets sessions silent for twice the skew bound, and the least recently seen
    /// one when the table is full.
    fn prune(&mut self, now: Instant) {
        if self.windows.len() < MAX_SESSIONS {
            return;
        }
        let ttl = Duration::from_millis(2 * self.max_skew_ms as u64);
        self.windows
            .retain(|_, w| now.saturating_duration_since(w.seen) < ttl);
        if self.windows.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.seen)
                .map(|(s, _)| *s)
            {
                self.windows.remove(&oldest);
            }
        }
    }
}

/// The MAC covers the whole frame except the tag itself.
fn feed(m: &mut HmacSha256, frame: &[u8]) {
    let t = HEADER_LEN + AUTH_LEN - TAG_LEN;
    m.update(&frame[..t]);
    m.update(&frame[t + TAG_LEN..]);
}

fn compute_tag(key: &ClusterKey, frame: &[u8]) -> [u8; 32] {
    let mut m = key.mac.clone();
    feed(&mut m, frame);
    m.finalize().into_bytes().into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh random key for a secret file: 32 random bytes in hex.
pub fn generate_key() -> String {
    let k: [u8; 32] = rand::random();
    hex(&k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::message::{emit_frame_header, parse_frame, Kind};

    const K1: &str = "0123456789abcdef0123456789abcdef";
    const K2: &str = "fedcba9876543210fedcba9876543210";

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        emit_frame_header(Kind::Lease, &mut f);
        f.extend_from_slice(body);
        f
    }

    fn auth(keys: &str, session: u64) -> Authenticator {
        Authenticator::new(Some(KeySet::parse(keys).unwrap()), session)
    }

    #[test]
    fn sealed_frame_parses_and_verifies() {
        let now = Instant::now();
        let mut a = auth(K1, 1);
        let mut b = auth(K1, 2);
        let f = a.seal(frame(b"hello"), 1_000_000);
        assert_eq!(f.len(), HEADER_LEN + AUTH_LEN + 5);
        let (kind, body) = parse_frame(&f).unwrap();
        assert_eq!((kind, body), (Kind::Lease, &b"hello"[..]));
        assert_eq!(b.open(&f, 1_000_500, now), Ok(()));
        assert_eq!(b.rejected().total(), 0);
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let now = Instant::now();
        let mut a = auth(K1, 1);
        let f = a.seal(frame(b"lease body"), 5_000);
        for i in 0..f.len() * 8 {
            let mut g = f.clone();
            g[i / 8] ^= 1 << (i % 8);
            let mut b = auth(K1, 9);
            assert!(
                b.open(&g, 5_000, now).is_err(),
                "bit {i} flipped was accepted"
            );
        }
    }

    #[test]
    fn wrong_key_missing_key_and_unsigned_are_rejected() {
        let now = Instant::now();
        let signed = auth(K1, 1).seal(frame(b"x"), 0);
        assert!(matches!(
            auth(K2, 2).open(&signed, 0, now),
            Err(Reject::UnknownKey(_))
        ));
        let mut keyless = Authenticator::new(None, 3);
        assert_eq!(keyless.open(&signed, 0, now), Err(Reject::Signed));
        let plain = keyless.seal(frame(b"x"), 0);
        assert_eq!(plain, frame(b"x"));
        assert_eq!(keyless.open(&plain, 0, now), Ok(()));
        let mut keyed = auth(K1, 4);
        assert_eq!(keyed.open(&plain, 0, now), Err(Reject::Unsigned));
        assert_eq!(keyed.rejected().unsigned, 1);
        // A forged tag under a known key id.
        let mut forged = signed.clone();
        let t = HEADER_LEN + AUTH_LEN - 1;
        forged[t] ^= 0xff;
        assert_eq!(keyed.open(&forged, 0, now), Err(Reject::BadTag));
        // A truncated auth field.
        let mut short = frame(b"");
        short[HEADER_LEN - 1] = 10;
        short.extend_from_slice(&[0; 10]);
        assert_eq!(keyed.open(&short, 0, now), Err(Reject::Malformed));
        assert_eq!(keyed.rejected().total(), 3);
    }

    #[test]
    fn rotation_accepts_both_keys_and_signs_with_the_first() {
        let now = Instant::now();
        let old = format!("{K1}\n");
        let rolling = format!("# current\n{K1}\n\n# next\n{K2}\n");
        let rolled = format!("{K2}\n{K1}\n");
        let new = format!("{K2}\n");
        let from_old = auth(&old, 1).seal(frame(b"a"), 0);
        let from_rolled = auth(&rolled, 2).seal(frame(b"b"), 0);
        let mut r = auth(&rolling, 3);
        assert_eq!(r.open(&from_old, 0, now), Ok(()));
        assert_eq!(r.open(&from_rolled, 0, now), Ok(()));
        assert_eq!(auth(&new, 4).open(&from_rolled, 0, now), Ok(()));
        assert!(auth(&new, 4).open(&from_old, 0, now).is_err());
        assert_eq!(r.key_ids().len(), 2);
    }

    #[test]
    fn replays_and_stale_datagrams_are_rejected() {
        let now = Instant::now();
        let mut a = auth(K1, 7);
        let mut b = auth(K1, 8);
        let f1 = a.seal(frame(b"1"), 100_000);
        let f2 = a.seal(frame(b"2"), 100_000);
        // Reordering is fine, a duplicate is not.
        assert_eq!(b.open(&f2, 100_000, now), Ok(()));
        assert_eq!(b.open(&f1, 100_000, now), Ok(()));
        assert_eq!(b.open(&f1, 100_000, now), Err(Reject::Replay));
        assert_eq!(b.open(&f2, 100_000, now), Err(Reject::Replay));
        // Too old, or from a clock far ahead.
        let skew = DEFAULT_MAX_SKEW.as_millis() as u64;
        let f3 = a.seal(frame(b"3"), 100_000);
        assert!(matches!(
            b.open(&f3, 100_000 + skew + 1, now),
            Err(Reject::Stale(_))
        ));
        let f4 = a.seal(frame(b"4"), 100_000 + skew + 1);
        assert!(matches!(b.open(&f4, 100_000, now), Err(Reject::Stale(ms)) if ms > 0));
        assert_eq!(b.rejected().replay, 2);
        assert_eq!(b.rejected().stale, 2);
    }

    #[test]
    fn window_slides() {
        let t = Instant::now();
        let mut w = Window {
            top: 0,
            bits: 0,
            seen: t,
        };
        assert!(w.accept(1));
        assert!(w.accept(200));
        assert!(!w.accept(1), "older than the window");
        assert!(w.accept(150));
        assert!(!w.accept(150));
        assert!(w.accept(73));
        assert!(!w.accept(72));
        assert!(w.accept(u64::MAX));
        assert!(!w.accept(u64::MAX));
    }

    #[test]
    fn session_table_is_bounded() {
        let now = Instant::now();
        let mut b = auth(K1, 0);
        for s in 1..=(MAX_SESSIONS as u64 + 10) {
            let f = auth(K1, s).seal(frame(b"x"), 0);
            assert_eq!(b.open(&f, 0, now), Ok(()));
        }
        assert!(b.windows.len() <= MAX_SESSIONS);
    }

    #[test]
    fn secret_files_are_checked() {
        assert_eq!(KeySet::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(KeySet::parse("# only\n\n").unwrap_err(), KeyError::Empty);
        assert_eq!(
            KeySet::parse("short\n").unwrap_err(),
            KeyError::TooShort { line: 1, len: 5 }
        );
        assert_eq!(
            KeySet::parse(&format!("{K1}\n{K2}\n{K1}x\n")).unwrap_err(),
            KeyError::TooMany { count: 3 }
        );
        assert_eq!(
            KeySet::parse(&format!("{K1}\n  {K1}  \n")).unwrap_err(),
            KeyError::Duplicate { line: 2 }
        );
        // Whitespace around a key does not change it.
        assert_eq!(
            KeySet::parse(&format!("  {K1}\t\n")).unwrap().ids(),
            KeySet::parse(K1).unwrap().ids()
        );
        let g = generate_key();
        assert_eq!(g.len(), 64);
        assert!(KeySet::parse(&g).is_ok());
        assert_ne!(g, generate_key());
    }
}
