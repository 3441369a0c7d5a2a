//! Snapshots: the whole graph (links included), vectors and payloads in one
//! file, loaded with one bulk read and no re-insertion.
//!
//! Layout: `MAGIC`, `u32` header length, header JSON, then per node:
//! `u8 flags (1 = deleted)`, id, `u8 level`, per level `u32 n` + `n × u32`
//! links, `dim × f32`, payload; and at the end a `u32` CRC-32 of all before it.
//! Written to a temporary file, fsynced and renamed over the old one.

use crate::error::{Result, VectorError};
use crate::hnsw::{Hnsw, Links, Node, links};
use crate::quant::Quantizer;
use crate::types::CollectionConfig;
use crate::wal::{Reader, put_f32s, put_id, put_payload, put_u32};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

const MAGIC: &[u8; 8] = b"UATVSNP1";

#[derive(Serialize, Deserialize)]
struct Header {
    seq: u64,
    len: usize,
    dimension: usize,
    entry: Option<(u32, usize)>,
    quantizer: Option<Quantizer>,
    /// Vectors the quantizer was trained on. Absent in snapshots written
    /// before it was recorded: taken as enough (no retraining on open; a
    /// compaction retrains on every live point).
    #[serde(default = "trained_enough")]
    quant_samples: usize,
}

fn trained_enough() -> usize {
    crate::collection::TRAIN_SAMPLES
}

/// Writes a snapshot of `h` covering WAL records up to `seq`.
pub(crate) fn write(path: &Path, h: &Hnsw, seq: u64) -> Result<()> {
    let len = h.len();
    let header = Header {
        seq,
        len,
        dimension: h.dim,
        entry: h.entry(),
        quantizer: h.quant.get().cloned(),
        quant_samples: h.quant_samples.load(Ordering::Relaxed),
    };
    let hjson = serde_json::to_vec(&header)
        .map_err(|e| VectorError::corrupt("snapshot header", e.to_string()))?;
    let mut buf = Vec::with_capacity(len * (h.dim * 4 + 64 + h.m0 * 4) + hjson.len() + 64);
    buf.extend_from_slice(MAGIC);
    put_u32(&mut buf, hjson.len() as u32);
    buf.extend_from_slice(&hjson);
    for i in 0..len as u32 {
        let (Some(n), Some(v)) = (h.node(i), h.vector(i)) else {
            return Err(VectorError::corrupt(
                "snapshot",
                format!("slot {i} is empty while writing"),
            ));
        };
        buf.push(u8::from(h.is_deleted(i)));
        put_id(&mut buf, &n.ext);
        buf.push(n.level() as u8);
        for l in 0..=n.level() {
            let l = h.links(i, l).map(|l| l.to_vec()).unwrap_or_default();
            put_u32(&mut buf, l.len() as u32);
            for x in l.iter() {
                put_u32(&mut buf, *x);
            }
        }
        put_f32s(&mut buf, v);
        put_payload(&mut buf, n.payload.as_ref());
    }
    let crc = crc32fast::hash(&buf);
    put_u32(&mut buf, crc);
    let tmp = path.with_extension("tmp");
    let io = |e| VectorError::io(&tmp, e);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&buf).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| VectorError::io(path, e))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Loads a snapshot, if there is one; returns the graph and the WAL sequence it covers.
pub(crate) fn read(path: &Path, cfg: &CollectionConfig) -> Result<Option<(Hnsw, u64)>> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(VectorError::io(path, e)),
    };
    let bad = |d: &str| VectorError::corrupt(format!("snapshot {}", path.display()), d);
    if data.len() < MAGIC.len() + 8 || &data[..8] != MAGIC {
        return Err(bad("bad magic or too short"));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != stored {
        return Err(bad("checksum mismatch"));
    }
    let mut r = Reader::new(&body[8..]);
    let hlen = r.u32().ok_or_else(|| bad("truncated header"))? as usize;
    let header: Header =
        serde_json::from_slice(r.bytes(hlen).ok_or_else(|| bad("truncated header"))?)
            .map_err(|e| bad(&format!("header: {e}")))?;
    if header.dimension != cfg.dimension {
        return Err(bad("dimension differs from the collection config"));
    }
    let h = Hnsw::for_config(cfg);
    if let Some(q) = header.quantizer {
        let _ = h.quant.set(q);
        h.quant_samples
            .store(header.quant_samples, Ordering::Relaxed);
    }
    let mut links0 = Vec::with_capacity(h.m0);
    for i in 0..header.len {
        let (node, vector, deleted) = read_node(&mut r, &h, cfg.dimension, &mut links0)
            .ok_or_else(|| bad(&format!("node {i} truncated")))?;
        h.push_loaded(node, &vector, &links0, deleted);
    }
    if r.remaining() != 0 {
        return Err(bad("trailing bytes"));
    }
    h.set_entry(header.entry);
    Ok(Some((h, header.seq)))
}

/// One node: its metadata and upper lists, its vector, its level-0 list
/// (into `links0`) and whether it is deleted.
fn read_node(
    r: &mut Reader<'_>,
    h: &Hnsw,
    dim: usize,
    links0: &mut Vec<u32>,
) -> Option<(Node, Vec<f32>, bool)> {
    let flags = r.u8()?;
    let ext = r.id()?;
    let level = r.u8()? as usize;
    let mut upper = Vec::with_capacity(level);
    for l in 0..=level {
        let n = r.u32()? as usize;
        let ids = if l == 0 {
            links0.clear();
            &mut *links0
        } else {
            upper.push(Vec::with_capacity(n));
            upper.last_mut()?
        };
        for _ in 0..n {
            ids.push(r.u32()?);
        }
    }
    let vector = r.f32s(dim)?;
    // The stored text's length is the payload's compact JSON length.
    let (payload, payload_len) = r.payload_with_len()?;
    let code = h.encode(&vector);
    let upper = upper
        .iter()
        .map(|ids| {
            let store = links::owned(h.m.max(ids.len()));
            Links::new(&store).set(ids);
            store
        })
        .collect();
    Some((
        Node {
            ext,
            code,
            payload,
            payload_len,
            upper,
            lock: Mutex::new(()),
            deleted: AtomicBool::new(flags & 1 != 0),
        },
        vector,
        flags & 1 != 0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshots written before the sample count was recorded load as
    /// trained (an upgrade does not rebuild every quantized collection).
    #[test]
    fn headers_without_a_sample_count_load_as_trained() {
        let old = r#"{"seq":3,"len":0,"dimension":4,"entry":null,"quantizer":{"Sq8":{"offset":0.0,"scale":0.01}}}"#;
        let h: Header = serde_json::from_str(old).expect("an old header parses");
        assert_eq!(h.quant_samples, crate::collection::TRAIN_SAMPLES);
        let new =
            r#"{"seq":3,"len":0,"dimension":4,"entry":null,"quantizer":null,"quant_samples":7}"#;
        let h: Header = serde_json::from_str(new).expect("a new header parses");
        assert_eq!(h.quant_samples, 7);
    }
}
