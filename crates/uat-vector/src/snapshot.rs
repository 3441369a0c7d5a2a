//! Snapshots: the whole graph (links included), vectors and payloads in one
//! file, written and loaded as a stream (never whole in memory: that made a
//! snapshot or an open need twice the collection's memory) and loaded with
//! no re-insertion.
//!
//! Layout: `MAGIC`, `u32` header length, header JSON, then per node:
//! `u8 flags (1 = deleted)`, id, `u8 level`, per level `u32 n` + `n × u32`
//! links, `dim × f32`, payload; and at the end a `u32` CRC-32 of all before it.
//! Written to a temporary file, fsynced and renamed over the old one.

use crate::durable;
use crate::error::{Result, VectorError};
use crate::hnsw::{Hnsw, Links, Node, links};
use crate::quant::Quantizer;
use crate::types::{CollectionConfig, PointId};
use crate::wal::{put_f32s, put_id, put_payload, put_u32};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
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
    let tmp = path.with_extension("tmp");
    let io = |e| VectorError::io(&tmp, e);
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let written = write_body(file, &tmp, h, &hjson).and_then(|file| file.sync_all().map_err(io));
    if written.is_err() {
        // Never renamed into place: only its space is to reclaim.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::rename(&tmp, path).map_err(|e| VectorError::io(path, e))?;
    // The rename is durable only once the folder is: until then a power cut
    // can bring the old snapshot back, and the caller empties the WAL on
    // success, so a failure here must fail the snapshot (the WAL is kept,
    // and replaying it over either snapshot gives the same state).
    durable::sync_dir(durable::parent_of(path))
}

/// Writes the snapshot's bytes to `file` (at `tmp`), node by node, through
/// a buffer and a running checksum: the file is never held in memory whole
/// (that doubled the memory a collection needs at each snapshot). Returns
/// the file, flushed, for the caller to fsync.
fn write_body(file: std::fs::File, tmp: &Path, h: &Hnsw, hjson: &[u8]) -> Result<std::fs::File> {
    let io = |e| VectorError::io(tmp, e);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut crc = crc32fast::Hasher::new();
    // One node's bytes at a time (or the header's).
    let mut buf = Vec::with_capacity(h.dim * 4 + 64 + h.m0 * 4 + hjson.len());
    buf.extend_from_slice(MAGIC);
    put_u32(&mut buf, hjson.len() as u32);
    buf.extend_from_slice(hjson);
    crc.update(&buf);
    out.write_all(&buf).map_err(io)?;
    for i in 0..h.len() as u32 {
        let (Some(n), Some(v)) = (h.node(i), h.vector(i)) else {
            return Err(VectorError::corrupt(
                "snapshot",
                format!("slot {i} is empty while writing"),
            ));
        };
        buf.clear();
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
        crc.update(&buf);
        out.write_all(&buf).map_err(io)?;
    }
    out.write_all(&crc.finalize().to_le_bytes()).map_err(io)?;
    out.into_inner().map_err(|e| io(e.into_error()))
}

/// Loads a snapshot, if there is one; returns the graph and the WAL sequence it covers.
///
/// The file is read through a buffer, node by node, and checksummed as it
/// goes (it was read whole, then decoded: twice the collection in memory).
/// The checksum is known only at the end, so a damaged file is reported as
/// a checksum mismatch whatever failed first, and its graph is dropped.
pub(crate) fn read(path: &Path, cfg: &CollectionConfig) -> Result<Option<(Hnsw, u64)>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(VectorError::io(path, e)),
    };
    let io = |e| VectorError::io(path, e);
    let size = file.metadata().map_err(io)?.len();
    let bad = |d: &str| VectorError::corrupt(format!("snapshot {}", path.display()), d);
    if size < MAGIC.len() as u64 + 8 {
        return Err(bad("bad magic or too short"));
    }
    let mut buffered = std::io::BufReader::with_capacity(1 << 20, file);
    let mut src = Source {
        inner: (&mut buffered).take(size - 4),
        crc: crc32fast::Hasher::new(),
        failed: None,
    };
    if src.vec(MAGIC.len()).as_deref() != Some(MAGIC.as_slice()) {
        return Err(src
            .io_error(path)
            .unwrap_or_else(|| bad("bad magic or too short")));
    }
    let loaded = load(&mut src, cfg);
    // Whatever was left unread (after a failure) still counts in the sum.
    std::io::copy(&mut src, &mut std::io::sink()).map_err(io)?;
    if let Some(e) = src.io_error(path) {
        return Err(e);
    }
    let sum = src.crc.finalize();
    let mut stored = [0u8; 4];
    buffered.read_exact(&mut stored).map_err(io)?;
    if sum != u32::from_le_bytes(stored) {
        return Err(bad("checksum mismatch"));
    }
    loaded.map(Some).map_err(|d| bad(&d))
}

/// Decodes the header and nodes from `src`; an error tells what is wrong.
fn load<R: Read>(
    src: &mut Source<R>,
    cfg: &CollectionConfig,
) -> std::result::Result<(Hnsw, u64), String> {
    let hlen = src.u32().ok_or("truncated header")? as usize;
    let hjson = src.vec(hlen).ok_or("truncated header")?;
    let header: Header = serde_json::from_slice(&hjson).map_err(|e| format!("header: {e}"))?;
    if header.dimension != cfg.dimension {
        return Err("dimension differs from the collection config".into());
    }
    let h = Hnsw::for_config(cfg);
    if let Some(q) = header.quantizer {
        let _ = h.quant.set(q);
        h.quant_samples
            .store(header.quant_samples, Ordering::Relaxed);
    }
    let mut links0 = Vec::with_capacity(h.m0);
    for i in 0..header.len {
        let (node, vector, deleted) = read_node(src, &h, cfg.dimension, &mut links0)
            .ok_or_else(|| format!("node {i} truncated"))?;
        h.push_loaded(node, &vector, &links0, deleted);
    }
    if src.inner.limit() != 0 {
        return Err("trailing bytes".into());
    }
    h.set_entry(header.entry);
    Ok((h, header.seq))
}

/// A little-endian reader over the snapshot's body (the file less its
/// checksum) that adds what it reads to the running checksum; every read
/// returns `None` past the end or on an I/O error (kept in `failed`).
struct Source<'a, R> {
    inner: std::io::Take<&'a mut R>,
    crc: crc32fast::Hasher,
    failed: Option<std::io::Error>,
}

impl<R: Read> Source<'_, R> {
    fn fill(&mut self, buf: &mut [u8]) -> Option<()> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.crc.update(buf);
                Some(())
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    self.failed = Some(e);
                }
                None
            }
        }
    }
    /// `n` bytes; a length read from a damaged file allocates no more than
    /// the file holds.
    fn vec(&mut self, n: usize) -> Option<Vec<u8>> {
        let mut v = Vec::with_capacity(n.min(1 << 16));
        match (&mut self.inner).take(n as u64).read_to_end(&mut v) {
            Ok(got) if got == n => {
                self.crc.update(&v);
                Some(v)
            }
            Ok(_) => {
                self.crc.update(&v);
                None
            }
            Err(e) => {
                self.failed = Some(e);
                None
            }
        }
    }
    fn u8(&mut self) -> Option<u8> {
        let mut b = [0; 1];
        self.fill(&mut b).map(|()| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        let mut b = [0; 4];
        self.fill(&mut b).map(|()| u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Option<u64> {
        let mut b = [0; 8];
        self.fill(&mut b).map(|()| u64::from_le_bytes(b))
    }
    fn f32s(&mut self, n: usize) -> Option<Vec<f32>> {
        let b = self.vec(n.checked_mul(4)?)?;
        Some(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
    fn id(&mut self) -> Option<PointId> {
        match self.u8()? {
            0 => self.u64().map(PointId::Num),
            1 => {
                let n = self.u32()? as usize;
                let b = self.vec(n)?;
                Some(PointId::stored_uuid(std::str::from_utf8(&b).ok()?))
            }
            _ => None,
        }
    }
    /// A payload and the length of its stored JSON text (0 without one).
    fn payload_with_len(&mut self) -> Option<(Option<serde_json::Value>, u32)> {
        match self.u32()? {
            0 => Some((None, 0)),
            n => {
                let b = self.vec(n as usize - 1)?;
                serde_json::from_slice(&b).ok().map(|p| (Some(p), n - 1))
            }
        }
    }
    /// The I/O error a read met, if any (not a short file: that is damage).
    fn io_error(&mut self, path: &Path) -> Option<VectorError> {
        self.failed.take().map(|e| VectorError::io(path, e))
    }
}

/// Draining what is left: read and added to the checksum.
impl<R: Read> Read for Source<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// One node: its metadata and upper lists, its vector, its level-0 list
/// (into `links0`) and whether it is deleted.
fn read_node<R: Read>(
    r: &mut Source<'_, R>,
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
            // The count is not checked yet (the checksum comes last).
            upper.push(Vec::with_capacity(n.min(h.m0)));
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
