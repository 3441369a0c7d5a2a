//! A collection: the graph, the id map, the payload indexes, the WAL and the
//! snapshot of one named set of points, kept in one folder:
//! `config.json`, `wal.log`, `snapshot.bin`.

mod search;
#[cfg(test)]
mod tests;

use crate::distance::{Metric, normalize};
use crate::durable;
use crate::error::{Result, VectorError};
use crate::filter::Filter;
use crate::hnsw::Hnsw;
use crate::metrics;
use crate::payload_index::{BitSet, PayloadIndex};
use crate::quant::Quantizer;
use crate::snapshot;
use crate::types::{
    CollectionConfig, CollectionInfo, DeleteRequest, MemoryUsage, Point, PointId, Quantization,
    check_vector,
};
use crate::wal::{FsyncPolicy, Wal, WalOp};
use parking_lot::{Mutex, RwLock};
use rayon::prelude::*;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Below this many points a batch is inserted on the calling thread.
const PARALLEL_MIN: usize = 64;
/// Compaction runs before a snapshot when this share of nodes is tombstoned.
const COMPACT_RATIO: f64 = 0.2;
/// The automatic snapshot also runs, compacting, once tombstones outnumber
/// live points and number at least this many, whatever the WAL's size: a
/// delete's record is a few bytes, so a collection emptied by deletes would
/// never reach the WAL threshold, and its searches would walk ever more
/// tombstones and its memory never shrink. The floor keeps small
/// collections from being rewritten for a handful of deletes.
pub(crate) const AUTO_COMPACT_MIN_DELETED: usize = 1_000;
/// A quantizer is trained on the first batch written, often one point (a
/// memory, a document added alone). Until it has seen this many, a batch
/// that doubles the collection since the last training is inserted by a
/// rebuild that retrains it on every point: about ten small rebuilds in the
/// life of a collection filled point by point.
pub(crate) const TRAIN_SAMPLES: usize = 1024;

/// The swappable in-memory state (compaction builds a new one).
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) hnsw: Hnsw,
    pub(crate) ids: RwLock<HashMap<PointId, u32>>,
    pub(crate) pindex: RwLock<PayloadIndex>,
}

impl State {
    fn empty(cfg: &CollectionConfig) -> Self {
        Self::from_hnsw(Hnsw::for_config(cfg), cfg)
    }

    /// Rebuilds the id map and payload indexes of a loaded graph.
    fn from_hnsw(hnsw: Hnsw, cfg: &CollectionConfig) -> Self {
        let mut ids = HashMap::with_capacity(hnsw.len());
        let mut pindex = PayloadIndex::new(&cfg.payload_indexes);
        for i in 0..hnsw.len() as u32 {
            if let Some(n) = hnsw.node(i)
                && !hnsw.is_deleted(i)
            {
                // Two spellings of one UUID, live in a snapshot written before
                // ids were canonical, are now one id: the later slot wins.
                if let Some(old) = ids.insert(n.ext.clone(), i) {
                    hnsw.tombstone(old);
                }
                pindex.add(i, n.payload.as_ref());
            }
        }
        pindex.cover(hnsw.len());
        Self {
            hnsw,
            ids: RwLock::new(ids),
            pindex: RwLock::new(pindex),
        }
    }

    /// The exact set of node ids below `n` whose payload matches `f`
    /// (tombstones included), or `None` when some condition has no
    /// suitable index. Ids the payload index does not cover yet (an upsert
    /// linked them into the graph and has not indexed them) are checked
    /// against `f` itself: the index alone would let them through every
    /// `must_not`, and searches trust the set without checking again.
    pub(crate) fn resolve_filter(&self, f: &Filter, n: usize) -> Option<BitSet> {
        let h = &self.hnsw;
        let pindex = self.pindex.read();
        let mut bits = pindex.resolve_checked(f, n, &|i, c| {
            h.node(i).map(|node| c.matches(node.payload.as_ref()))
        })?;
        for i in pindex.covered().min(n)..n {
            let i = i as u32;
            if h.node(i)
                .is_some_and(|node| f.matches(node.payload.as_ref()))
            {
                bits.insert(i);
            } else {
                bits.remove(i);
            }
        }
        Some(bits)
    }
}

/// A named collection of points. Cheap to share (`Arc<Collection>`); every
/// method takes `&self` and may be called from many threads.
#[derive(Debug)]
pub struct Collection {
    name: String,
    dir: PathBuf,
    config: CollectionConfig,
    pub(crate) state: RwLock<State>,
    /// The WAL; its lock also orders writes (WAL order = apply order).
    wal: Mutex<Wal>,
    /// Set (under the WAL lock) when the store drops the collection: from
    /// then on its folder may hold a new collection of the same name, which
    /// a snapshot of this one must not overwrite.
    retired: AtomicBool,
}

impl Collection {
    /// Creates a new, empty collection in `dir`, durably: when this returns,
    /// the folder, `config.json` and `wal.log` survive a power cut.
    ///
    /// `dir` may exist but must be empty (or hold only the `config.json.tmp`
    /// of an interrupted create); otherwise [`VectorError::FolderNotEmpty`]:
    /// files found there (a collection that failed to open, the remains of
    /// an old one) are never loaded into the new collection nor deleted.
    pub fn create(
        dir: &Path,
        name: &str,
        config: CollectionConfig,
        fsync: FsyncPolicy,
    ) -> Result<Self> {
        config.validate()?;
        let io = |e| VectorError::io(dir, e);
        std::fs::create_dir_all(dir).map_err(io)?;
        durable::sync_dir(durable::parent_of(dir))?;
        for entry in std::fs::read_dir(dir).map_err(io)? {
            if entry.map_err(io)?.file_name() != "config.json.tmp" {
                return Err(VectorError::FolderNotEmpty(dir.display().to_string()));
            }
        }
        let cfg_path = dir.join("config.json");
        let tmp = dir.join("config.json.tmp");
        let body = serde_json::to_vec_pretty(&config)
            .map_err(|e| VectorError::BadConfig(e.to_string()))?;
        let tmp_io = |e| VectorError::io(&tmp, e);
        let mut f = std::fs::File::create(&tmp).map_err(tmp_io)?;
        f.write_all(&body).map_err(tmp_io)?;
        f.sync_all().map_err(tmp_io)?;
        drop(f);
        std::fs::rename(&tmp, &cfg_path).map_err(|e| VectorError::io(&cfg_path, e))?;
        let c = Self::open(dir, name, fsync)?;
        // One folder sync for the rename and for the wal.log `open` created.
        durable::sync_dir(dir)?;
        Ok(c)
    }

    /// Opens a collection: loads the snapshot, replays the WAL tail.
    pub fn open(dir: &Path, name: &str, fsync: FsyncPolicy) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let raw = std::fs::read(&cfg_path).map_err(|e| VectorError::io(&cfg_path, e))?;
        let config: CollectionConfig = serde_json::from_slice(&raw)
            .map_err(|e| VectorError::corrupt(cfg_path.display().to_string(), e.to_string()))?;
        let (state, snap_seq) = match snapshot::read(&dir.join("snapshot.bin"), &config)? {
            Some((h, seq)) => (State::from_hnsw(h, &config), seq),
            None => (State::empty(&config), 0),
        };
        let state = RwLock::new(state);
        let wal_path = dir.join("wal.log");
        // Replayed as they were applied (retrainings included), each record
        // as it is read.
        let mut replay = |seq: u64, op: WalOp| -> Result<()> {
            if seq <= snap_seq {
                return Ok(());
            }
            match op {
                WalOp::Upsert(points) => {
                    // Every logged vector was checked against this dimension;
                    // one that differs is another collection's record (or
                    // damage the checksum missed): never pad or cut it.
                    for p in &points {
                        check_vector(&p.vector, config.dimension).map_err(|e| {
                            VectorError::corrupt(
                                format!("WAL {}", wal_path.display()),
                                format!("record {seq}, point {}: {e}", p.id),
                            )
                        })?;
                    }
                    apply_logged_upsert(&config, &state, points);
                }
                WalOp::Delete(ids) => {
                    apply_delete(&state.read(), &ids);
                }
            }
            Ok(())
        };
        let mut wal = Wal::open_with(&wal_path, name, fsync, &mut replay)?;
        wal.last_seq = wal.last_seq.max(snap_seq);
        let c = Self {
            name: name.to_owned(),
            dir: dir.to_owned(),
            config,
            state,
            wal: Mutex::new(wal),
            retired: AtomicBool::new(false),
        };
        c.update_gauges();
        Ok(c)
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Settings.
    pub fn config(&self) -> &CollectionConfig {
        &self.config
    }

    /// Folder on disk.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Live points.
    pub fn count(&self) -> usize {
        self.state.read().ids.read().len()
    }

    /// The ids of the live points, in no order (a snapshot: points written
    /// meanwhile may or may not be in it).
    pub fn ids(&self) -> Vec<PointId> {
        self.state.read().ids.read().keys().cloned().collect()
    }

    /// Inserts or replaces points (by id); durable per the fsync policy when
    /// this returns. Returns the number of points written. Once a WAL fsync
    /// has failed, fails with [`VectorError::WalPoisoned`] (as every write
    /// does) until the collection is reopened.
    pub fn upsert(&self, points: Vec<Point>) -> Result<usize> {
        for p in &points {
            check_vector(&p.vector, self.config.dimension)?;
            if p.payload
                .as_ref()
                .is_some_and(|v| !v.is_object() && !v.is_null())
            {
                return Err(VectorError::BadRequest(format!(
                    "payload of point {} must be a JSON object",
                    p.id
                )));
            }
        }
        if points.is_empty() {
            return Ok(0);
        }
        let n = points.len();
        let op = WalOp::Upsert(points);
        let mut wal = self.wal.lock();
        wal.append(&op)?;
        let WalOp::Upsert(points) = op else {
            return Ok(0);
        };
        apply_logged_upsert(&self.config, &self.state, points);
        drop(wal);
        metrics::upserted(n);
        self.update_gauges();
        Ok(n)
    }

    /// Deletes points by id; returns how many existed.
    pub fn delete(&self, ids: Vec<PointId>) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let op = WalOp::Delete(ids);
        let mut wal = self.wal.lock();
        wal.append(&op)?;
        let WalOp::Delete(ids) = op else { return Ok(0) };
        let n = apply_delete(&self.state.read(), &ids);
        drop(wal);
        self.update_gauges();
        Ok(n)
    }

    /// Deletes every point matching `filter`; returns how many.
    pub fn delete_by_filter(&self, filter: &Filter) -> Result<usize> {
        let mut wal = self.wal.lock();
        let ids: Vec<PointId> = {
            let st = self.state.read();
            let h = &st.hnsw;
            let bits = st.resolve_filter(filter, h.len());
            (0..h.len() as u32)
                .filter(|&i| bits.as_ref().is_none_or(|b| b.contains(i)))
                .filter(|&i| !h.is_deleted(i))
                .filter_map(|i| h.node(i))
                .filter(|n| bits.is_some() || filter.matches(n.payload.as_ref()))
                .map(|n| n.ext.clone())
                .collect()
        };
        if ids.is_empty() {
            return Ok(0);
        }
        let op = WalOp::Delete(ids);
        wal.append(&op)?;
        let WalOp::Delete(ids) = op else { return Ok(0) };
        let n = apply_delete(&self.state.read(), &ids);
        drop(wal);
        self.update_gauges();
        Ok(n)
    }

    /// Runs a delete request: exactly one of `ids` or `filter` must be given.
    pub fn delete_request(&self, req: &DeleteRequest) -> Result<usize> {
        match (&req.ids, &req.filter) {
            (Some(ids), None) => self.delete(ids.clone()),
            (None, Some(f)) => self.delete_by_filter(f),
            _ => Err(VectorError::BadRequest(
                "give exactly one of \"ids\" or \"filter\"".into(),
            )),
        }
    }

    /// One point by id.
    pub fn get(&self, id: &PointId) -> Result<Point> {
        let st = self.state.read();
        let nid = st.ids.read().get(id).copied();
        let (node, vector) = nid
            .and_then(|i| st.hnsw.node(i).zip(st.hnsw.vector(i)))
            .ok_or_else(|| VectorError::PointNotFound(id.clone()))?;
        Ok(Point {
            id: node.ext.clone(),
            vector: vector.to_vec(),
            payload: node.payload.clone(),
        })
    }

    /// Writes a snapshot (compacting first if many points are tombstoned) and
    /// empties the WAL. Fails with [`VectorError::WalPoisoned`] once a WAL
    /// fsync has failed, as writes do.
    ///
    /// Atomic: the snapshot is written to `snapshot.tmp`, fsynced, renamed
    /// over `snapshot.bin` and its folder fsynced; only then is the WAL
    /// emptied. A failure (or a kill) at any step leaves the last snapshot
    /// or the new one in place and the WAL whole, so the next open recovers
    /// every acknowledged write (records the snapshot covers are skipped).
    pub fn snapshot(&self) -> Result<()> {
        let mut wal = self.wal.lock();
        self.compact_if_needed_and_snapshot(&mut wal)
    }

    /// [`Collection::snapshot`] if the WAL holds at least `wal_bytes` bytes of
    /// records, and at least `ratio` of the last snapshot's size (each
    /// snapshot rewrites the whole collection: a large one is rewritten once
    /// its WAL has grown by that part of it, not every `wal_bytes`), or if
    /// most points are tombstones ([`AUTO_COMPACT_MIN_DELETED`]: deletes
    /// barely grow the WAL), and the collection
    /// is not being dropped nor its WAL poisoned (the store's automatic
    /// snapshots: a poisoned WAL was reported when its fsync failed); returns the
    /// WAL's size when it snapshotted. Checked and done under one hold of the
    /// WAL lock, so no write slips in between and a collection being dropped
    /// is never written into its successor's folder.
    pub(crate) fn snapshot_if_wal_over(&self, wal_bytes: u64, ratio: f64) -> Result<Option<u64>> {
        let mut wal = self.wal.lock();
        let size = wal.bytes();
        if self.retired.load(Ordering::Relaxed) || wal.is_poisoned() {
            return Ok(None);
        }
        if !self.mostly_deleted() {
            if size < wal_bytes {
                return Ok(None);
            }
            let snapshot = std::fs::metadata(self.dir.join("snapshot.bin")).map_or(0, |m| m.len());
            if (size as f64) < snapshot as f64 * ratio {
                return Ok(None);
            }
        }
        self.compact_if_needed_and_snapshot(&mut wal)?;
        Ok(Some(size))
    }

    /// Snapshots the collection if its WAL holds records (operations no
    /// snapshot holds yet, which the next open would replay), checked and
    /// done under one hold of the WAL lock; returns the WAL's size when it
    /// snapshotted, `None` when the WAL was empty or the collection is being
    /// dropped. Never compacts: a rebuild of the graph is CPU work that can
    /// take minutes on a large collection, and a snapshot holding
    /// tombstones loads as fast (the shutdown snapshots, which must end
    /// within an orchestrator's grace period). A poisoned WAL fails with
    /// [`VectorError::WalPoisoned`]. Waits for the WAL (held by a write, or
    /// by an automatic snapshot that may be compacting for minutes) only
    /// until `deadline`: `Err(Busy)`, nothing done, when it was still held.
    pub(crate) fn snapshot_if_dirty(
        &self,
        deadline: std::time::Instant,
    ) -> std::result::Result<Option<u64>, SnapshotBusy> {
        let Some(mut wal) = self.wal.try_lock_until(deadline) else {
            return Err(SnapshotBusy::Busy);
        };
        let size = wal.bytes();
        if size == 0 || self.retired.load(Ordering::Relaxed) {
            return Ok(None);
        }
        self.snapshot_locked(&mut wal)
            .map_err(SnapshotBusy::Failed)?;
        Ok(Some(size))
    }

    /// Holds the WAL as a long write would (tests of who waits for it).
    #[cfg(test)]
    pub(crate) fn hold_wal_for_test(&self) -> parking_lot::MutexGuard<'_, Wal> {
        self.wal.lock()
    }

    /// Bytes of WAL records: the operations the next open replays on top
    /// of the snapshot (0 right after a snapshot). Waits for a write or a
    /// snapshot of this collection in progress.
    pub fn wal_bytes(&self) -> u64 {
        self.wal.lock().bytes()
    }

    /// [`Collection::wal_bytes`] without waiting: `None` while a write or a
    /// snapshot holds the WAL.
    pub(crate) fn try_wal_bytes(&self) -> Option<u64> {
        self.wal.try_lock().map(|wal| wal.bytes())
    }

    /// Tombstones outnumber live points and number at least
    /// [`AUTO_COMPACT_MIN_DELETED`]: then a snapshot also compacts (more
    /// than [`COMPACT_RATIO`] of the nodes are tombstones).
    fn mostly_deleted(&self) -> bool {
        let st = self.state.read();
        let deleted = st.hnsw.deleted_count();
        deleted >= AUTO_COMPACT_MIN_DELETED && deleted > st.ids.read().len()
    }

    fn compact_if_needed_and_snapshot(&self, wal: &mut Wal) -> Result<()> {
        wal.check_writable()?;
        let needs_compaction = {
            let st = self.state.read();
            st.hnsw.deleted_count() as f64 > COMPACT_RATIO * st.hnsw.len().max(1) as f64
        };
        if needs_compaction {
            self.rebuild();
        }
        self.snapshot_locked(wal)
    }

    fn snapshot_locked(&self, wal: &mut Wal) -> Result<()> {
        wal.check_writable()?;
        if self.retired.load(Ordering::Relaxed) {
            return Err(VectorError::NotFound(self.name.clone()));
        }
        let st = self.state.read();
        snapshot::write(&self.dir.join("snapshot.bin"), &st.hnsw, wal.last_seq)?;
        wal.reset()
    }

    /// Rebuilds the graph from live points (reclaiming tombstones), then snapshots.
    pub fn compact(&self) -> Result<()> {
        let mut wal = self.wal.lock();
        wal.check_writable()?;
        self.rebuild();
        self.snapshot_locked(&mut wal)
    }

    /// Rebuild under the WAL lock; searches keep running on the old state.
    fn rebuild(&self) {
        rebuild_state(&self.config, &self.state, Vec::new());
        self.update_gauges();
    }

    /// Marks the collection as being dropped (or not, if the drop failed),
    /// once any snapshot or compaction running has ended; while marked,
    /// snapshots fail with [`VectorError::NotFound`].
    pub(crate) fn set_retired(&self, retired: bool) {
        let _wal = self.wal.lock();
        self.retired.store(retired, Ordering::Relaxed);
    }

    /// Flushes the WAL to stable storage now (for the `batch`/`never`
    /// policies). A failure poisons the WAL ([`VectorError::WalPoisoned`]).
    pub fn flush(&self) -> Result<()> {
        self.wal.lock().sync()
    }

    /// Syncs the WAL if it holds unsynced records (the `batch` flusher). A
    /// failure poisons the WAL and is returned once.
    pub(crate) fn flush_if_dirty(&self) -> Result<()> {
        self.wal.lock().sync_if_dirty()
    }

    /// Failpoint: every fsync of the WAL fails from now on (or succeeds again).
    #[cfg(test)]
    pub(crate) fn fail_wal_syncs(&self, fail: bool) {
        self.wal.lock().fail_syncs(fail);
    }

    /// Memory in use, by kind. Payloads count as their compact JSON, every
    /// node's until a compaction reclaims the tombstoned ones: a running
    /// sum kept by the graph, so this never serializes a payload.
    pub fn memory(&self) -> MemoryUsage {
        let st = self.state.read();
        let h = &st.hnsw;
        let mut m = MemoryUsage::default();
        for i in 0..h.len() as u32 {
            if let Some(n) = h.node(i) {
                m.vectors_bytes += h.dim * 4;
                m.quantized_bytes += n.code.bytes();
            }
        }
        m.graph_bytes = h.graph_bytes();
        m.payload_bytes = h.payload_bytes() + st.pindex.read().bytes();
        let walked = if h.quant.get().is_some() && h.walk_quantized {
            m.quantized_bytes
        } else {
            m.vectors_bytes
        };
        m.index_bytes = m.graph_bytes + walked;
        m
    }

    /// Count, memory and settings.
    pub fn info(&self) -> CollectionInfo {
        let (count, deleted) = {
            let st = self.state.read();
            let c = st.ids.read().len();
            (c, st.hnsw.deleted_count())
        };
        let memory = self.memory();
        metrics::set_index_bytes(&self.name, &memory);
        CollectionInfo {
            name: self.name.clone(),
            count,
            deleted,
            memory,
            config: self.config.clone(),
        }
    }

    fn update_gauges(&self) {
        metrics::set_points(&self.name, self.count());
    }
}

/// Applies a logged upsert (under the WAL lock, or while opening). When
/// the batch doubles a collection whose quantizer has seen fewer than
/// [`TRAIN_SAMPLES`] points, the graph is rebuilt with the batch instead,
/// retraining the quantizer on every point: searches run on the old state
/// meanwhile, and the rebuild re-inserts fewer than twice [`TRAIN_SAMPLES`]
/// points besides the batch's own.
fn apply_logged_upsert(config: &CollectionConfig, state: &RwLock<State>, points: Vec<Point>) {
    let st = state.read();
    let trained = st.hnsw.quant_samples.load(Ordering::Relaxed);
    let retrain = st.hnsw.quant.get().is_some()
        && trained < TRAIN_SAMPLES
        && st.ids.read().len() + points.len() >= 2 * trained.max(1);
    if retrain {
        drop(st);
        rebuild_state(config, state, points);
    } else {
        apply_upsert(config, &st, points);
    }
}

/// Replaces `state` by a new one holding its live points, then `batch`
/// (whose points replace those of the same id); searches keep running on
/// the old state meanwhile.
fn rebuild_state(config: &CollectionConfig, state: &RwLock<State>, batch: Vec<Point>) {
    let mut points: Vec<Point> = {
        let st = state.read();
        let h = &st.hnsw;
        (0..h.len() as u32)
            .filter(|&i| !h.is_deleted(i))
            .filter_map(|i| h.node(i).zip(h.vector(i)))
            .map(|(n, v)| Point {
                id: n.ext.clone(),
                vector: v.to_vec(),
                payload: n.payload.clone(),
            })
            .collect()
    };
    points.extend(batch);
    let fresh = State::empty(config);
    apply_upsert(config, &fresh, points);
    *state.write() = fresh;
}

fn apply_upsert(config: &CollectionConfig, st: &State, points: Vec<Point>) {
    let h = &st.hnsw;
    let prepared: Vec<(PointId, Box<[f32]>, Option<Value>)> = points
        .into_iter()
        .map(|p| {
            let mut v = p.vector;
            if config.metric == Metric::Cosine {
                normalize(&mut v);
            }
            let payload = p.payload.filter(|x| !x.is_null());
            (p.id, v.into_boxed_slice(), payload)
        })
        .collect();
    if h.quant.get().is_none() {
        h.quant_samples.store(prepared.len(), Ordering::Relaxed);
        let sample = prepared.iter().map(|p| &*p.1);
        match config.quantization {
            // Unquantized collections that are filtered (they have payload
            // indexes) keep SQ8 codes too, used only by the exact scans of
            // filtered search: a filter passing 10% of 50k points then reads
            // 2 MB of codes instead of 7.5 MB of vectors. Walks stay f32.
            Quantization::None if !config.payload_indexes.is_empty() => {
                let _ = h.quant.set(Quantizer::train_sq8(sample));
            }
            Quantization::None => {}
            Quantization::Sq8 => {
                let _ = h.quant.set(Quantizer::train_sq8(sample));
            }
            Quantization::Binary => {
                let _ = h
                    .quant
                    .set(Quantizer::train_binary(sample, config.dimension));
            }
        }
    }
    let ext: Vec<PointId> = prepared.iter().map(|p| p.0.clone()).collect();
    let insert = |(id, v, payload): (PointId, Box<[f32]>, Option<Value>)| h.insert(id, v, payload);
    let new_ids: Vec<u32> = if prepared.len() >= PARALLEL_MIN {
        prepared.into_par_iter().map(insert).collect()
    } else {
        prepared.into_iter().map(insert).collect()
    };
    {
        let mut pi = st.pindex.write();
        for &nid in &new_ids {
            pi.add(nid, h.node(nid).and_then(|n| n.payload.as_ref()));
        }
    }
    let mut ids = st.ids.write();
    for (e, nid) in ext.into_iter().zip(new_ids) {
        if let Some(old) = ids.insert(e, nid) {
            h.tombstone(old);
        }
    }
}

fn apply_delete(st: &State, ids: &[PointId]) -> usize {
    let mut map = st.ids.write();
    let mut n = 0;
    for id in ids {
        if let Some(old) = map.remove(id) {
            st.hnsw.tombstone(old);
            n += 1;
        }
    }
    n
}

/// Why [`Collection::snapshot_if_dirty`] did not snapshot.
#[derive(Debug)]
pub(crate) enum SnapshotBusy {
    /// The WAL was still held at the deadline.
    Busy,
    /// The snapshot failed.
    Failed(VectorError),
}
