//! Search: validation, the planner's choice for filtered queries, and
//! turning node ids into results.

use super::{Collection, State};
use crate::distance::{Metric, normalize};
use crate::error::{Result, VectorError};
use crate::filter::Filter;
use crate::metrics;
use crate::planner::{Plan, choose_plan};
use crate::types::{ScoredPoint, SearchRequest, check_top_k, check_vector};
use rayon::prelude::*;
use std::collections::HashSet;
use std::time::Instant;

/// Largest accepted `ef`.
const MAX_EF: usize = 10_000;
/// Points sampled to estimate the selectivity of a filter no index can resolve.
const SAMPLE: usize = 512;

impl Collection {
    /// Searches the collection. Results are best first.
    pub fn search(&self, req: &SearchRequest) -> Result<Vec<ScoredPoint>> {
        self.search_explain(req).map(|r| r.0)
    }

    /// Runs several searches (in parallel) and returns their results in order.
    pub fn search_batch(&self, reqs: &[SearchRequest]) -> Result<Vec<Vec<ScoredPoint>>> {
        self.search_batch_until(reqs, &std::sync::atomic::AtomicBool::new(false))
    }

    /// [`Collection::search_batch`] that stops starting searches once
    /// `cancelled` is set ([`VectorError::Cancelled`]): a batch of up to
    /// 1,000 searches whose client went away stops using every core.
    pub fn search_batch_until(
        &self,
        reqs: &[SearchRequest],
        cancelled: &std::sync::atomic::AtomicBool,
    ) -> Result<Vec<Vec<ScoredPoint>>> {
        for r in reqs {
            self.validate(r)?;
        }
        reqs.par_iter()
            .map(|r| {
                if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(VectorError::Cancelled);
                }
                self.search(r)
            })
            .collect()
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
        let out = self.results(&st, raw, req.with_payload, req.with_vector);
        metrics::observe_search(started.elapsed().as_secs_f64());
        Ok((out, plan))
    }

    fn results(
        &self,
        st: &State,
        raw: Vec<(f32, u32)>,
        payload: bool,
        vector: bool,
    ) -> Vec<ScoredPoint> {
        let mut seen = HashSet::with_capacity(raw.len());
        raw.into_iter()
            .filter_map(|(d, i)| st.hnsw.node(i).map(|n| (d, i, n)))
            .filter(|(_, _, n)| seen.insert(n.ext.clone()))
            .map(|(d, i, n)| ScoredPoint {
                id: n.ext.clone(),
                score: self.config.metric.score(d),
                payload: if payload { n.payload.clone() } else { None },
                vector: if vector {
                    st.hnsw.vector(i).map(<[f32]>::to_vec)
                } else {
                    None
                },
            })
            .collect()
    }
}

fn filtered(st: &State, f: &Filter, q: &[f32], k: usize, ef: usize) -> (Vec<(f32, u32)>, Plan) {
    let h = &st.hnsw;
    let len = h.len();
    let live = st.ids.read().len();
    let bits = st.pindex.read().resolve_checked(f, len, &|i, c| {
        h.node(i).map(|n| c.matches(n.payload.as_ref()))
    });
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
