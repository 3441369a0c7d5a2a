//! Graph walks: greedy descent, the beam search of one layer (with an
//! acceptance predicate checked *during* the walk for filters and tombstones),
//! k-NN with optional quantized walk + f32 rescoring, and exact scans.

use super::Hnsw;
use crate::quant::Code;
use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering::Relaxed;

/// An f32 with a total order, for heaps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OrdF32(pub(crate) f32);
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// Per-thread visited marks with a generation counter (no clearing per search).
struct Visited {
    marks: Vec<u32>,
    generation: u32,
}

impl Visited {
    fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n + n / 4 + 1024, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.generation = 1;
        }
    }

    /// Marks `i`; returns true if it was already marked.
    #[inline]
    fn check_and_mark(&mut self, i: u32) -> bool {
        let i = i as usize;
        if i >= self.marks.len() {
            self.marks.resize(i + i / 4 + 1024, 0);
        }
        let seen = self.marks[i] == self.generation;
        self.marks[i] = self.generation;
        seen
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const { RefCell::new(Visited { marks: Vec::new(), generation: 0 }) };
}

/// A prepared query: the (normalized) vector and its code when the graph is quantized.
pub(crate) struct Query<'a> {
    pub(crate) vector: &'a [f32],
    pub(crate) code: Code,
}

#[cfg(test)]
impl<'a> Query<'a> {
    /// A query scored on the f32 vectors only (exact scans ignore the codes).
    pub(crate) fn exact(vector: &'a [f32]) -> Self {
        Query {
            vector,
            code: Code::None,
        }
    }
}

impl Hnsw {
    /// Prepares a query (the vector must already be normalized for cosine).
    pub(crate) fn query<'a>(&self, vector: &'a [f32]) -> Query<'a> {
        let code = match self.quant.get() {
            Some(q) => q.encode_query(vector),
            None => Code::None,
        };
        Query { vector, code }
    }

    /// Greedy descent on one layer.
    pub(crate) fn greedy<F: Fn(u32) -> Option<f32>>(
        &self,
        dist: &F,
        start: (f32, u32),
        level: usize,
    ) -> (f32, u32) {
        let (mut cur_d, mut cur) = start;
        let mut buf: Vec<u32> = Vec::with_capacity(self.m);
        loop {
            let mut changed = false;
            buf.clear();
            if let Some(l) = self.links(cur, level) {
                l.read_into(&mut buf);
            }
            for &nb in &buf {
                if let Some(d) = dist(nb)
                    && d < cur_d
                {
                    cur_d = d;
                    cur = nb;
                    changed = true;
                }
            }
            if !changed {
                return (cur_d, cur);
            }
        }
    }

    /// Beam search of one layer. Only nodes passing `accept` enter the result
    /// list, but every node is walked through. Returns up to `ef` accepted
    /// nodes, closest first.
    pub(crate) fn search_layer<F, A>(
        &self,
        dist: &F,
        eps: &[(f32, u32)],
        ef: usize,
        level: usize,
        accept: &A,
        walk_codes: bool,
    ) -> Vec<(f32, u32)>
    where
        F: Fn(u32) -> Option<f32>,
        A: Fn(u32) -> bool,
    {
        VISITED.with(|cell| {
            let mut vis = cell.borrow_mut();
            vis.reset(self.len());
            let mut cand: BinaryHeap<Reverse<(OrdF32, u32)>> = BinaryHeap::with_capacity(ef * 2);
            let mut res: BinaryHeap<(OrdF32, u32)> = BinaryHeap::with_capacity(ef + 1);
            for &(d, id) in eps {
                if vis.check_and_mark(id) {
                    continue;
                }
                cand.push(Reverse((OrdF32(d), id)));
                if accept(id) {
                    res.push((OrdF32(d), id));
                    if res.len() > ef {
                        res.pop();
                    }
                }
            }
            let mut buf: Vec<u32> = Vec::with_capacity(self.m0);
            let mut fresh: Vec<u32> = Vec::with_capacity(self.m0);
            let walk_codes = walk_codes && self.quant.get().is_some();
            while let Some(Reverse((OrdF32(d), c))) = cand.pop() {
                let lower = res.peek().map_or(f32::INFINITY, |t| t.0.0);
                if d > lower && res.len() >= ef {
                    break;
                }
                buf.clear();
                if let Some(l) = self.links(c, level) {
                    l.read_into(&mut buf);
                }
                // First pass: drop visited ids and prefetch what the distances
                // will read, so the cache misses overlap; second pass: compute.
                fresh.clear();
                for &nb in &buf {
                    if vis.check_and_mark(nb) {
                        continue;
                    }
                    self.prefetch(nb, walk_codes);
                    fresh.push(nb);
                }
                for &nb in &fresh {
                    let Some(dn) = dist(nb) else { continue };
                    let lower = res.peek().map_or(f32::INFINITY, |t| t.0.0);
                    if res.len() < ef || dn < lower {
                        cand.push(Reverse((OrdF32(dn), nb)));
                        if accept(nb) {
                            res.push((OrdF32(dn), nb));
                            if res.len() > ef {
                                res.pop();
                            }
                        }
                    }
                }
            }
            let mut out: Vec<(f32, u32)> = res.into_iter().map(|(d, i)| (d.0, i)).collect();
            out.sort_by(|a, b| a.0.total_cmp(&b.0));
            out
        })
    }

    /// k nearest accepted nodes by the graph walk; distances are exact (f32)
    /// even when the walk used quantized codes (those results are rescored).
    pub(crate) fn knn<A>(&self, q: &Query<'_>, k: usize, ef: usize, accept: &A) -> Vec<(f32, u32)>
    where
        A: Fn(u32) -> bool,
    {
        let Some((ep, top)) = self.entry() else {
            return Vec::new();
        };
        let ef = ef.max(k);
        let walk_quant = self.quant.get().filter(|_| self.walk_quantized);
        let mut res = match (walk_quant, &q.code) {
            (Some(quant), code) if !matches!(code, Code::None) => {
                let dist = |i: u32| {
                    self.node(i)
                        .map(|n| quant.distance(self.metric, code, &n.code))
                };
                // One bit per dimension is coarse: walk wider, then rescore.
                let walk_ef = if matches!(code, Code::BinaryQuery(_)) {
                    ef * 2
                } else {
                    ef
                };
                let cands = self.walk(&dist, ep, top, walk_ef, accept, true);
                cands
                    .into_iter()
                    .filter_map(|(_, i)| {
                        self.vector(i)
                            .map(|v| (self.metric.distance(q.vector, v), i))
                    })
                    .collect()
            }
            _ => {
                let dist = |i: u32| self.vector(i).map(|v| self.metric.distance(q.vector, v));
                self.walk(&dist, ep, top, ef, accept, false)
            }
        };
        res.sort_by(|a, b| a.0.total_cmp(&b.0));
        res.truncate(k);
        res
    }

    fn walk<F, A>(
        &self,
        dist: &F,
        ep: u32,
        top: usize,
        ef: usize,
        accept: &A,
        walk_codes: bool,
    ) -> Vec<(f32, u32)>
    where
        F: Fn(u32) -> Option<f32>,
        A: Fn(u32) -> bool,
    {
        let Some(d) = dist(ep) else {
            return Vec::new();
        };
        let mut cur = (d, ep);
        for l in (1..=top).rev() {
            cur = self.greedy(dist, cur, l);
        }
        self.search_layer(dist, &[cur], ef, 0, accept, walk_codes)
    }

    /// Exact k nearest among `ids` (skipping tombstones), closest first.
    ///
    /// When the points carry codes (a quantized collection, or an unquantized
    /// one with payload indexes, see `Collection`), the scan reads the compact
    /// codes first (a quarter of the bytes for SQ8, a thirty-second for
    /// binary), keeps the best `ef` (binary: `4 * ef`) and rescores just those
    /// against the f32 vectors: a filter that passes thousands of points
    /// costs one pass over their codes instead of over every full vector.
    /// Points without a code (inserted before the codes were trained) are
    /// always rescored. Fewer than twice as many points as it keeps are
    /// scanned on their vectors alone.
    pub(crate) fn scan(
        &self,
        q: &Query<'_>,
        k: usize,
        ef: usize,
        ids: impl Iterator<Item = u32>,
    ) -> Vec<(f32, u32)> {
        // Tombstones are skipped as the scan meets them (the code scan reads
        // the node's copy, the f32 scan the record's): a pass of its own to
        // drop them first would cost a cache miss per id.
        let ids: Vec<u32> = ids.collect();
        if let Some(quant) = self.quant.get()
            && !matches!(q.code, Code::None)
        {
            let keep = if matches!(q.code, Code::BinaryQuery(_)) {
                ef.max(k) * 4
            } else {
                ef.max(k)
            };
            // The code pass costs a code per point plus `keep` vectors: below
            // twice `keep` points, reading their vectors alone is less work.
            if ids.len() > 2 * keep {
                let mut uncoded = Vec::new();
                let coarse = top_k(
                    &ids,
                    keep,
                    |&i| {
                        if let Some(n) = self.node(i) {
                            n.prefetch_code();
                        }
                    },
                    |&i| {
                        let n = self.node(i).filter(|n| !n.deleted.load(Relaxed))?;
                        if matches!(n.code, Code::None) {
                            uncoded.push(i);
                            return None;
                        }
                        Some(quant.distance(self.metric, &q.code, &n.code))
                    },
                );
                let mut out: Vec<(f32, u32)> = coarse
                    .into_iter()
                    .map(|(_, j)| ids[j as usize])
                    .chain(uncoded)
                    .filter_map(|i| {
                        self.vector(i)
                            .map(|v| (self.metric.distance(q.vector, v), i))
                    })
                    .collect();
                out.sort_by(|a, b| a.0.total_cmp(&b.0));
                out.truncate(k);
                return out;
            }
        }
        top_k(
            &ids,
            k,
            |&i| self.prefetch_vector(i),
            |&i| {
                self.arena
                    .live_vector(i)
                    .map(|v| self.metric.distance(q.vector, v))
            },
        )
        .into_iter()
        .map(|(d, j)| (d, ids[j as usize]))
        .collect()
    }
}

/// The `k` closest of `items` by `dist`, closest first, as (distance, index
/// into `items`); prefetches a few items ahead so the memory latency
/// overlaps the kernel.
fn top_k<T, P: Fn(&T), F: FnMut(&T) -> Option<f32>>(
    items: &[T],
    k: usize,
    prefetch: P,
    mut dist: F,
) -> Vec<(f32, u32)> {
    const AHEAD: usize = 6;
    let mut heap: BinaryHeap<(OrdF32, u32)> = BinaryHeap::with_capacity(k + 1);
    for (j, item) in items.iter().enumerate() {
        if let Some(next) = items.get(j + AHEAD) {
            prefetch(next);
        }
        let Some(d) = dist(item) else { continue };
        let j = j as u32;
        if heap.len() < k {
            heap.push((OrdF32(d), j));
        } else if heap.peek().is_some_and(|t| d < t.0.0) {
            heap.pop();
            heap.push((OrdF32(d), j));
        }
    }
    let mut out: Vec<(f32, u32)> = heap.into_iter().map(|(d, i)| (d.0, i)).collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}
