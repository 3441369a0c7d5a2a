//! The stored envelope of a value in L2 and L3:
//! `magic(1) | flags(1) | crc32 of stored at + the raw value (4, LE) | stored at (8, LE) | payload`,
//! where "stored at" is when the value was first stored (milliseconds since
//! the Unix epoch: its age on a hit, kept through promotions) and the payload
//! is the raw value or, for values of [`COMPRESS_THRESHOLD`] bytes or more,
//! its LZ4 block (size-prepended). The envelope of releases before the time
//! was recorded (magic `0xCA`, no time) is still read, as a value of unknown
//! age. A value that fails any check is corrupt: the caller treats it as a
//! miss and deletes it.

use crate::error::CacheError;
use bytes::Bytes;

/// Values at least this large are LZ4-compressed in L2 and L3.
pub const COMPRESS_THRESHOLD: usize = 1024;

/// The envelope without the time it was stored.
const MAGIC_UNTIMED: u8 = 0xCA;
/// The envelope with it.
const MAGIC: u8 = 0xCB;
const FLAG_LZ4: u8 = 1;
const HEADER_UNTIMED: usize = 6;
const HEADER: usize = HEADER_UNTIMED + 8;

/// Wraps a raw value, first stored at `stored_at` (ms since the Unix
/// epoch), for storage; `None` (a promotion of an entry of unknown age)
/// writes the untimed envelope.
pub fn encode(raw: &[u8], stored_at: Option<u64>) -> Vec<u8> {
    let crc = checksum(raw, stored_at);
    let compressed = (raw.len() >= COMPRESS_THRESHOLD)
        .then(|| lz4_flex::compress_prepend_size(raw))
        .filter(|c| c.len() < raw.len());
    let (flags, payload) = match &compressed {
        Some(c) => (FLAG_LZ4, c.as_slice()),
        None => (0, raw),
    };
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(if stored_at.is_some() {
        MAGIC
    } else {
        MAGIC_UNTIMED
    });
    out.push(flags);
    out.extend_from_slice(&crc.to_le_bytes());
    if let Some(at) = stored_at {
        out.extend_from_slice(&at.to_le_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// CRC-32 of the raw value, after the stored time when there is one (so a
/// damaged time is caught too: a time in the future would pass every
/// `max-age`, one in the past never).
fn checksum(raw: &[u8], stored_at: Option<u64>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    if let Some(at) = stored_at {
        h.update(&at.to_le_bytes());
    }
    h.update(raw);
    h.finalize()
}

/// Unwraps a stored value, checking magic, flags and checksum: the raw
/// value and when it was first stored (`None` in the untimed envelope).
pub fn decode(stored: &[u8]) -> Result<(Bytes, Option<u64>), CacheError> {
    let (stored_at, header) = match stored.first() {
        Some(&MAGIC) if stored.len() >= HEADER => {
            let mut at = [0u8; 8];
            at.copy_from_slice(&stored[HEADER_UNTIMED..HEADER]);
            (Some(u64::from_le_bytes(at)), HEADER)
        }
        Some(&MAGIC_UNTIMED) if stored.len() >= HEADER_UNTIMED => (None, HEADER_UNTIMED),
        _ => return Err(CacheError::Corrupt("bad header".into())),
    };
    let flags = stored[1];
    let crc = u32::from_le_bytes([stored[2], stored[3], stored[4], stored[5]]);
    let payload = &stored[header..];
    let raw = match flags {
        0 => payload.to_vec(),
        FLAG_LZ4 => {
            // The size prefix is read before the checksum can be: a value
            // claiming more than LZ4 can expand its block to (255:1) is
            // corrupt, refused before its size is allocated (a damaged or
            // forged 4 GiB claim was allocated on every lookup).
            let claimed = payload
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| CacheError::Corrupt("truncated LZ4 size".into()))?;
            if claimed > payload.len().saturating_mul(255) {
                return Err(CacheError::Corrupt(format!(
                    "LZ4 size {claimed} impossible for a {}-byte block",
                    payload.len()
                )));
            }
            lz4_flex::decompress_size_prepended(payload)
                .map_err(|e| CacheError::Corrupt(e.to_string()))?
        }
        f => return Err(CacheError::Corrupt(format!("unknown flags {f}"))),
    };
    if checksum(&raw, stored_at) != crc {
        return Err(CacheError::Corrupt("checksum mismatch".into()));
    }
    Ok((Bytes::from(raw), stored_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_values_round_trip_and_large_ones_shrink() {
        let small = b"{\"a\":1}".to_vec();
        assert_eq!(
            decode(&encode(&small, Some(1_700_000_000_123))).unwrap(),
            (Bytes::from(small.clone()), Some(1_700_000_000_123))
        );
        let large = "hello world ".repeat(1000).into_bytes();
        let enc = encode(&large, Some(7));
        assert!(
            enc.len() < large.len() / 4,
            "{} vs {}",
            enc.len(),
            large.len()
        );
        assert_eq!(decode(&enc).unwrap(), (Bytes::from(large), Some(7)));
        // LZ4's best ratio (one long run) is under the 255:1 its size check allows.
        let zeros = vec![0u8; 8 << 20];
        let enc = encode(&zeros, Some(0));
        assert!(enc.len() < zeros.len() / 200, "{}", enc.len());
        assert_eq!(decode(&enc).unwrap().0.len(), zeros.len());
    }

    /// Entries written by releases before the time was recorded are read,
    /// of unknown age.
    #[test]
    fn the_untimed_envelope_is_read_without_a_time() {
        let raw = b"{\"old\":true}";
        let mut old = vec![MAGIC_UNTIMED, 0];
        old.extend_from_slice(&crc32fast::hash(raw).to_le_bytes());
        old.extend_from_slice(raw);
        assert_eq!(decode(&old).unwrap(), (Bytes::from(&raw[..]), None));
        let old_small = old;
        let large = "abc".repeat(1000).into_bytes();
        let mut old = vec![MAGIC_UNTIMED, FLAG_LZ4];
        old.extend_from_slice(&crc32fast::hash(&large).to_le_bytes());
        old.extend_from_slice(&lz4_flex::compress_prepend_size(&large));
        assert_eq!(decode(&old).unwrap(), (Bytes::from(large), None));
        // What a promotion of such an entry writes.
        assert_eq!(encode(raw, None), old_small);
        // A damaged stored time is caught.
        let mut enc = encode(raw, Some(1_700_000_000_000));
        enc[HEADER_UNTIMED + 5] ^= 0x40;
        assert!(matches!(decode(&enc), Err(CacheError::Corrupt(_))));
        // A timed header cut short is corrupt, not read as untimed.
        let enc = encode(raw, Some(5));
        assert!(decode(&enc[..HEADER - 1]).is_err());
    }

    #[test]
    fn damaged_values_are_corrupt() {
        let large = "abc".repeat(1000).into_bytes();
        let mut enc = encode(&large, Some(1));
        let n = enc.len();
        enc[n - 3] ^= 0xff;
        assert!(decode(&enc).is_err());
        let mut small = encode(b"0123456789", Some(1));
        small[HEADER + 2] ^= 1;
        assert!(matches!(decode(&small), Err(CacheError::Corrupt(_))));
        assert!(decode(b"garbage").is_err());
        // An LZ4 size no block of this length can expand to.
        let mut forged = vec![MAGIC, FLAG_LZ4, 0, 0, 0, 0];
        forged.extend_from_slice(&0u64.to_le_bytes());
        forged.extend_from_slice(&u32::MAX.to_le_bytes());
        forged.extend_from_slice(&[0u8; 16]);
        match decode(&forged) {
            Err(CacheError::Corrupt(m)) => assert!(m.contains("impossible"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(
            decode(&[MAGIC, FLAG_LZ4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_err(),
            "truncated size"
        );
        assert!(decode(b"").is_err());
    }
}
