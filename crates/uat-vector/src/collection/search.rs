//! Search: validation, the planner's choice for filtered queries, and
//! turning node ids into results.

use super::{Collection, State};
use crate::distance::{Metric, normalize};
use crate::error::{Result, VectorError};
use crate::filter::Filter;
use crate::metrics;
use crate::planner::{Plan, choose_plan};
use crate::types::{
    MAX_SEARCH_HITS, MAX_SEARCH_PAYLOAD_BYTES, MAX_SEARCH_VECTOR_FLOATS, ScoredPoint,
    SearchRequest, check_top_k, check_vector,
};
use rayon::prelude::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// Largest accepted `ef`.
const MAX_EF: usize = 10_000;
/// Points sampled to estimate the selectivity of a filter no index can resolve.
const SAMPLE: usize = 512;

impl Collection {
    /// Searches the collection. Results are best first.
    ///
    /// What one search may return is bounded: `top_k × dimension` vector
    /// components with `with_vector` ([`MAX_SEARCH_VECTOR_FLOATS`]) and
    /// [`MAX_SEARCH_PAYLOAD_BYTES`] of payloads; past either,
    /// [`VectorError::ResponseTooLarge`].
    pub fn search(&self, req: &SearchRequest) -> Result<Vec<ScoredPoint>> {
        self.search_explain(req).map(|r| r.0)
    }

    /// Runs several searches (in parallel) and returns their results in
    /// order. The limits of [`Collection::search`] hold for the batch as a
    /// whole, as does [`MAX_SEARCH_HITS`] on the sum of its `top_k`.
    pub fn search_batch(&self, reqs: &[SearchRequest]) -> Result<Vec<Vec<ScoredPoint>>> {
        self.search_batch_until(reqs, &AtomicBool::new(false))
    }

    /// [`Collection::search_batch`] that stops starting searches once
    /// `cancelled` is set ([`VectorError::Cancelled`]): a batch of up to
    /// 1,000 searches whose client went away stops using every core.
    pub fn search_batch_until(
        &self,
        reqs: &[SearchRequest],
        cancelled: &AtomicBool,
    ) -> Result<Vec<Vec<ScoredPoint>>> {
        for r in reqs {
            self.validate(r)?;
        }
        self.check_response_size(reqs)?;
        // Payload bytes gathered so far, by every search of the batch.
        let payload_bytes = AtomicUsize::new(0);
        reqs.par_iter()
            .map(|r| {
                if cancelled.load(Ordering::Relaxed) {
                    return Err(VectorError::Cancelled);
                }
                self.run(r, &payload_bytes).map(|r| r.0)
            })
            .collect()
    }

    /// Refuses searches whose results could pass [`MAX_SEARCH_HITS`] or
    /// [`MAX_SEARCH_VECTOR_FLOATS`], counting what they ask for (`top_k`),
    /// so the answer does not depend on what the collection holds.
    fn check_response_size(&self, reqs: &[SearchRequest]) -> Result<()> {
        let hits = reqs.iter().fold(0usize, |n, r| n.saturating_add(r.top_k));
        if hits > MAX_SEARCH_HITS {
            return Err(VectorError::ResponseTooLarge(format!(
                "the searches ask for {hits} results (the sum of top_k); at most {MAX_SEARCH_HITS} per request"
            )));
        }
        let dim = self.config.dimension;
        let floats = reqs
            .iter()
            .filter(|r| r.with_vector)
            .fold(0usize, |n, r| n.saturating_add(r.top_k.saturating_mul(dim)));
        if floats > MAX_SEARCH_VECTOR_FLOATS {
            return Err(VectorError::ResponseTooLarge(format!(
                "with_vector asks for {floats} vector components (top_k x dimension {dim}); at most {MAX_SEARCH_VECTOR_FLOATS} per request: ask for fewer results or leave with_vector off"
            )));
        }
        Ok(())
    }

    fn validate(&self, req: &SearchRequest) -> Result<()> {
        check_top_k(req.top_k)?;
        check_vector(&req.vector, self.config.dimension)?;
        if let Some(ef) = req.ef
            && (ef == 0 || ef > MAX_EF)
        {
            return Err(VectorError::BadRequest(format!(
                "ef must be between 1 and {MAX_EF}, got {ef}"
            )));
        }
        Ok(())
    }

    /// Like [`Collection::search`], also telling which plan a filtered search
    /// used (`None` without a filter).
    pub fn search_explain(&self, req: &SearchRequest) -> Result<(Vec<ScoredPoint>, Option<Plan>)> {
        self.validate(req)?;
        self.check_response_size(std::slice::from_ref(req))?;
        self.run(req, &AtomicUsize::new(0))
    }

    /// One checked search; `payload_bytes` counts the payload bytes its
    /// request gathered so far (shared by the searches of a batch).
    fn run(
        &self,
        req: &SearchRequest,
        payload_bytes: &AtomicUsize,
    ) -> Result<(Vec<ScoredPoint>, Option<Plan>)> {
        let started = Instant::now();
        let mut q = req.vector.clone();
        if self.config.metric == Metric::Cosine {
            normalize(&mut q);
        }
        let k = req.top_k;
        let ef = req.ef.unwrap_or(self.config.hnsw.ef_search).max(k);
        let st = self.state.read();
        let (raw, plan) = match req.filter.as_ref().filter(|f| !f.is_empty()) {
            None => {
                let h = &st.hnsw;
                let live = |i: u32| !h.is_deleted(i);
                (st.hnsw.knn(&st.hnsw.query(&q), k, ef, &live), None)
            }
            Some(f) => {
                let (r, p) = filtered(&st, f, &q, k, ef);
                (r, Some(p))
            }
        };
        let out = self.results(&st, raw, req, payload_bytes)?;
        metrics::observe_search(started.elapsed().as_secs_f64());
        Ok((out, plan))
    }

    /// The hits, with their payloads and vectors when asked for; fails once
    /// the request's payloads pass [`MAX_SEARCH_PAYLOAD_BYTES`] (counted
    /// before each is copied, from the size kept with the node).
    fn results(
        &self,
        st: &State,
        raw: Vec<(f32, u32)>,
        req: &SearchRequest,
        payload_bytes: &AtomicUsize,
    ) -> Result<Vec<ScoredPoint>> {
        let mut seen = HashSet::with_capacity(raw.len());
        let mut out = Vec::with_capacity(raw.len());
        for (d, i) in raw {
            let Some(n) = st.hnsw.node(i) else { continue };
            if !seen.insert(n.ext.clone()) {
                continue;
            }
            let payload = match &n.payload {
                Some(p) if req.with_payload => {
                    let len = n.payload_len as usize;
                    let total = payload_bytes.fetch_add(len, Ordering::Relaxed) + len;
                    if total > MAX_SEARCH_PAYLOAD_BYTES {
                        return Err(VectorError::ResponseTooLarge(format!(
                            "the results' payloads come to more than {MAX_SEARCH_PAYLOAD_BYTES} bytes, the most per request: ask for fewer results or set with_payload to false"
                        )));
                    }
                    Some(p.clone())
                }
                _ => None,
            };
            out.push(ScoredPoint {
                id: n.ext.clone(),
                score: self.config.metric.score(d),
                payload,
                vector: if req.with_vector {
                    st.hnsw.vector(i).map(<[f32]>::to_vec)
                } else {
                    None
                },
            });
        }
        Ok(out)
    }
}

fn filtered(st: &State, f: &Filter, q: &[f32], k: usize, ef: usize) -> (Vec<(f32, u32)>, Plan) {
    let h = &st.hnsw;
    let len = h.len();
    let live = st.ids.read().len();
    let bits = st.resolve_filter(f, len);
    let estimate = match &bits {
        // Postings include tombstones: scale by the live share.
        Some(b) => (b.count() as f64 * live as f64 / len.max(1) as f64).ceil() as usize,
        None => {
            let step = (len / SAMPLE).max(1);
            let (mut seen, mut hit) = (0usize, 0usize);
            for i in (0..len as u32).step_by(step) {
                if let Some(n) = h.node(i)
                    && !h.is_deleted(i)
                {
                    seen += 1;
                    hit += usize::from(f.matches(n.payload.as_ref()));
                }
            }
            if seen == 0 {
                0
            } else {
                ((hit as f64 / seen as f64) * live as f64).ceil() as usize
            }
        }
    };
    let query = h.query(q);
    let exact = |bits: &Option<crate::payload_index::BitSet>| match bits {
        Some(b) => h.scan(&query, k, ef, b.iter()),
        None => h.scan(
            &query,
            k,
            ef,
            (0..len as u32).filter(|&i| h.node(i).is_some_and(|n| f.matches(n.payload.as_ref()))),
        ),
    };
    match choose_plan(estimate, live, ef, h.m0) {
        Plan::Exact => (exact(&bits), Plan::Exact),
        Plan::Walk => {
            let res = match &bits {
                Some(b) => h.knn(&query, k, ef, &|i: u32| !h.is_deleted(i) && b.contains(i)),
                None => h.knn(&query, k, ef, &|i: u32| {
                    !h.is_deleted(i) && h.node(i).is_some_and(|n| f.matches(n.payload.as_ref()))
                }),
            };
            if res.len() < k && estimate >= k {
                // The walk ran out of matching neighbours: fall back to exact.
                (exact(&bits), Plan::Exact)
            } else {
                (res, Plan::Walk)
            }
        }
    }
}
