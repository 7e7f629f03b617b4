//! A node's WireGuard key pair: X25519, kept base64-encoded (as `wg genkey` writes
//! it) in the state dir with mode 0600, and the base64 form of public keys that
//! `overlayd pubkey`, `--static-peer …,wg-key=` and the status use.
//!
//! Left out: what the keys do (boringtun's Noise IK, driven by [`super::tunnels`]).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};
use rand::RngCore as _;

/// File of the private key in the state dir.
pub(crate) const PRIVATE_KEY_FILE: &str = "wg_private_key";

/// A public key, 32 bytes.
pub(crate) type PublicBytes = [u8; 32];

/// A node's key pair.
#[derive(Clone)]
pub struct KeyPair {
    /// The private key.
    pub secret: StaticSecret,
    /// Its public key.
    pub public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &encode(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A new random key pair (the OS RNG through `rand`).
    pub fn generate() -> KeyPair {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        KeyPair::from_secret(bytes)
    }

    /// The pair of a private key (clamped by X25519 as `wg` does).
    pub fn from_secret(bytes: [u8; 32]) -> KeyPair {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        KeyPair { secret, public }
    }

    /// The public key's bytes.
    pub fn public_bytes(&self) -> PublicBytes {
        *self.public.as_bytes()
    }
}

/// Why a key file or a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("WireGuard key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key file holds no valid key.
    #[error("WireGuard key file {path}: {why} (delete it to make a new key pair, then restart; peers learn the new key through gossip)")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Encodes a key in base64, as `wg` prints keys.
pub fn encode(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Decodes a base64 key (44 characters, as `wg` prints them).
pub(crate) fn decode(s: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("not base64 ({e})"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "a WireGuard key is 32 bytes (44 base64 characters), this one is {} bytes",
            bytes.len()
        )
    })
}

/// The key pair in `state_dir`, if there is one.
pub fn load(state_dir: &Path) -> Result<Option<KeyPair>, KeyError> {
    let path = state_dir.join(PRIVATE_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => decode(&text)
            .map(|b| Some(KeyPair::from_secret(b)))
            .map_err(|why| KeyError::Invalid { path, why }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyError::Io { path, source }),
    }
}

/// Writes `pair`'s private key to `state_dir` (0600, atomically).
pub(crate) fn store(state_dir: &Path, pair: &KeyPair) -> Result<(), KeyError> {
    let path = state_dir.join(PRIVATE_KEY_FILE);
    let text = format!("{}\n", encode(&pair.secret.to_bytes()));
    crate::fsutil::write_atomic(&path, text.as_bytes(), 0o600, 0o700)
        .map_err(|source| KeyError::Io { path, source })
}

/// The key pair in `state_dir`, made and stored on first use.
pub fn load_or_create(state_dir: &Path) -> Result<KeyPair, KeyError> {
    if let Some(pair) = load(state_dir)? {
        return Ok(pair);
    }
    let pair = KeyPair::generate();
    store(state_dir, &pair)?;
    tracing::info!(public_key = %encode(&pair.public_bytes()), "made a WireGuard key pair");
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_state_dir_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_bytes(), b.public_bytes());
        let mode = std::fs::metadata(dir.path().join(PRIVATE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(PRIVATE_KEY_FILE), "nope").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("delete it"), "{err}");
    }

    #[test]
    fn base64_matches_wg() {
        // `echo -n` of 32 zero bytes in base64, as `wg pubkey` prints keys.
        assert_eq!(
            encode(&[0; 32]),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
        assert_eq!(
            decode("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap(),
            [0; 32]
        );
        assert!(decode("AAAA").unwrap_err().contains("32 bytes"));
        assert!(decode("!!").unwrap_err().contains("base64"));
        // RFC 7748's test vector: the public key of Alice's private key.
        let alice = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = u8::from_str_radix(&alice[2 * i..2 * i + 2], 16).unwrap();
        }
        let public = KeyPair::from_secret(secret).public_bytes();
        assert_eq!(public[..4], [0x85, 0x20, 0xf0, 0x09]);
    }
}
