//! Sealing stored values with AES-256-GCM.
//!
//! Envelope layout (one BLOB per value):
//!
//! | bytes | content |
//! |---|---|
//! | 1 | version, `0x01` |
//! | 4 | key id: the first 4 bytes (8 hex digits) of SHA-256 of the key |
//! | 12 | random nonce |
//! | n + 16 | ciphertext and GCM tag |
//!
//! The additional authenticated data is the 5 header bytes followed by the
//! upstream name, so a value copied onto another upstream's row, or a header
//! edited to point at another key, fails to open.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use super::StoreError;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN;
const TAG_LEN: usize = 16;

/// A 32-byte store encryption key and its id. `Debug` shows only the id.
#[derive(Clone)]
pub struct StoreKey {
    id: [u8; KEY_ID_LEN],
    aead: Arc<LessSafeKey>,
}

impl StoreKey {
    /// Parses base64 (standard or URL-safe, padded or not, surrounding
    /// whitespace ignored) of exactly 32 bytes.
    pub fn from_base64(s: &str) -> Result<StoreKey, StoreError> {
        let s = s.trim();
        let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(s).ok())
            .ok_or_else(|| StoreError::Key("not valid base64".to_owned()))?;
        Self::from_bytes(&bytes)
    }

    /// Builds a key from exactly 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<StoreKey, StoreError> {
        if bytes.len() != 32 {
            return Err(StoreError::Key(format!("must be 32 bytes (base64 of 32 random bytes), got {} bytes", bytes.len())));
        }
        let hash = digest::digest(&digest::SHA256, bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&hash.as_ref()[..KEY_ID_LEN]);
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| StoreError::Key("rejected by AES-256-GCM".to_owned()))?;
        Ok(StoreKey { id, aead: Arc::new(LessSafeKey::new(unbound)) })
    }

    /// The key id: the first 8 hex digits of SHA-256 of the key.
    pub fn id(&self) -> String {
        hex(&self.id)
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKey").field("id", &self.id()).field("key", &"[redacted]").finish()
    }
}

/// Seals `plaintext` for `upstream` with `key`.
pub(crate) fn seal(key: &StoreKey, upstream: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| StoreError::Backend("system random generator failed".to_owned()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(VERSION);
    out.extend_from_slice(&key.id);
    let aad = aad(&out, upstream);
    out.extend_from_slice(&nonce);
    let mut in_out = plaintext.to_vec();
    key.aead
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut in_out)
        .map_err(|_| StoreError::Backend("encryption failed".to_owned()))?;
    out.extend_from_slice(&in_out);
    Ok(out)
}

/// Opens an envelope written for `upstream` with any of `keys`.
pub(crate) fn open(keys: &[StoreKey], upstream: &str, envelope: &[u8]) -> Result<Vec<u8>, StoreError> {
    let fail = |reason: String| StoreError::Decrypt { upstream: upstream.to_owned(), reason };
    if envelope.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(fail("value is truncated".to_owned()));
    }
    let (header, rest) = envelope.split_at(HEADER_LEN);
    if header[0] != VERSION {
        return Err(fail(format!("unknown envelope version {}", header[0])));
    }
    let key_id = &header[1..];
    let key = keys.iter().find(|k| k.id == key_id).ok_or_else(|| {
        let configured: Vec<String> = keys.iter().map(StoreKey::id).collect();
        fail(format!("it was written with key id {}, which is not among the configured keys [{}]", hex(key_id), configured.join(", ")))
    })?;
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail("bad nonce length".to_owned()))?;
    let mut in_out = sealed.to_vec();
    let plain = key.aead.open_in_place(nonce, Aad::from(aad(header, upstream)), &mut in_out).map_err(|_| {
        fail(format!("authentication failed with key id {} (value tampered with or moved from another upstream)", hex(key_id)))
    })?;
    Ok(plain.to_vec())
}

fn aad(header: &[u8], upstream: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + upstream.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(upstream.as_bytes());
    aad
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
