//! The record kept for each queued alert: a small versioned binary header, then the payload
//! exactly as it was received (it is forwarded verbatim).

use crate::clock::Millis;

/// Format version of [`Envelope`]; a record with another version is dead-lettered, not guessed.
const VERSION: u8 = 1;
/// version (1) + received_at (8) + attempts (4) + next_attempt_at (8) + key_hash (8).
const HEADER_LEN: usize = 29;

/// One queued alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// When the agent accepted it (epoch ms).
    pub received_at: Millis,
    /// Delivery attempts that failed and will be retried.
    pub attempts: u32,
    /// Not before this time (epoch ms); 0 = now.
    pub next_attempt_at: Millis,
    /// Hash of the grouping key; alerts with the same hash are delivered in order.
    pub key_hash: u64,
    /// The body, verbatim.
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {0} bytes, shorter than its header")]
    Short(usize),
    #[error("record has format version {0}, this agent reads version {VERSION}")]
    Version(u8),
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload.len());
        v.push(VERSION);
        v.extend_from_slice(&self.received_at.to_be_bytes());
        v.extend_from_slice(&self.attempts.to_be_bytes());
        v.extend_from_slice(&self.next_attempt_at.to_be_bytes());
        v.extend_from_slice(&self.key_hash.to_be_bytes());
        v.extend_from_slice(&self.payload);
        v
    }

    pub fn decode(b: &[u8]) -> Result<Envelope, DecodeError> {
        if b.len() < HEADER_LEN {
            return Err(DecodeError::Short(b.len()));
        }
        if b[0] != VERSION {
            return Err(DecodeError::Version(b[0]));
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(Envelope {
            received_at: u64_at(1),
            attempts: u32::from_be_bytes(b[9..13].try_into().expect("4 bytes")),
            next_attempt_at: u64_at(13),
            key_hash: u64_at(21),
            payload: b[HEADER_LEN..].to_vec(),
        })
    }
}

/// The grouping key of an alert: alerts with the same key reach OnCall in the order received,
/// so a resolve never overtakes its firing alert. `alert_uid` (formatted_webhook), `groupKey`
/// (Alertmanager), else the whole body (OnCall's `webhook` kind groups by the whole payload).
pub fn key_hash(uid: Option<&[u8]>, body: &[u8]) -> u64 {
    match uid {
        Some(k) => fnv1a(b'k', k),
        None => fnv1a(b'b', body),
    }
}

/// FNV-1a: stable across builds and releases (the hash is persisted), unlike std's hasher.
fn fnv1a(domain: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&domain).chain(bytes) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(received_at: u64, attempts: u32, next: u64, key: u64, payload: Vec<u8>) {
            let e = Envelope { received_at, attempts, next_attempt_at: next, key_hash: key, payload };
            prop_assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        }

        #[test]
        fn decode_never_panics(bytes: Vec<u8>) {
            let _ = Envelope::decode(&bytes);
        }
    }

    #[test]
    fn other_version_is_an_error() {
        let mut b = Envelope {
            received_at: 1,
            attempts: 0,
            next_attempt_at: 0,
            key_hash: 0,
            payload: vec![],
        }
        .encode();
        b[0] = 9;
        assert!(matches!(Envelope::decode(&b), Err(DecodeError::Version(9))));
    }

    #[test]
    fn uid_key_differs_from_body_key() {
        assert_ne!(key_hash(Some(b"x"), b"x"), key_hash(None, b"x"));
        assert_eq!(key_hash(Some(b"a"), b"1"), key_hash(Some(b"a"), b"2"));
    }
}
