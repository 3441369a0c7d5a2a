//! Our HNSW graph (Malkov & Yashunin), built for concurrency:
//!
//! - nodes live in append-only buckets of `OnceLock`s, so readers find a node
//!   with two atomic loads and no lock, while writers append;
//! - neighbour lists are runs of atomics that searches copy without a lock
//!   (see `links.rs`); writers take the node's own mutex, held only to update
//!   that node's lists (never two at once, so no deadlock);
//! - any number of threads insert and search at the same time;
//! - deletes are tombstones: searches walk through them but never return them;
//!   compaction (in the collection) rebuilds the graph from live points.

mod arena;
pub(crate) mod links;
mod search;
mod slots;
#[cfg(test)]
mod tests;

use arena::Arena;
pub(crate) use links::Links;
use slots::Slots;

use crate::distance::Metric;
use crate::quant::{Code, Quantizer};
use crate::types::PointId;
use parking_lot::{Mutex, RwLock};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// One point in the graph, but for its level-0 record (vector, level-0
/// list, tombstone: see `arena.rs`). Immutable but for its upper lists; an
/// upsert of an existing id makes a new node and tombstones the old one.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) ext: PointId,
    pub(crate) code: Code,
    pub(crate) payload: Option<serde_json::Value>,
    /// The payload's size as compact JSON (0 without one), measured once
    /// when the node is made: it sums to the collection's payload memory
    /// and bounds what a search returns, without serializing again.
    pub(crate) payload_len: u32,
    /// Lists of levels 1..=level.
    pub(crate) upper: Box<[Box<[AtomicU32]>]>,
    /// Serializes writers of the node's lists, level 0 included (readers
    /// take no lock).
    pub(crate) lock: Mutex<()>,
    /// A copy of the record's tombstone for the scans that read codes: they
    /// touch this node anyway, and the record would cost them a cache (and
    /// TLB) miss per point. Set after the record's, before the delete returns.
    pub(crate) deleted: AtomicBool,
}

impl Node {
    /// A node with empty upper lists up to `level`.
    pub(crate) fn new(
        ext: PointId,
        code: Code,
        payload: Option<serde_json::Value>,
        level: usize,
        m: usize,
    ) -> Self {
        Self {
            ext,
            code,
            payload_len: payload.as_ref().map_or(0, json_len),
            payload,
            upper: (0..level).map(|_| links::owned(m)).collect(),
            lock: Mutex::new(()),
            deleted: AtomicBool::new(false),
        }
    }

    /// Top level of the node.
    pub(crate) fn level(&self) -> usize {
        self.upper.len()
    }

    /// Hints the CPU to fetch the first bytes of the node's code.
    #[inline]
    pub(crate) fn prefetch_code(&self) {
        let (ptr, len) = match &self.code {
            Code::Sq8 { codes, .. } => (codes.as_ptr().cast::<u8>(), codes.len()),
            Code::Binary(b) => (b.as_ptr().cast::<u8>(), b.len() * 8),
            _ => return,
        };
        prefetch(ptr, len.min(512));
    }
}

/// The length of a payload as compact JSON, without building the text
/// (saturating; the WAL and snapshots cannot hold a payload of 4 GiB).
pub(crate) fn json_len(v: &serde_json::Value) -> u32 {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Writing into a counter fails only for a non-string map key, which a
    // `Value` cannot have.
    let _ = serde_json::to_writer(&mut n, v);
    u32::try_from(n.0).unwrap_or(u32::MAX)
}

/// Prefetches `len` bytes from `ptr`, one cache line at a time (a no-op off x86-64).
#[inline]
fn prefetch(ptr: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let mut off = 0;
        while off < len {
            // SAFETY: SSE is part of the x86-64 baseline, and a prefetch is
            // only a hint: it never faults and reads nothing the program sees
            // (wrapping_add keeps the address computation itself defined).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ptr.wrapping_add(off).cast::<i8>()) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, len);
}

/// The graph.
#[derive(Debug)]
pub(crate) struct Hnsw {
    pub(crate) metric: Metric,
    pub(crate) dim: usize,
    pub(crate) m: usize,
    pub(crate) m0: usize,
    pub(crate) ef_construction: usize,
    ml: f64,
    slots: Slots,
    arena: Arena,
    next: AtomicU32,
    entry: RwLock<Option<(u32, usize)>>,
    pub(crate) quant: OnceLock<Quantizer>,
    /// How many vectors `quant` was trained on (the collection retrains it
    /// on more while this is small).
    pub(crate) quant_samples: AtomicUsize,
    /// Whether graph walks use the codes (a quantized collection). When
    /// false, codes (if any) serve only the exact scans of filtered search.
    pub(crate) walk_quantized: bool,
    deleted: AtomicUsize,
    /// Sum of every node's `payload_len`, tombstoned nodes included (their
    /// payloads stay in memory until a compaction builds a new graph).
    payload_bytes: AtomicUsize,
    level_seed: AtomicU64,
}

impl Hnsw {
    pub(crate) fn new(metric: Metric, dim: usize, m: usize, ef_construction: usize) -> Self {
        let m = m.max(2);
        Self {
            metric,
            dim,
            m,
            m0: 2 * m,
            ef_construction: ef_construction.max(1),
            ml: 1.0 / (m as f64).ln(),
            slots: Slots::new(),
            arena: Arena::new(dim, 2 * m),
            next: AtomicU32::new(0),
            entry: RwLock::new(None),
            quant: OnceLock::new(),
            quant_samples: AtomicUsize::new(0),
            walk_quantized: true,
            deleted: AtomicUsize::new(0),
            payload_bytes: AtomicUsize::new(0),
            level_seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// An empty graph with a collection's metric, dimension and HNSW
    /// settings; it walks codes only when the collection is quantized.
    pub(crate) fn for_config(cfg: &crate::types::CollectionConfig) -> Self {
        let mut h = Self::new(
            cfg.metric,
            cfg.dimension,
            cfg.hnsw.m,
            cfg.hnsw.ef_construction,
        );
        h.walk_quantized = cfg.quantization != crate::types::Quantization::None;
        h
    }

    /// Number of slots handed out (live + deleted + in-flight).
    pub(crate) fn len(&self) -> usize {
        self.next.load(Ordering::Acquire) as usize
    }

    /// Tombstoned nodes.
    pub(crate) fn deleted_count(&self) -> usize {
        self.deleted.load(Ordering::Relaxed)
    }

    /// Bytes of payloads held, as compact JSON: every node's, tombstoned
    /// ones included.
    pub(crate) fn payload_bytes(&self) -> usize {
        self.payload_bytes.load(Ordering::Relaxed)
    }

    /// A node's metadata (id, payload, code, upper lists).
    #[inline]
    pub(crate) fn node(&self, id: u32) -> Option<&Node> {
        self.slots.get(id)
    }

    /// A node's vector.
    #[inline]
    pub(crate) fn vector(&self, id: u32) -> Option<&[f32]> {
        self.arena.vector(id)
    }

    /// A node's list at `level`.
    #[inline]
    pub(crate) fn links(&self, id: u32, level: usize) -> Option<Links<'_>> {
        if level == 0 {
            self.arena.links(id)
        } else {
            let n = self.node(id)?;
            n.upper.get(level - 1).map(|l| Links::new(l))
        }
    }

    /// Whether a node is tombstoned.
    #[inline]
    pub(crate) fn is_deleted(&self, id: u32) -> bool {
        self.arena.is_deleted(id)
    }

    /// Hints the CPU to fetch what a walk's distance to `id` reads: the
    /// node's code (`codes`) or its level-0 record.
    #[inline]
    pub(crate) fn prefetch(&self, id: u32, codes: bool) {
        if codes {
            if let Some(n) = self.node(id) {
                n.prefetch_code();
            }
        } else {
            self.arena.prefetch(id);
        }
    }

    /// Prefetches a node's whole vector (exact scans).
    #[inline]
    pub(crate) fn prefetch_vector(&self, id: u32) {
        self.arena.prefetch_vector(id);
    }

    /// Distance between two nodes' vectors.
    #[inline]
    fn between(&self, a: u32, b: u32) -> Option<f32> {
        Some(self.metric.distance(self.vector(a)?, self.vector(b)?))
    }

    /// Entry point and top level.
    pub(crate) fn entry(&self) -> Option<(u32, usize)> {
        *self.entry.read()
    }

    /// Encodes a prepared vector with the trained quantizer (if any).
    pub(crate) fn encode(&self, v: &[f32]) -> Code {
        match self.quant.get() {
            Some(q) => q.encode(v),
            None => Code::None,
        }
    }

    fn random_level(&self) -> usize {
        // splitmix64 over a shared counter: reproducible for one insertion order.
        let mut z = self
            .level_seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() * self.ml) as usize).min(16)
    }

    /// Inserts a point and links it into the graph; returns its node id.
    /// Safe to call from many threads at once.
    pub(crate) fn insert(
        &self,
        ext: PointId,
        vector: Box<[f32]>,
        payload: Option<serde_json::Value>,
    ) -> u32 {
        let code = self.encode(&vector);
        let level = self.random_level();
        let id = self.next.fetch_add(1, Ordering::AcqRel);
        self.arena.init(id, &vector, false);
        let node = Node::new(ext, code, payload, level, self.m);
        self.payload_bytes
            .fetch_add(node.payload_len as usize, Ordering::Relaxed);
        self.slots.set(id, node);
        self.link(id);
        id
    }

    /// Appends an already-linked node (snapshot load); single-threaded.
    pub(crate) fn push_loaded(
        &self,
        node: Node,
        vector: &[f32],
        links0: &[u32],
        deleted: bool,
    ) -> u32 {
        let id = self.next.fetch_add(1, Ordering::AcqRel);
        if deleted {
            self.deleted.fetch_add(1, Ordering::Relaxed);
        }
        self.arena.init(id, vector, deleted);
        if let Some(l) = self.arena.links(id) {
            l.set(links0);
        }
        self.payload_bytes
            .fetch_add(node.payload_len as usize, Ordering::Relaxed);
        self.slots.set(id, node);
        id
    }

    /// Sets the entry point (snapshot load).
    pub(crate) fn set_entry(&self, e: Option<(u32, usize)>) {
        *self.entry.write() = e;
    }

    /// Tombstones a node; returns false if it was already deleted.
    pub(crate) fn tombstone(&self, id: u32) -> bool {
        let fresh = self.arena.tombstone(id);
        if let Some(n) = self.node(id) {
            n.deleted.store(true, Ordering::Release);
        }
        if fresh {
            self.deleted.fetch_add(1, Ordering::Relaxed);
        }
        fresh
    }

    fn link(&self, id: u32) {
        let (Some(node), Some(q)) = (self.node(id), self.vector(id)) else {
            return;
        };
        let level = node.level();
        let (mut cur, max_level) = {
            let current = *self.entry.read();
            match current {
                Some(e) => e,
                None => {
                    let mut w = self.entry.write();
                    match *w {
                        Some(e) => e,
                        None => {
                            *w = Some((id, level));
                            return;
                        }
                    }
                }
            }
        };
        let dist = |i: u32| self.vector(i).map(|v| self.metric.distance(q, v));
        let mut cur_d = dist(cur).unwrap_or(f32::INFINITY);
        for l in (level + 1..=max_level).rev() {
            (cur_d, cur) = self.greedy(&dist, (cur_d, cur), l);
        }
        let mut eps = vec![(cur_d, cur)];
        let accept_all = |_: u32| true;
        for l in (0..=level.min(max_level)).rev() {
            let mut cands =
                self.search_layer(&dist, &eps, self.ef_construction, l, &accept_all, false);
            cands.retain(|c| c.1 != id);
            let selected = self.select(&cands, self.m);
            let cap = if l == 0 { self.m0 } else { self.m };
            {
                let _guard = node.lock.lock();
                let Some(own) = self.links(id, l) else { break };
                if own.len() == 0 {
                    let ids: Vec<u32> = selected.iter().map(|s| s.1).collect();
                    own.set(&ids);
                } else {
                    // Others linked to us meanwhile: keep the best of both.
                    let mut all: Vec<(f32, u32)> = own
                        .to_vec()
                        .into_iter()
                        .filter(|x| !selected.iter().any(|s| s.1 == *x))
                        .filter_map(|x| dist(x).map(|d| (d, x)))
                        .chain(selected.iter().copied())
                        .collect();
                    all.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let keep: Vec<u32> = self.select(&all, cap).iter().map(|s| s.1).collect();
                    own.set(&keep);
                }
            }
            for &(_, nb) in &selected {
                self.add_link(nb, id, l, cap);
            }
            if !cands.is_empty() {
                eps = cands;
            }
        }
        if level > max_level {
            let mut w = self.entry.write();
            if w.is_none_or(|(_, top)| level > top) {
                *w = Some((id, level));
            }
        }
    }

    /// The neighbour-selection heuristic: keep a candidate only if it is
    /// closer to the base than to every neighbour already kept.
    /// `cands` must be sorted by distance to the base.
    fn select(&self, cands: &[(f32, u32)], m: usize) -> Vec<(f32, u32)> {
        if cands.len() <= m {
            return cands.to_vec();
        }
        let mut out: Vec<(f32, u32)> = Vec::with_capacity(m);
        for (j, &(d, c)) in cands.iter().enumerate() {
            if out.len() >= m {
                break;
            }
            // The kept vectors stay in cache; fetch the next candidate's meanwhile.
            if let Some(next) = cands.get(j + 1) {
                self.prefetch_vector(next.1);
            }
            let good = out.iter().all(|&(_, s)| {
                // Reject only when strictly closer to a kept neighbour (as
                // hnswlib does): with `>=` an exact duplicate of the base
                // (an upsert of a deleted point's vector) would veto every
                // other candidate and leave the node with one link.
                self.between(c, s).is_none_or(|ds| ds >= d)
            });
            if good {
                out.push((d, c));
            }
        }
        out
    }

    fn add_link(&self, target: u32, new: u32, level: usize, cap: usize) {
        let Some(tn) = self.node(target) else { return };
        let Some(list) = self.links(target, level) else {
            return;
        };
        let _guard = tn.lock.lock();
        let mut ids = Vec::with_capacity(list.cap() + 1);
        list.read_into(&mut ids);
        if ids.contains(&new) {
            return;
        }
        if ids.len() < cap && list.push(new) {
            return;
        }
        let mut all: Vec<(f32, u32)> = ids
            .iter()
            .copied()
            .chain(std::iter::once(new))
            .filter_map(|x| self.between(target, x).map(|d| (d, x)))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let keep: Vec<u32> = self.select(&all, cap).iter().map(|s| s.1).collect();
        list.set(&keep);
    }

    /// Bytes of links (list buffers) held by the graph.
    pub(crate) fn graph_bytes(&self) -> usize {
        let upper: usize = (0..self.len() as u32)
            .filter_map(|i| self.node(i))
            .map(|n| n.upper.iter().map(|l| l.len() * 4 + 16).sum::<usize>())
            .sum();
        upper + self.len() * self.arena.list_bytes()
    }
}
