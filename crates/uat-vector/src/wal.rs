//! The write-ahead log. Every acknowledged upsert or delete is one record:
//!
//! `[u32 body length][u32 CRC-32 of body][body]`, body = `[u64 seq][u8 op][...]`.
//!
//! On open, records are read until the first one that is short, has a zero
//! length (a zero-filled tail) or whose checksum fails, or until a last record
//! that does not decode; that torn tail is cut off (never loaded as garbage).
//! A record that does not decode with more records after it, or a damaged
//! one (short, zeroed, bad checksum) with a valid record somewhere after
//! it, is corruption: only the last record can be torn by a crash, and
//! cutting there would delete acknowledged writes.
//!
//! A failed fsync poisons the log (see [`VectorError::WalPoisoned`]): the
//! kernel may have dropped the pages it could not write and report a later
//! fsync as a success, so nothing more is written on top of possibly lost
//! records until the collection is reopened. A record whose own fsync failed
//! is cut off first: it was never acknowledged, so it must not be replayed.

use crate::error::{Result, VectorError};
use crate::types::{Point, PointId};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// When the WAL is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// `fdatasync` before every acknowledgement: nothing acknowledged is lost, even on power loss.
    #[default]
    Always,
    /// `fdatasync` at most every 100 ms (on a write, and from the store's
    /// background flusher): a process crash loses nothing (writes reach the OS
    /// before the acknowledgement); a power loss may lose the last ~100 ms.
    Batch,
    /// Never fsync; the OS flushes when it likes (a process crash still loses nothing).
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = VectorError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "always" => Ok(Self::Always),
            "batch" => Ok(Self::Batch),
            "never" => Ok(Self::Never),
            _ => Err(VectorError::BadConfig(format!(
                "fsync must be always, batch or never, got {s:?}"
            ))),
        }
    }
}

pub(crate) const BATCH_INTERVAL: Duration = Duration::from_millis(100);
const OP_UPSERT: u8 = 1;
const OP_DELETE: u8 = 2;

/// A logged operation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WalOp {
    Upsert(Vec<Point>),
    Delete(Vec<PointId>),
}

/// An open WAL file.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    policy: FsyncPolicy,
    last_sync: Instant,
    /// Records written but not yet synced.
    dirty: bool,
    pub(crate) last_seq: u64,
    /// Bytes of valid records in the file.
    len: u64,
    buf: Vec<u8>,
    /// The collection's name, for errors.
    collection: String,
    /// Set by a failed fsync (the error it gave): every later write, sync
    /// and reset fails, for the life of this handle.
    poisoned: Option<String>,
    /// Failpoint: every fsync fails (as a disk returning EIO would).
    #[cfg(test)]
    fail_syncs: bool,
}

impl Wal {
    /// Opens (or creates) the log of `collection`, handing its valid records
    /// to `replay` in order, one at a time as they are read (the whole log
    /// was read, then decoded, before the first was applied: twice its size
    /// in memory); a torn tail is truncated. An error from `replay`, or a
    /// damaged log, fails the open (records already handed over are then
    /// the caller's to drop).
    pub(crate) fn open_with(
        path: &Path,
        collection: &str,
        policy: FsyncPolicy,
        replay: &mut dyn FnMut(u64, WalOp) -> Result<()>,
    ) -> Result<Self> {
        let io = |e| VectorError::io(path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut input = std::io::BufReader::with_capacity(1 << 20, &file);
        // Under `always` only the last record can be torn, so damage with
        // valid records after it is corruption. Under `batch` and `never`,
        // a power cut can persist a later page of the log and not an
        // earlier one: the records after such a gap were never synced, and
        // losing them is what those settings allow, so the log is cut there
        // (the cut bytes kept beside it) and the collection opens.
        let cut_damage = policy != FsyncPolicy::Always;
        let (good_len, last_seq) = scan_records(&mut input, size, path, cut_damage, replay)?;
        drop(input);
        if good_len < size {
            file.set_len(good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::Start(good_len)).map_err(io)?;
        Ok(Self {
            len: good_len,
            file,
            path: path.to_owned(),
            policy,
            last_sync: Instant::now(),
            dirty: false,
            last_seq: last_seq.unwrap_or(0),
            buf: Vec::new(),
            collection: collection.to_owned(),
            poisoned: None,
            #[cfg(test)]
            fail_syncs: false,
        })
    }

    /// [`Wal::open_with`] collecting the records.
    #[cfg(test)]
    pub(crate) fn open(
        path: &Path,
        collection: &str,
        policy: FsyncPolicy,
    ) -> Result<(Self, Vec<(u64, WalOp)>)> {
        let mut records = Vec::new();
        let wal = Self::open_with(path, collection, policy, &mut |seq, op| {
            records.push((seq, op));
            Ok(())
        })?;
        Ok((wal, records))
    }

    /// Appends one record and flushes it per the policy; returns its sequence number.
    pub(crate) fn append(&mut self, op: &WalOp) -> Result<u64> {
        self.check_writable()?;
        let seq = self.last_seq + 1;
        let mut body = Vec::new();
        put_u64(&mut body, seq);
        match op {
            WalOp::Upsert(points) => {
                body.push(OP_UPSERT);
                put_u32(&mut body, points.len() as u32);
                for p in points {
                    put_id(&mut body, &p.id);
                    put_u32(&mut body, p.vector.len() as u32);
                    put_f32s(&mut body, &p.vector);
                    put_payload(&mut body, p.payload.as_ref());
                }
            }
            WalOp::Delete(ids) => {
                body.push(OP_DELETE);
                put_u32(&mut body, ids.len() as u32);
                for id in ids {
                    put_id(&mut body, id);
                }
            }
        }
        self.buf.clear();
        put_u32(&mut self.buf, body.len() as u32);
        put_u32(&mut self.buf, crc32fast::hash(&body));
        self.buf.extend_from_slice(&body);
        // One write: the record reaches the OS (and so survives a process kill) before we acknowledge.
        if let Err(e) = self.file.write_all(&self.buf) {
            // Never leave half a record in front of later ones: cut it off.
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::Start(self.len));
            return Err(VectorError::io(&self.path, e));
        }
        let before = self.len;
        self.len += self.buf.len() as u64;
        let sync = match self.policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::Batch => self.last_sync.elapsed() >= BATCH_INTERVAL,
            FsyncPolicy::Never => false,
        };
        if !sync {
            self.dirty = true;
        } else if let Err(e) = self.fsync(false) {
            // Not acknowledged, so never to be replayed: cut the record off.
            // The cut is not fsynced (no fsync of this file is trusted now):
            // only a power cut before the file system commits it could bring
            // the record back.
            let mut cause = VectorError::io(&self.path, e).to_string();
            if let Err(e) = self.file.set_len(before) {
                cause.push_str(&format!(
                    "; the failed record could not be cut off ({e}) and may come back on reopen"
                ));
            }
            let _ = self.file.seek(SeekFrom::Start(before));
            self.len = before;
            return Err(self.poison(cause));
        }
        self.last_seq = seq;
        Ok(seq)
    }

    /// Flushes to stable storage now; a failure poisons the WAL.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.check_writable()?;
        self.fsync(false)
            .map_err(|e| self.poison(VectorError::io(&self.path, e).to_string()))
    }

    /// Syncs if records were written since the last sync (a poisoned WAL
    /// has none: its failure was reported once, by the sync that failed).
    pub(crate) fn sync_if_dirty(&mut self) -> Result<()> {
        if self.dirty { self.sync() } else { Ok(()) }
    }

    /// Empties the log after a snapshot has made its records redundant.
    pub(crate) fn reset(&mut self) -> Result<()> {
        self.check_writable()?;
        let io = |e| VectorError::io(&self.path, e);
        self.file.set_len(0).map_err(io)?;
        self.len = 0;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.fsync(true)
            .map_err(|e| self.poison(VectorError::io(&self.path, e).to_string()))
    }

    /// [`VectorError::WalPoisoned`] once an fsync has failed.
    pub(crate) fn check_writable(&self) -> Result<()> {
        match &self.poisoned {
            Some(cause) => Err(VectorError::WalPoisoned {
                collection: self.collection.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// True once an fsync has failed.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Marks the WAL as refusing writes because of `cause`; returns the error to report.
    fn poison(&mut self, cause: String) -> VectorError {
        // Nothing left that a sync could make durable: never retry it.
        self.dirty = false;
        self.poisoned = Some(cause.clone());
        VectorError::WalPoisoned {
            collection: self.collection.clone(),
            cause,
        }
    }

    /// `fdatasync` (`fsync` with `all`, after a size change); on success
    /// nothing written is pending.
    fn fsync(&mut self, all: bool) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_syncs {
            return Err(std::io::Error::other("failpoint: fsync fails"));
        }
        if all {
            self.file.sync_all()?;
        } else {
            self.file.sync_data()?;
        }
        self.last_sync = Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// Failpoint: from now on every fsync of this handle fails (or succeeds again).
    #[cfg(test)]
    pub(crate) fn fail_syncs(&mut self, fail: bool) {
        self.fail_syncs = fail;
    }

    /// Bytes of records in the log (no system call: tracked on append and reset).
    pub(crate) fn bytes(&self) -> u64 {
        self.len
    }

    /// Current size in bytes.
    #[cfg(test)]
    pub(crate) fn size(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

/// Reads the records of `input` (`size` bytes, read from its start) and
/// hands each to `replay`; returns the length of the valid prefix and the
/// last record's sequence number.
///
/// What follows the valid prefix is cut off as a torn tail only if no
/// valid record follows it: a damaged record with valid records after it
/// is not a write cut short (under `fsync = "always"` only the last record
/// can be) but damage, and cutting there would delete acknowledged writes,
/// so it is [`VectorError::Corrupt`] (the collection is not opened, the
/// file left as it is).
///
/// With `cut_damage` (the log was not fsynced after every record), such
/// damage is cut off like a torn tail instead, after the bytes cut are
/// copied to `<log>.damaged` and an error is logged.
fn scan_records<R: Read + Seek>(
    input: &mut R,
    size: u64,
    path: &Path,
    cut_damage: bool,
    replay: &mut dyn FnMut(u64, WalOp) -> Result<()>,
) -> Result<(u64, Option<u64>)> {
    let io = |e| VectorError::io(path, e);
    let (mut pos, mut last) = (0u64, None);
    let (mut header, mut body) = ([0u8; 8], Vec::new());
    while size - pos >= 8 {
        input.read_exact(&mut header).map_err(io)?;
        let len = u64::from(u32::from_le_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let end = pos + 8 + len;
        // No record is empty, so a zero length (a zeroed header: CRC-32 of
        // nothing is 0) is a tail of zeros, as a power cut can leave after
        // a size update; a body past the end was not fully written.
        if len == 0 || end > size {
            break;
        }
        body.resize(len as usize, 0);
        input.read_exact(&mut body).map_err(io)?;
        if crc32fast::hash(&body) != crc {
            break; // torn or garbage
        }
        let Some((seq, op)) = decode(&body) else {
            if end == size {
                break; // the last record: treated as torn, like a bad checksum
            }
            return Err(VectorError::corrupt(
                "WAL",
                format!("undecodable record at byte {pos}"),
            ));
        };
        replay(seq, op)?;
        last = Some(seq);
        pos = end;
    }
    if pos < size {
        input.seek(SeekFrom::Start(pos)).map_err(io)?;
        let mut tail = Vec::new();
        input.read_to_end(&mut tail).map_err(io)?;
        if let Some(at) = valid_record_after(&tail, last) {
            let what = format!(
                "damaged record at byte {pos} with a valid record after it, at byte {}",
                pos + at as u64
            );
            if !cut_damage {
                return Err(VectorError::corrupt("WAL", what));
            }
            let mut kept = path.as_os_str().to_owned();
            kept.push(".damaged");
            std::fs::write(&kept, &tail).map_err(|e| VectorError::io(Path::new(&kept), e))?;
            tracing::error!(
                wal = %path.display(),
                kept = %Path::new(&kept).display(),
                "{what}: the log was not fsynced after every record (fsync is not \"always\"), \
                 so the records from the damage on are dropped as unsynced; the bytes cut are kept"
            );
        }
    }
    Ok((pos, last))
}

/// [`scan_records`] over bytes in memory, collecting the records.
#[cfg(test)]
fn parse_records(data: &[u8]) -> Result<(Vec<(u64, WalOp)>, usize)> {
    let mut out = Vec::new();
    let (len, _) = scan_records(
        &mut std::io::Cursor::new(data),
        data.len() as u64,
        Path::new("wal.log"),
        false,
        &mut |seq, op| {
            out.push((seq, op));
            Ok(())
        },
    )?;
    Ok((out, len as usize))
}

/// The body of the record framed at `pos`, if its header is whole, its
/// length not zero, its body whole and its checksum right.
fn frame(data: &[u8], pos: usize) -> Option<&[u8]> {
    let mut r = Reader::new(data.get(pos..)?);
    let (len, crc) = (r.u32()? as usize, r.u32()?);
    let body = r.bytes(len).filter(|b| !b.is_empty())?;
    (crc32fast::hash(body) == crc).then_some(body)
}

/// Where in `tail` (the log from a damaged record on) a whole valid
/// record begins after its first byte, if one does (the damaged record's
/// length field may be the damaged part, so every offset is tried).
/// `last` is the sequence number of the last good record: a record after
/// it has a larger one, by at most one per record. Offsets are first
/// screened on their header (a plausible length, a sequence number below
/// 2^40 and past `last`, a known op), so the checksum, which reads the
/// whole body, runs on almost none: a torn tail costs one pass over it.
fn valid_record_after(tail: &[u8], last: Option<u64>) -> Option<usize> {
    let after = last.unwrap_or(0);
    // Header (8), seq (8) and op (1): the least a record holds.
    (1..tail.len().saturating_sub(16)).find(|&p| {
        let mut r = Reader::new(&tail[p..]);
        let len = r.u32().map_or(0, |x| x as usize);
        let seq = r.u32().and_then(|_| r.u64()).unwrap_or(0);
        let op = r.u8().unwrap_or(0);
        let plausible = len >= 9
            && p + 8 + len <= tail.len()
            && seq > after
            && seq < 1 << 40
            && matches!(op, OP_UPSERT | OP_DELETE)
            && last.is_none_or(|l| seq - l <= tail.len() as u64);
        plausible
            && frame(tail, p)
                .and_then(decode)
                .is_some_and(|(s, _)| s == seq)
    })
}

fn decode(body: &[u8]) -> Option<(u64, WalOp)> {
    let mut r = Reader::new(body);
    let seq = r.u64()?;
    let op = match r.u8()? {
        OP_UPSERT => {
            let n = r.u32()? as usize;
            let mut pts = Vec::with_capacity(n.min(100_000));
            for _ in 0..n {
                let id = r.id()?;
                let dim = r.u32()? as usize;
                let vector = r.f32s(dim)?;
                let payload = r.payload()?;
                pts.push(Point {
                    id,
                    vector,
                    payload,
                });
            }
            WalOp::Upsert(pts)
        }
        OP_DELETE => {
            let n = r.u32()? as usize;
            let mut ids = Vec::with_capacity(n.min(100_000));
            for _ in 0..n {
                ids.push(r.id()?);
            }
            WalOp::Delete(ids)
        }
        _ => return None,
    };
    r.is_done().then_some((seq, op))
}

// ---- little-endian codec shared with the snapshot ----

pub(crate) fn put_u32(b: &mut Vec<u8>, x: u32) {
    b.extend_from_slice(&x.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut Vec<u8>, x: u64) {
    b.extend_from_slice(&x.to_le_bytes());
}
pub(crate) fn put_f32s(b: &mut Vec<u8>, v: &[f32]) {
    b.reserve(v.len() * 4);
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
}
pub(crate) fn put_id(b: &mut Vec<u8>, id: &PointId) {
    match id {
        PointId::Num(n) => {
            b.push(0);
            put_u64(b, *n);
        }
        PointId::Uuid(s) => {
            b.push(1);
            put_u32(b, s.len() as u32);
            b.extend_from_slice(s.as_bytes());
        }
    }
}
pub(crate) fn put_payload(b: &mut Vec<u8>, p: Option<&serde_json::Value>) {
    match p.and_then(|p| serde_json::to_vec(p).ok()) {
        Some(bytes) => {
            put_u32(b, bytes.len() as u32 + 1);
            b.extend_from_slice(&bytes);
        }
        None => put_u32(b, 0),
    }
}

/// A cursor over little-endian bytes; every read returns `None` past the end.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.bytes(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.bytes(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    pub(crate) fn f32s(&mut self, n: usize) -> Option<Vec<f32>> {
        let b = self.bytes(n.checked_mul(4)?)?;
        Some(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
    pub(crate) fn id(&mut self) -> Option<PointId> {
        match self.u8()? {
            0 => self.u64().map(PointId::Num),
            1 => {
                let n = self.u32()? as usize;
                let s = std::str::from_utf8(self.bytes(n)?).ok()?;
                Some(PointId::stored_uuid(s))
            }
            _ => None,
        }
    }
    pub(crate) fn payload(&mut self) -> Option<Option<serde_json::Value>> {
        self.payload_with_len().map(|(p, _)| p)
    }
    /// A payload and the length of its stored JSON text (0 without one).
    pub(crate) fn payload_with_len(&mut self) -> Option<(Option<serde_json::Value>, u32)> {
        match self.u32()? {
            0 => Some((None, 0)),
            n => serde_json::from_slice(self.bytes(n as usize - 1)?)
                .ok()
                .map(|p| (Some(p), n - 1)),
        }
    }
    pub(crate) fn is_done(&self) -> bool {
        self.pos == self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pt(i: u64) -> Point {
        Point {
            id: PointId::Num(i),
            vector: vec![i as f32, 0.5],
            payload: Some(json!({"i": i})),
        }
    }

    #[test]
    fn records_round_trip_and_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else { panic!("tempdir") };
        let path = dir.path().join("wal.log");
        let Ok((mut wal, recs)) = Wal::open(&path, "test", FsyncPolicy::Always) else {
            panic!("open")
        };
        assert!(recs.is_empty());
        let uuid = PointId::Uuid("550e8400-e29b-41d4-a716-446655440000".into());
        let ops = vec![
            WalOp::Upsert(vec![pt(1), pt(2)]),
            WalOp::Delete(vec![PointId::Num(1), uuid.clone()]),
            WalOp::Upsert(vec![Point {
                id: uuid,
                vector: vec![1.0, 2.0],
                payload: None,
            }]),
        ];
        for op in &ops {
            assert!(wal.append(op).is_ok());
        }
        let full = wal.size();
        drop(wal);
        // Tear the last record: cut 3 bytes off its end.
        let Ok(f) = OpenOptions::new().write(true).open(&path) else {
            panic!("reopen")
        };
        assert!(f.set_len(full - 3).is_ok());
        drop(f);
        let Ok((wal, recs)) = Wal::open(&path, "test", FsyncPolicy::Always) else {
            panic!("open 2")
        };
        let got: Vec<WalOp> = recs.into_iter().map(|r| r.1).collect();
        assert_eq!(got, ops[..2].to_vec());
        assert_eq!(wal.last_seq, 2);
        assert!(wal.size() < full - 3, "torn tail must be truncated");
        drop(wal);
        // Flip a byte inside the second record: it and everything after is dropped.
        let Ok(mut data) = std::fs::read(&path) else {
            panic!("read")
        };
        let n = data.len();
        data[n - 2] ^= 0xff;
        assert!(std::fs::write(&path, &data).is_ok());
        let Ok((_, recs)) = Wal::open(&path, "test", FsyncPolicy::Never) else {
            panic!("open 3")
        };
        assert_eq!(recs.len(), 1);
    }

    /// A power cut can leave the file longer than what was written, the
    /// tail zero-filled: a zero header (len 0, CRC-32 of nothing = 0) is a
    /// torn tail, not corruption that keeps the collection from opening.
    #[test]
    fn zero_filled_tail_is_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path, "test", FsyncPolicy::Always).expect("open");
        let ops = [
            WalOp::Upsert(vec![pt(1)]),
            WalOp::Delete(vec![PointId::Num(1)]),
        ];
        for op in &ops {
            wal.append(op).expect("append");
        }
        let full = wal.size();
        drop(wal);
        let mut f = OpenOptions::new().append(true).open(&path).expect("reopen");
        f.write_all(&[0; 16]).expect("zeros");
        drop(f);
        let (mut wal, recs) = Wal::open(&path, "test", FsyncPolicy::Always).expect("open 2");
        let got: Vec<WalOp> = recs.into_iter().map(|r| r.1).collect();
        assert_eq!(got, ops.to_vec());
        assert_eq!(wal.size(), full, "the zeros are cut off");
        assert_eq!(
            wal.append(&WalOp::Upsert(vec![pt(3)])).expect("append 3"),
            3
        );
        drop(wal);
        let (_, recs) = Wal::open(&path, "test", FsyncPolicy::Always).expect("open 3");
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2], (3, WalOp::Upsert(vec![pt(3)])));
    }

    /// A whole record with a good checksum that does not decode: the last
    /// one is a torn tail; one with records after it is corruption.
    #[test]
    fn undecodable_record_is_torn_at_the_tail_and_corrupt_before_it() {
        let mut bad = Vec::new();
        put_u64(&mut bad, 2);
        bad.push(99); // no such op
        let mut framed = Vec::new();
        put_u32(&mut framed, bad.len() as u32);
        put_u32(&mut framed, crc32fast::hash(&bad));
        framed.extend_from_slice(&bad);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path, "test", FsyncPolicy::Never).expect("open");
        wal.append(&WalOp::Upsert(vec![pt(1)])).expect("append");
        drop(wal);
        let good = std::fs::read(&path).expect("read");

        let tail = [good.as_slice(), &framed].concat();
        let (recs, len) = parse_records(&tail).expect("a bad last record is torn");
        assert_eq!((recs.len(), len), (1, good.len()));

        let middle = [good.as_slice(), &framed, &good].concat();
        assert!(matches!(
            parse_records(&middle),
            Err(VectorError::Corrupt { .. })
        ));
    }

    /// A record damaged in the middle of the log (bad checksum, a length
    /// past the end, a zeroed header) with valid records after it is not a
    /// torn tail: cutting it off, as the open did, deleted the acknowledged
    /// records after it. The open fails and the file stays as it is; the
    /// same damage in the last record is still a torn tail, cut off.
    #[test]
    fn damaged_record_before_valid_ones_is_corrupt_not_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path, "test", FsyncPolicy::Always).expect("open");
        let mut ends = Vec::new();
        for i in 1..=3 {
            wal.append(&WalOp::Upsert(vec![pt(i)])).expect("append");
            ends.push(wal.size() as usize);
        }
        drop(wal);
        let good = std::fs::read(&path).expect("read");
        let second = ends[0];
        let mut bad_crc = good.clone();
        bad_crc[second + 20] ^= 0xff;
        let mut bad_len = good.clone();
        bad_len[second + 3] = 0x7f;
        let mut zeroed = good.clone();
        zeroed[second..second + 8].fill(0);
        let mut first = good.clone();
        first[20] ^= 0xff;
        for (what, data) in [
            ("first", first),
            ("checksum", bad_crc),
            ("length", bad_len),
            ("zeroed", zeroed),
        ] {
            std::fs::write(&path, &data).expect("write");
            assert!(
                matches!(
                    Wal::open(&path, "test", FsyncPolicy::Always),
                    Err(VectorError::Corrupt { .. })
                ),
                "{what}"
            );
            assert_eq!(std::fs::read(&path).expect("read"), data, "{what}: not cut");
        }

        // Under `batch` (or `never`) records after a gap may never have been
        // synced: the log is cut at the damage, the cut bytes kept beside it.
        let mut gap = good.clone();
        gap[second + 20] ^= 0xff;
        std::fs::write(&path, &gap).expect("write");
        let (wal, recs) = Wal::open(&path, "test", FsyncPolicy::Batch).expect("batch opens");
        assert_eq!(recs.len(), 1);
        assert_eq!(wal.size() as usize, second, "cut at the damage");
        drop(wal);
        let kept = std::fs::read(dir.path().join("wal.log.damaged")).expect("kept");
        assert_eq!(kept, &gap[second..], "the cut bytes are kept");

        let mut torn = good.clone();
        torn[ends[1] + 20] ^= 0xff;
        std::fs::write(&path, &torn).expect("write");
        let (wal, recs) = Wal::open(&path, "test", FsyncPolicy::Always).expect("a torn tail");
        assert_eq!(recs.len(), 2);
        assert_eq!(wal.size() as usize, ends[1], "the torn tail is cut off");
    }

    /// An append whose fsync fails was not acknowledged: it must not be in
    /// the file (it came back on replay, and the next append reused its
    /// seq), and nothing more is written on a log whose fsync failed (a
    /// later fsync can report success over lost pages) until it is reopened.
    #[test]
    fn failed_fsync_cuts_the_record_off_and_poisons_the_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path, "c", FsyncPolicy::Always).expect("open");
        assert_eq!(
            wal.append(&WalOp::Upsert(vec![pt(1)])).expect("append 1"),
            1
        );
        let good = wal.size();

        wal.fail_syncs(true);
        let err = wal.append(&WalOp::Upsert(vec![pt(2)]));
        assert!(
            matches!(&err, Err(VectorError::WalPoisoned { collection, .. }) if collection == "c"),
            "{err:?}"
        );
        assert_eq!(
            (wal.size(), wal.bytes()),
            (good, good),
            "the record is cut off"
        );

        // The disk is fine again, but the WAL is not trusted until reopened.
        wal.fail_syncs(false);
        let poisoned = |e: Option<VectorError>| matches!(e, Some(VectorError::WalPoisoned { .. }));
        assert!(poisoned(
            wal.append(&WalOp::Delete(vec![PointId::Num(1)])).err()
        ));
        assert!(poisoned(wal.sync().err()));
        assert!(poisoned(wal.reset().err()));
        assert_eq!(wal.size(), good, "nothing written, nothing emptied");
        drop(wal);

        let (mut wal, recs) = Wal::open(&path, "c", FsyncPolicy::Always).expect("reopen");
        assert_eq!(recs, vec![(1, WalOp::Upsert(vec![pt(1)]))]);
        assert_eq!(
            wal.append(&WalOp::Upsert(vec![pt(3)])).expect("append 3"),
            2
        );
        drop(wal);
        let (_, recs) = Wal::open(&path, "c", FsyncPolicy::Always).expect("reopen 2");
        let seqs: Vec<u64> = recs.iter().map(|r| r.0).collect();
        assert_eq!(seqs, [1, 2], "unique seqs");
        assert_eq!(recs[1].1, WalOp::Upsert(vec![pt(3)]));
    }

    /// The `batch` flusher's fsync failing may have lost writes already
    /// acknowledged: the WAL is poisoned, the failure reported once (not
    /// every 100 ms), and later writes refused. (`Never` here so that no
    /// fsync happens on the write itself; the flusher calls the same
    /// `sync_if_dirty` whatever the policy.)
    #[test]
    fn failed_background_fsync_poisons_the_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path, "c", FsyncPolicy::Never).expect("open");
        wal.append(&WalOp::Upsert(vec![pt(1)])).expect("append 1");
        wal.fail_syncs(true);
        assert!(matches!(
            wal.sync_if_dirty(),
            Err(VectorError::WalPoisoned { .. })
        ));
        assert!(wal.sync_if_dirty().is_ok(), "reported once");
        wal.fail_syncs(false);
        assert!(matches!(
            wal.append(&WalOp::Upsert(vec![pt(2)])),
            Err(VectorError::WalPoisoned { .. })
        ));
        assert!(matches!(wal.sync(), Err(VectorError::WalPoisoned { .. })));
        drop(wal);
        let (mut wal, recs) = Wal::open(&path, "c", FsyncPolicy::Never).expect("reopen");
        assert_eq!(recs, vec![(1, WalOp::Upsert(vec![pt(1)]))]);
        assert_eq!(
            wal.append(&WalOp::Upsert(vec![pt(2)])).expect("append 2"),
            2
        );
        assert!(wal.sync().is_ok());
    }
}
