//! Level-0 records in one flat, append-only arena (hnswlib's layout): per
//! node a fixed-size record holding a state word, the level-0 neighbour list
//! and the f32 vector, side by side. A graph walk goes from a neighbour's id
//! to its vector by arithmetic alone (no pointer to chase, so the prefetch of
//! every neighbour is issued at once), and a node's links sit in the cache
//! lines just before the vector its distance already brought in.
//!
//! Record layout, in 32-bit words: `[state][len][m0 ids][pad][dim × f32]`,
//! the vector starting on a 16-byte boundary and the record padded to whole
//! cache lines. Buckets double in size like the node slots (`slots.rs`) and
//! never move; they are allocated zeroed, so the pages of records not yet
//! written cost no memory.
//!
//! Publication: the inserting thread stores the vector (relaxed atomic
//! stores), then the state word with `READY` (release). A reader loads the
//! state (acquire) before it reads the vector as plain `f32`s, so every
//! vector it reads was fully written before, and a vector is never written
//! again once ready (an upsert makes a new node). The list is read and
//! written only through atomics (see `links.rs`).

use super::links::Links;
use super::slots::locate;
use std::alloc::{Layout, alloc_zeroed, handle_alloc_error};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The state word's bits.
const READY: u32 = 1;
const DELETED: u32 = 2;
/// Words per cache line.
const LINE_WORDS: usize = 16;

/// One cache line of words; buckets are runs of these, so records start on
/// a line boundary.
#[repr(C, align(64))]
struct Line([AtomicU32; LINE_WORDS]);

pub(crate) struct Arena {
    dim: usize,
    m0: usize,
    /// Word offset of the vector in a record.
    vec_off: usize,
    /// Words per record (whole lines).
    stride: usize,
    buckets: Box<[OnceLock<Box<[Line]>>]>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("dim", &self.dim)
            .field("m0", &self.m0)
            .field("stride", &self.stride)
            .finish_non_exhaustive()
    }
}

/// A zeroed run of `n` lines (a zero word is a valid `AtomicU32`).
fn zeroed_lines(n: usize) -> Box<[Line]> {
    let n = n.max(1);
    let Ok(layout) = Layout::array::<Line>(n) else {
        handle_alloc_error(Layout::new::<Line>())
    };
    // SAFETY: the layout has a non-zero size; all-zero bytes are a valid
    // `[AtomicU32; 16]`; the box is made from the allocation with the same
    // layout `Box<[Line]>` frees it with.
    unsafe {
        let p = alloc_zeroed(layout).cast::<Line>();
        if p.is_null() {
            handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n))
    }
}

impl Arena {
    pub(crate) fn new(dim: usize, m0: usize) -> Self {
        let vec_off = (2 + m0).next_multiple_of(4);
        let stride = (vec_off + dim).next_multiple_of(LINE_WORDS);
        Self {
            dim,
            m0,
            vec_off,
            stride,
            buckets: (0..super::slots::BUCKETS)
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The record of node `i`, if its bucket exists.
    #[inline]
    fn record(&self, i: u32) -> Option<&[AtomicU32]> {
        let (b, off) = locate(i);
        let lines = self.buckets.get(b)?.get()?;
        // SAFETY: `Line` is `repr(C)` with no padding (16 words, 64 bytes), so
        // a run of lines is a run of words; the slice borrows the bucket.
        let words = unsafe {
            std::slice::from_raw_parts(lines.as_ptr().cast::<AtomicU32>(), lines.len() * LINE_WORDS)
        };
        words.get(off * self.stride..(off + 1) * self.stride)
    }

    /// Writes node `i`'s vector and an empty list, then publishes it.
    /// Called once per id, before the id is linked anywhere.
    pub(crate) fn init(&self, i: u32, vector: &[f32], deleted: bool) {
        let (b, _) = locate(i);
        if let Some(bucket) = self.buckets.get(b) {
            bucket.get_or_init(|| {
                zeroed_lines(((1usize << (b as u32 + 10)) * self.stride) / LINE_WORDS)
            });
        }
        let Some(rec) = self.record(i) else { return };
        for (w, x) in rec[self.vec_off..self.vec_off + self.dim]
            .iter()
            .zip(vector)
        {
            w.store(x.to_bits(), Ordering::Relaxed);
        }
        rec[1].store(0, Ordering::Relaxed);
        let state = READY | if deleted { DELETED } else { 0 };
        rec[0].store(state, Ordering::Release);
    }

    /// Node `i`'s vector, once published.
    #[inline]
    pub(crate) fn vector(&self, i: u32) -> Option<&[f32]> {
        let rec = self.record(i)?;
        if rec[0].load(Ordering::Acquire) & READY == 0 {
            return None;
        }
        let v = &rec[self.vec_off..self.vec_off + self.dim];
        // SAFETY: the acquire load above saw `READY`, stored (release) after
        // every word of the vector, which no one writes again; `f32` and
        // `AtomicU32` have the same size and alignment.
        Some(unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), self.dim) })
    }

    /// Node `i`'s vector, when published and not deleted.
    #[inline]
    pub(crate) fn live_vector(&self, i: u32) -> Option<&[f32]> {
        let rec = self.record(i)?;
        if rec[0].load(Ordering::Acquire) & (READY | DELETED) != READY {
            return None;
        }
        let v = &rec[self.vec_off..self.vec_off + self.dim];
        // SAFETY: as in `vector`.
        Some(unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), self.dim) })
    }

    /// Node `i`'s level-0 list.
    #[inline]
    pub(crate) fn links(&self, i: u32) -> Option<Links<'_>> {
        self.record(i).map(|r| Links::new(&r[1..2 + self.m0]))
    }

    #[inline]
    pub(crate) fn is_deleted(&self, i: u32) -> bool {
        self.record(i)
            .is_some_and(|r| r[0].load(Ordering::Acquire) & DELETED != 0)
    }

    /// Marks node `i` deleted; false if it already was (or does not exist).
    pub(crate) fn tombstone(&self, i: u32) -> bool {
        self.record(i)
            .filter(|r| r[0].load(Ordering::Acquire) & READY != 0)
            .is_some_and(|r| r[0].fetch_or(DELETED, Ordering::AcqRel) & DELETED == 0)
    }

    /// Hints the CPU to fetch node `i`'s list and the head of its vector.
    #[inline]
    pub(crate) fn prefetch(&self, i: u32) {
        if let Some(r) = self.record(i) {
            // The list and the head of the vector: the hardware prefetcher
            // streams the rest once the distance starts reading it (the
            // whole record measured no faster).
            super::prefetch(
                r.as_ptr().cast::<u8>(),
                (self.vec_off * 4 + 512).min(self.stride * 4),
            );
        }
    }

    /// Prefetches node `i`'s state word and whole vector (exact scans).
    #[inline]
    pub(crate) fn prefetch_vector(&self, i: u32) {
        if let Some(r) = self.record(i) {
            super::prefetch(r.as_ptr().cast::<u8>(), 4);
            let v = r[self.vec_off..].as_ptr().cast::<u8>();
            super::prefetch(v, self.dim * 4);
        }
    }

    /// Bytes of one record's list part (the rest is the vector).
    pub(crate) fn list_bytes(&self) -> usize {
        self.vec_off * 4
    }
}

#[cfg(test)]
mod tests {
    use super::Arena;

    #[test]
    fn records_publish_vectors_lists_and_tombstones() {
        let a = Arena::new(5, 8);
        assert!(a.vector(0).is_none(), "nothing before the bucket exists");
        a.init(3, &[1.0, 2.0, 3.0, 4.0, 5.0], false);
        assert!(
            a.vector(2).is_none(),
            "a slot not yet written is not published"
        );
        assert_eq!(a.vector(3), Some(&[1.0, 2.0, 3.0, 4.0, 5.0][..]));
        assert_eq!(a.live_vector(3), a.vector(3));
        let l = a.links(3).expect("list");
        assert_eq!((l.len(), l.cap()), (0, 8));
        l.set(&[7, 9]);
        assert_eq!(a.links(3).map(|l| l.to_vec()), Some(vec![7, 9]));
        assert_eq!(
            a.vector(3).map(<[f32]>::len),
            Some(5),
            "the list leaves the vector alone"
        );
        assert!(!a.is_deleted(3));
        assert!(
            a.tombstone(3) && !a.tombstone(3),
            "a second tombstone is refused"
        );
        assert!(a.is_deleted(3) && a.live_vector(3).is_none());
        assert!(
            a.vector(3).is_some(),
            "walks still read a deleted node's vector"
        );
        assert!(!a.tombstone(2), "an unpublished slot cannot be deleted");
        // A record in a later bucket, and one loaded as deleted.
        a.init(5000, &[0.5; 5], true);
        assert!(a.is_deleted(5000) && a.vector(5000).is_some());
    }

    #[test]
    fn vectors_are_aligned_and_records_fill_whole_lines() {
        for (dim, m0) in [(384, 32), (17, 12), (1, 2)] {
            let a = Arena::new(dim, m0);
            assert_eq!(a.stride % 16, 0);
            assert!(a.vec_off >= 2 + m0 && a.vec_off + dim <= a.stride);
            a.init(1, &vec![1.0; dim], false);
            let v = a.vector(1).expect("published");
            assert_eq!(v.as_ptr() as usize % 16, 0, "dim {dim}");
        }
    }
}
