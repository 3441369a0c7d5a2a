//! The stored envelope of a value in L2 and L3:
//! `magic(1) | flags(1) | crc32 of the raw value (4, LE) | payload`, where
//! the payload is the raw value or, for values of
//! [`COMPRESS_THRESHOLD`] bytes or more, its LZ4 block (size-prepended).
//! A value that fails any check is corrupt: the caller treats it as a miss
//! and deletes it.

use crate::error::CacheError;
use bytes::Bytes;

/// Values at least this large are LZ4-compressed in L2 and L3.
pub const COMPRESS_THRESHOLD: usize = 1024;

const MAGIC: u8 = 0xCA;
const FLAG_LZ4: u8 = 1;
const HEADER: usize = 6;

/// Wraps a raw value for storage.
pub fn encode(raw: &[u8]) -> Vec<u8> {
    let crc = crc32fast::hash(raw);
    let (flags, payload) = if raw.len() >= COMPRESS_THRESHOLD {
        let c = lz4_flex::compress_prepend_size(raw);
        if c.len() < raw.len() {
            (FLAG_LZ4, c)
        } else {
            (0, raw.to_vec())
        }
    } else {
        (0, raw.to_vec())
    };
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(MAGIC);
    out.push(flags);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Unwraps a stored value, checking magic, flags and checksum.
pub fn decode(stored: &[u8]) -> Result<Bytes, CacheError> {
    if stored.len() < HEADER || stored[0] != MAGIC {
        return Err(CacheError::Corrupt("bad header".into()));
    }
    let flags = stored[1];
    let crc = u32::from_le_bytes([stored[2], stored[3], stored[4], stored[5]]);
    let payload = &stored[HEADER..];
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
    if crc32fast::hash(&raw) != crc {
        return Err(CacheError::Corrupt("checksum mismatch".into()));
    }
    Ok(Bytes::from(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_values_round_trip_and_large_ones_shrink() {
        let small = b"{\"a\":1}".to_vec();
        assert_eq!(decode(&encode(&small)).unwrap(), Bytes::from(small.clone()));
        let large = "hello world ".repeat(1000).into_bytes();
        let enc = encode(&large);
        assert!(
            enc.len() < large.len() / 4,
            "{} vs {}",
            enc.len(),
            large.len()
        );
        assert_eq!(decode(&enc).unwrap(), Bytes::from(large));
        // LZ4's best ratio (one long run) is under the 255:1 its size check allows.
        let zeros = vec![0u8; 8 << 20];
        let enc = encode(&zeros);
        assert!(enc.len() < zeros.len() / 200, "{}", enc.len());
        assert_eq!(decode(&enc).unwrap().len(), zeros.len());
    }

    #[test]
    fn damaged_values_are_corrupt() {
        let large = "abc".repeat(1000).into_bytes();
        let mut enc = encode(&large);
        let n = enc.len();
        enc[n - 3] ^= 0xff;
        assert!(decode(&enc).is_err());
        let mut small = encode(b"0123456789");
        small[8] ^= 1;
        assert!(matches!(decode(&small), Err(CacheError::Corrupt(_))));
        assert!(decode(b"garbage").is_err());
        // An LZ4 size no block of this length can expand to.
        let mut forged = vec![MAGIC, FLAG_LZ4, 0, 0, 0, 0];
        forged.extend_from_slice(&u32::MAX.to_le_bytes());
        forged.extend_from_slice(&[0u8; 16]);
        match decode(&forged) {
            Err(CacheError::Corrupt(m)) => assert!(m.contains("impossible"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(
            decode(&[MAGIC, FLAG_LZ4, 0, 0, 0, 0, 1]).is_err(),
            "truncated size"
        );
        assert!(decode(b"").is_err());
    }
}
