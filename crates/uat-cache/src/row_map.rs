//! L3's map on SQLite from a key's row id ([`crate::CacheKey`]'s 64-bit
//! `h`) to the `id` of the row that holds it: how a lookup, a delete and a
//! write find a row, in place of an index on `h`.
//!
//! The keys are random, so every row written would land on a random page of
//! such an index: a batch of writes dirtied about as many index pages as it
//! had rows, which SQLite writes to the WAL and again at each checkpoint.
//! Without it a batch appends to the table and to the two indexes whose
//! entries arrive nearly in order (`expires_at`; `namespace, model`):
//! `scripts/bench-l3-sqlite.py`, 1,024-row batches into 100,000 rows, wrote
//! 1,571 bytes per row instead of 2,776, in 5.1 µs of CPU instead of 6.9.
//!
//! The map is loaded from the table when the level opens and kept by every
//! statement that adds or removes rows: a write batch chooses its rows' ids
//! (a known key's from the map, new ones after the largest id ever given)
//! and records them once committed; deletes return the `(id, h)` pairs they
//! took. A key absent from the map is a miss without SQL. The map may hold
//! an entry whose row is gone (a delete took the row after a batch had
//! written it, before the batch recorded it): that never serves a wrong
//! answer (a hit also compares the full key); it reads nothing, and a write
//! through it puts the row back at the same id, which is never given to
//! another row (`AUTOINCREMENT`). No row this process wrote is missing
//! from the map, so a key delete finds every row it must take:
//! - a delete forgets only the keys recorded before its SQL ran
//!   ([`RowMap::epoch`]), so a batch that put a key's row back after the
//!   delete took it (at the same id, from the map) and recorded it
//!   meanwhile keeps its entry;
//! - a batch is never cut short between its commit and its record (L3's
//!   timeout ends only the wait for the write lock).
//!
//! Rows written by another process are not in the map (one SQLite file per
//! uat process). Each entry is 16 bytes (`id` and the record's epoch) plus
//! the hash table's own.

use crate::key::BuildKeyHasher;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Row id (`h`) -> `id`, for the rows this process knows.
#[derive(Default)]
pub(crate) struct RowMap {
    ids: RwLock<HashMap<u64, Slot, BuildKeyHasher>>,
    /// Counts records; each entry keeps the count of the one that made it.
    epoch: AtomicU64,
}

#[derive(Clone, Copy)]
struct Slot {
    id: i64,
    epoch: u64,
}

/// `h` as the map's key: already a hash (SHA-256 bits), passed through.
fn slot(h: i64) -> u64 {
    u64::from_ne_bytes(h.to_ne_bytes())
}

impl RowMap {
    /// The `id` of the row holding `h`, if known.
    pub(crate) fn get(&self, h: i64) -> Option<i64> {
        self.ids.read().get(&slot(h)).map(|s| s.id)
    }

    /// Rows `(id, h)` written (committed).
    pub(crate) fn record(&self, rows: &[(i64, i64)]) {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let mut ids = self.ids.write();
        for &(id, h) in rows {
            ids.insert(slot(h), Slot { id, epoch });
        }
    }

    /// Read before a delete's SQL runs, and given to [`RowMap::forget`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Rows `(id, h)` deleted by SQL that ran after [`RowMap::epoch`] gave
    /// `before`: each key is forgotten when the map still points at that
    /// row as recorded by then. A key recorded later keeps its entry: a
    /// newer row of it, or the same row put back after the delete took it.
    pub(crate) fn forget(&self, rows: &[(i64, i64)], before: u64) {
        let mut ids = self.ids.write();
        for &(id, h) in rows {
            if ids
                .get(&slot(h))
                .is_some_and(|s| s.id == id && s.epoch <= before)
            {
                ids.remove(&slot(h));
            }
        }
    }

    /// Keys known.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_row_of_a_key_wins_and_forgetting_an_older_row_keeps_the_newer() {
        let m = RowMap::default();
        m.record(&[(1, -7), (2, 9), (3, -7)]);
        assert_eq!(
            m.get(-7),
            Some(3),
            "the later row of a key (the load reads in id order)"
        );
        assert_eq!(m.get(9), Some(2));
        assert_eq!(m.get(i64::MIN), None);
        m.forget(&[(1, -7)], m.epoch());
        assert_eq!(m.get(-7), Some(3), "an older row's delete keeps the newer");
        m.forget(&[(3, -7), (2, 9)], m.epoch());
        assert_eq!((m.get(-7), m.get(9), m.len()), (None, None, 0));
        m.record(&[(4, i64::MIN), (5, i64::MAX)]);
        assert_eq!((m.get(i64::MIN), m.get(i64::MAX)), (Some(4), Some(5)));
    }

    /// A delete took row 5 of key 7; before it forgot the key, a write batch
    /// put the key's row back at 5 (the map still said 5) and recorded it.
    /// The row is in the table again, so the key must stay.
    #[test]
    fn a_delete_forgets_only_what_was_recorded_before_its_sql() {
        let m = RowMap::default();
        m.record(&[(5, 7)]);
        let before = m.epoch(); // the delete starts
        m.record(&[(5, 7)]); // the batch put the row back
        m.forget(&[(5, 7)], before); // the delete returned row 5
        assert_eq!(m.get(7), Some(5), "the row put back stays findable");
        let before = m.epoch();
        m.forget(&[(5, 7)], before);
        assert_eq!(m.get(7), None, "recorded before the delete: forgotten");
    }
}
