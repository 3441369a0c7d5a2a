//! A neighbour list that readers copy without taking a lock.
//!
//! The list is a fixed run of `AtomicU32`: slot 0 holds the length, slots
//! `1..=cap` the ids. Writers (serialized by their node's mutex) store the ids
//! first and publish the length last (`Release`); a reader loads the length
//! (`Acquire`) and then the ids. A reader racing a rewrite may see a mix of old
//! and new ids, each of which is a node that exists, which a graph walk
//! tolerates (hnswlib's searches read lists the same way); it never sees an id
//! that was not written. So searches touch no lock and no shared counter.
//!
//! `Links` is a view: level-0 lists live in the arena's records
//! (`arena.rs`), upper-level lists in their node (`owned`).

use std::sync::atomic::{AtomicU32, Ordering};

/// Storage of one list holding at most `cap` ids (a node's upper levels).
pub(crate) fn owned(cap: usize) -> Box<[AtomicU32]> {
    (0..=cap).map(|_| AtomicU32::new(0)).collect()
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Links<'a> {
    slots: &'a [AtomicU32],
}

impl<'a> Links<'a> {
    /// The list stored in `slots` (length word first; never empty).
    #[inline]
    pub(crate) fn new(slots: &'a [AtomicU32]) -> Self {
        Self { slots }
    }

    /// Most ids the list holds.
    #[inline]
    pub(crate) fn cap(&self) -> usize {
        self.slots.len() - 1
    }

    /// Number of ids.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        (self.slots[0].load(Ordering::Acquire) as usize).min(self.cap())
    }

    /// Appends the ids to `out` (after clearing it).
    #[inline]
    pub(crate) fn read_into(&self, out: &mut Vec<u32>) {
        out.clear();
        let n = self.len();
        out.extend(self.slots[1..=n].iter().map(|s| s.load(Ordering::Relaxed)));
    }

    /// The ids, as a new vector.
    pub(crate) fn to_vec(self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.cap());
        self.read_into(&mut v);
        v
    }

    /// Replaces the ids (at most `cap` are kept). The caller holds the node's
    /// write lock (or owns the graph, as a snapshot load does).
    pub(crate) fn set(&self, ids: &[u32]) {
        let n = ids.len().min(self.cap());
        for (s, &id) in self.slots[1..=n].iter().zip(ids) {
            s.store(id, Ordering::Relaxed);
        }
        self.slots[0].store(n as u32, Ordering::Release);
    }

    /// Appends one id if there is room; returns false when full. The caller
    /// holds the node's write lock.
    pub(crate) fn push(&self, id: u32) -> bool {
        let n = self.len();
        if n >= self.cap() {
            return false;
        }
        self.slots[n + 1].store(id, Ordering::Relaxed);
        self.slots[0].store(n as u32 + 1, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::{Links, owned};

    #[test]
    fn push_set_and_read_back() {
        let store = owned(3);
        let l = Links::new(&store);
        assert!(l.to_vec().is_empty());
        assert!(l.push(7) && l.push(8) && l.push(9));
        assert!(!l.push(10), "a full list refuses");
        assert_eq!(l.to_vec(), vec![7, 8, 9]);
        l.set(&[1]);
        assert_eq!(l.to_vec(), vec![1]);
        l.set(&[4, 5, 6, 7, 8]);
        assert_eq!(l.to_vec(), vec![4, 5, 6], "set keeps at most cap ids");
    }
}
