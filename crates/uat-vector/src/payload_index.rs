//! Payload indexes on chosen keys, and their use to resolve a filter into the
//! exact set of matching node ids (a bitset) without touching payloads.
//!
//! Indexes are append-only: a tombstoned node stays in its postings (searches
//! skip tombstones anyway) until compaction rebuilds everything.

use crate::filter::{Condition, FieldTest, Filter, MatchValue, Range, lookup, parse_datetime};
use crate::types::PayloadIndexKind;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Range conditions of `must` are checked point by point instead of walked
/// once the other conditions left at most 1/`CHECK_SHARE` of the points.
const CHECK_SHARE: usize = 32;

/// A fixed-size set of node ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BitSet {
    words: Vec<u64>,
    len: usize,
}

impl BitSet {
    pub(crate) fn empty(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    pub(crate) fn full(len: usize) -> Self {
        let mut b = Self {
            words: vec![u64::MAX; len.div_ceil(64)],
            len,
        };
        if !len.is_multiple_of(64)
            && let Some(last) = b.words.last_mut()
        {
            *last = (1u64 << (len % 64)) - 1;
        }
        b
    }

    #[inline]
    pub(crate) fn insert(&mut self, i: u32) {
        let i = i as usize;
        if i < self.len {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    #[inline]
    pub(crate) fn remove(&mut self, i: u32) {
        let i = i as usize;
        if i < self.len {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    #[inline]
    pub(crate) fn contains(&self, i: u32) -> bool {
        let i = i as usize;
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    pub(crate) fn and(&mut self, o: &Self) {
        self.words
            .iter_mut()
            .zip(&o.words)
            .for_each(|(a, b)| *a &= b);
    }

    pub(crate) fn or(&mut self, o: &Self) {
        self.words
            .iter_mut()
            .zip(&o.words)
            .for_each(|(a, b)| *a |= b);
    }

    pub(crate) fn and_not(&mut self, o: &Self) {
        self.words
            .iter_mut()
            .zip(&o.words)
            .for_each(|(a, b)| *a &= !b);
    }

    pub(crate) fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some((wi * 64) as u32 + b)
            })
        })
    }
}

/// Maps an f64 to a u64 with the same order. `-0.0` maps as `0.0`: they
/// compare equal, so a range must neither split nor reverse them (a range
/// from `0` to `-0.0` had its bounds reversed, a panic in `BTreeSet::range`).
fn ord_bits(f: f64) -> u64 {
    let f = if f == 0.0 { 0.0 } else { f };
    let b = f.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

fn from_ord_bits(u: u64) -> f64 {
    f64::from_bits(if u >> 63 == 1 { u & !(1 << 63) } else { !u })
}

#[derive(Debug)]
enum FieldIndex {
    Keyword(HashMap<String, Vec<u32>>),
    Integer {
        eq: HashMap<i64, Vec<u32>>,
        range: BTreeSet<(u64, u32)>,
        /// Numbers that are not integers (only in `range`).
        fractional: usize,
    },
    Float(BTreeSet<(u64, u32)>),
    Datetime(BTreeSet<(u64, u32)>),
}

/// All payload indexes of a collection.
#[derive(Debug)]
pub(crate) struct PayloadIndex {
    fields: BTreeMap<String, FieldIndex>,
    /// Every node id below this has been [`add`](Self::add)ed. An upsert
    /// links its points into the graph before it indexes them, so a search
    /// meanwhile sees nodes at or above it that no posting list holds yet:
    /// [`resolve`](Self::resolve) alone would keep them through any
    /// `must_not` (it removes only what the postings hold), so they must be
    /// checked against the filter itself (`State::resolve_filter`).
    covered: usize,
}

impl PayloadIndex {
    pub(crate) fn new(spec: &BTreeMap<String, PayloadIndexKind>) -> Self {
        let fields = spec
            .iter()
            .map(|(k, kind)| {
                let idx = match kind {
                    PayloadIndexKind::Keyword => FieldIndex::Keyword(HashMap::new()),
                    PayloadIndexKind::Integer => FieldIndex::Integer {
                        eq: HashMap::new(),
                        range: BTreeSet::new(),
                        fractional: 0,
                    },
                    PayloadIndexKind::Float => FieldIndex::Float(BTreeSet::new()),
                    PayloadIndexKind::Datetime => FieldIndex::Datetime(BTreeSet::new()),
                };
                (k.clone(), idx)
            })
            .collect();
        Self { fields, covered: 0 }
    }

    /// Node ids below this are indexed; those at or above may not be.
    pub(crate) fn covered(&self) -> usize {
        self.covered
    }

    /// Marks every node id below `n` as indexed (ids skipped on purpose,
    /// such as tombstones when loading, have nothing to index).
    pub(crate) fn cover(&mut self, n: usize) {
        self.covered = self.covered.max(n);
    }

    /// Indexes node `id`'s payload. The writer adds a batch's ids (in any
    /// order) under one hold of the write lock, and every id below them was
    /// added before, so no reader sees an id below [`covered`](Self::covered)
    /// that is not indexed.
    pub(crate) fn add(&mut self, id: u32, payload: Option<&Value>) {
        self.cover(id as usize + 1);
        let Some(p) = payload else { return };
        for (key, idx) in &mut self.fields {
            let Some(v) = lookup(p, key) else { continue };
            let items: &[Value] = match v {
                Value::Array(a) => a,
                one => std::slice::from_ref(one),
            };
            for x in items {
                match idx {
                    FieldIndex::Keyword(m) => {
                        if let Value::String(s) = x {
                            m.entry(s.clone()).or_default().push(id);
                        }
                    }
                    FieldIndex::Integer {
                        eq,
                        range,
                        fractional,
                    } => {
                        if let Value::Number(n) = x {
                            match n.as_i64() {
                                Some(i) => eq.entry(i).or_default().push(id),
                                None => *fractional += 1,
                            }
                            if let Some(f) = n.as_f64() {
                                range.insert((ord_bits(f), id));
                            }
                        }
                    }
                    FieldIndex::Float(t) => {
                        if let Some(f) = x.as_f64() {
                            t.insert((ord_bits(f), id));
                        }
                    }
                    FieldIndex::Datetime(t) => {
                        if let Some(f) = x.as_str().and_then(parse_datetime) {
                            t.insert((ord_bits(f), id));
                        }
                    }
                }
            }
        }
    }

    /// The exact set of ids (< `n`) matching `filter`, or `None` when some
    /// condition is on a key without a suitable index.
    pub(crate) fn resolve(&self, filter: &Filter, n: usize) -> Option<BitSet> {
        self.resolve_checked(filter, n, &|_, _| None)
    }

    /// [`resolve`](Self::resolve), with a cheaper way for the range
    /// conditions of `must`: when the posting-list conditions before them
    /// already narrowed the set to a few candidates, each candidate is
    /// checked with `check(id, condition)` (its payload) instead of walking
    /// the range, which costs as much as the range holds (a "not expired yet"
    /// range matches nearly every point). `check` answers `None` when it
    /// cannot tell; the range is then walked as usual.
    pub(crate) fn resolve_checked(
        &self,
        filter: &Filter,
        n: usize,
        check: &dyn Fn(u32, &Condition) -> Option<bool>,
    ) -> Option<BitSet> {
        let is_range = |c: &Condition| {
            matches!(
                c,
                Condition::Field(fc) if matches!(fc.test, FieldTest::Range(_))
            )
        };
        let mut acc = BitSet::full(n);
        for c in filter.must.iter().filter(|c| !is_range(c)) {
            acc.and(&self.resolve_cond(c, n)?);
        }
        let mut candidates: Option<Vec<u32>> = None;
        for c in filter.must.iter().filter(|c| is_range(c)) {
            if candidates.is_none() && acc.count() <= n / CHECK_SHARE {
                candidates = Some(acc.iter().collect());
            }
            // All or nothing: a candidate `check` cannot tell about leaves
            // the range to be walked.
            let checked = candidates.as_ref().and_then(|ids| {
                let (mut keep, mut out) = (Vec::with_capacity(ids.len()), Vec::new());
                for &id in ids {
                    if check(id, c)? {
                        keep.push(id);
                    } else {
                        out.push(id);
                    }
                }
                Some((keep, out))
            });
            match checked {
                Some((keep, out)) => {
                    out.into_iter().for_each(|id| acc.remove(id));
                    candidates = Some(keep);
                }
                None => {
                    acc.and(&self.resolve_cond(c, n)?);
                    candidates = None;
                }
            }
        }
        if !filter.should.is_empty() {
            let mut any = BitSet::empty(n);
            for c in &filter.should {
                any.or(&self.resolve_cond(c, n)?);
            }
            acc.and(&any);
        }
        for c in &filter.must_not {
            acc.and_not(&self.resolve_cond(c, n)?);
        }
        Some(acc)
    }

    fn resolve_cond(&self, c: &Condition, n: usize) -> Option<BitSet> {
        let fc = match c {
            Condition::Nested(f) => return self.resolve(f, n),
            Condition::Field(fc) => fc,
        };
        let idx = self.fields.get(&fc.key)?;
        let mut out = BitSet::empty(n);
        match &fc.test {
            FieldTest::Match(m) => self.postings(idx, m, &mut out)?,
            FieldTest::Any(ms) => {
                for m in ms {
                    self.postings(idx, m, &mut out)?;
                }
            }
            FieldTest::Range(r) => {
                if let FieldIndex::Integer {
                    eq,
                    range,
                    fractional: 0,
                } = idx
                    && !r.datetime
                    && eq.len() * 8 < range.len()
                {
                    // Few distinct integers: union their posting lists
                    // (sequential reads) instead of walking the tree.
                    for (k, list) in eq {
                        if r.contains(*k as f64) {
                            list.iter().for_each(|&id| out.insert(id));
                        }
                    }
                    return Some(out);
                }
                let tree = match (idx, r.datetime) {
                    (FieldIndex::Integer { range, .. }, false)
                    | (FieldIndex::Float(range), false) => range,
                    (FieldIndex::Datetime(t), true) => t,
                    _ => return None,
                };
                range_ids(tree, r, &mut out);
            }
        }
        Some(out)
    }

    fn postings(&self, idx: &FieldIndex, m: &MatchValue, out: &mut BitSet) -> Option<()> {
        let list = match (idx, m) {
            (FieldIndex::Keyword(map), MatchValue::Keyword(s)) => map.get(s),
            (FieldIndex::Integer { eq, .. }, MatchValue::Integer(i)) => eq.get(i),
            _ => return None,
        };
        for &id in list.map(Vec::as_slice).unwrap_or(&[]) {
            out.insert(id);
        }
        Some(())
    }

    /// Approximate bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.fields
            .values()
            .map(|f| match f {
                FieldIndex::Keyword(m) => {
                    m.iter().map(|(k, v)| k.len() + v.capacity() * 4 + 48).sum()
                }
                FieldIndex::Integer { eq, range, .. } => {
                    eq.values().map(|v| v.capacity() * 4 + 40).sum::<usize>() + range.len() * 16
                }
                FieldIndex::Float(t) | FieldIndex::Datetime(t) => t.len() * 16,
            })
            .sum()
    }
}

fn range_ids(tree: &BTreeSet<(u64, u32)>, r: &Range, out: &mut BitSet) {
    let (lo, hi) = r.interval();
    if lo > hi || lo.is_nan() || hi.is_nan() {
        return;
    }
    for &(bits, id) in tree.range((ord_bits(lo), 0)..=(ord_bits(hi), u32::MAX)) {
        if r.contains(from_ord_bits(bits)) {
            out.insert(id);
        }
    }
}

#[cfg(test)]
mod tests;
