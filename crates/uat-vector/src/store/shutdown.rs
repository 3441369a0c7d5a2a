//! Snapshots at a graceful shutdown: every collection whose WAL holds
//! records is snapshotted, so the next start loads snapshots and replays
//! little or nothing, within a deadline an orchestrator's grace period
//! leaves room for.

use super::VectorStore;
use crate::collection::{Collection, SnapshotBusy};
use crate::error::VectorError;
use crate::metrics;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What [`VectorStore::snapshot_dirty`] did with one collection.
#[derive(Debug)]
pub enum SnapshotOutcome {
    /// Snapshotted: its WAL, `wal_bytes` bytes of records, was emptied, so
    /// the next open replays nothing of it.
    Snapshotted {
        /// Bytes of WAL records the snapshot replaced.
        wal_bytes: u64,
        /// How long the snapshot took.
        elapsed: Duration,
    },
    /// Its WAL held no records (nothing past its last snapshot), or it was
    /// being dropped: left as it was, no file written.
    Clean,
    /// The snapshot failed: the last snapshot and the WAL are as they were
    /// (or the new snapshot is in place with the WAL still whole), so every
    /// write is recovered at the next open, by a longer replay.
    Failed(VectorError),
    /// The deadline passed before its turn: not snapshotted, its WAL is
    /// replayed at the next open.
    NotReached,
}

impl SnapshotOutcome {
    /// A short name for logs and metric labels: `ok`, `clean`, `error` or
    /// `not_reached`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Snapshotted { .. } => "ok",
            Self::Clean => "clean",
            Self::Failed(_) => "error",
            Self::NotReached => "not_reached",
        }
    }
}

/// One collection's entry in the report of [`VectorStore::snapshot_dirty`].
#[derive(Debug)]
pub struct CollectionSnapshot {
    /// The collection's name.
    pub name: String,
    /// What was done with it.
    pub outcome: SnapshotOutcome,
}

impl VectorStore {
    /// Snapshots, one after the other in name order, every collection whose
    /// WAL holds records (operations no snapshot holds yet, which the next
    /// open would replay into the graph), and leaves the others untouched:
    /// meant for a graceful shutdown, once writes have stopped, so that the
    /// next start replays nothing.
    ///
    /// No snapshot starts once `deadline` has passed (an orchestrator kills
    /// the process after its grace period); one already running finishes.
    /// The collections not reached are reported as such (those whose WAL is
    /// empty, as clean). A failure is reported and the next collection
    /// tried. A snapshot is atomic (see [`Collection::snapshot`]): a failed
    /// or interrupted one loses nothing, the WAL stays whole.
    ///
    /// Unlike [`Collection::snapshot`], it never compacts: a rebuild is CPU
    /// work of minutes on a large collection, and the automatic snapshots
    /// compact later. Logs one line per collection snapshotted (info), failed
    /// or not reached (warning), and counts them in
    /// `uat_vector_shutdown_snapshots_total{outcome}`. Blocking file I/O:
    /// call it from a blocking pool.
    pub fn snapshot_dirty(&self, deadline: Instant) -> Vec<CollectionSnapshot> {
        let all: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
        let mut report = Vec::with_capacity(all.len());
        for c in all {
            let outcome = if Instant::now() < deadline {
                #[cfg(test)]
                self.pause("snapshot", c.name());
                let started = Instant::now();
                match c.snapshot_if_dirty(deadline) {
                    Ok(None) => SnapshotOutcome::Clean,
                    Ok(Some(wal_bytes)) => SnapshotOutcome::Snapshotted {
                        wal_bytes,
                        elapsed: started.elapsed(),
                    },
                    // Held past the deadline by a write or an automatic
                    // snapshot (which may be compacting for minutes).
                    Err(SnapshotBusy::Busy) => SnapshotOutcome::NotReached,
                    Err(SnapshotBusy::Failed(e)) => SnapshotOutcome::Failed(e),
                }
            } else {
                // Past the deadline, never wait: a WAL held now is held by
                // a write or a snapshot that may run long.
                match c.try_wal_bytes() {
                    Some(0) => SnapshotOutcome::Clean,
                    _ => SnapshotOutcome::NotReached,
                }
            };
            record(c.name(), &outcome);
            report.push(CollectionSnapshot {
                name: c.name().to_owned(),
                outcome,
            });
        }
        report
    }
}

/// Logs and counts one collection's outcome (a clean one only at debug).
fn record(name: &str, outcome: &SnapshotOutcome) {
    match outcome {
        SnapshotOutcome::Snapshotted { wal_bytes, elapsed } => tracing::info!(
            collection = name,
            wal_bytes,
            seconds = elapsed.as_secs_f64(),
            "shutdown: collection snapshotted, its WAL emptied (nothing to replay at the next start)"
        ),
        SnapshotOutcome::Clean => {
            tracing::debug!(collection = name, "shutdown: WAL empty, no snapshot needed");
            return;
        }
        SnapshotOutcome::Failed(e) => tracing::warn!(
            collection = name,
            error = %e,
            "shutdown snapshot failed; the WAL is kept and replayed at the next start"
        ),
        SnapshotOutcome::NotReached => tracing::warn!(
            collection = name,
            "shutdown snapshot budget spent before this collection; its WAL is replayed at the next start"
        ),
    }
    metrics::shutdown_snapshot(outcome.label());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::Metric;
    use crate::durable;
    use crate::store::StoreOptions;
    use crate::types::{CollectionConfig, Point, PointId};
    use parking_lot::Mutex;

    /// No automatic snapshots: only the ones under test are taken.
    fn opts() -> StoreOptions {
        StoreOptions {
            snapshot_wal_bytes: 0,
            ..StoreOptions::default()
        }
    }

    /// A store holding one collection per name, each with points 0..n.
    fn filled(dir: &std::path::Path, names: &[&str], n: u64) -> VectorStore {
        let s = VectorStore::open(dir, opts()).unwrap();
        for name in names {
            let c = s
                .create_collection(name, CollectionConfig::new(2, Metric::L2))
                .unwrap();
            c.upsert(
                (0..n)
                    .map(|i| Point {
                        id: PointId::Num(i),
                        vector: vec![i as f32, 1.0],
                        payload: None,
                    })
                    .collect(),
            )
            .unwrap();
        }
        s
    }

    /// The deadline stops new snapshots, not a running one: the snapshot
    /// that was started before it finishes, and the next collection is not
    /// started (its hook never runs) and keeps its WAL.
    #[test]
    fn a_running_snapshot_finishes_past_the_deadline_and_no_other_starts() {
        let dir = tempfile::tempdir().unwrap();
        let s = filled(dir.path(), &["a", "b"], 20);
        let b_wal = s.get("b").unwrap().wal_bytes();
        let deadline = Instant::now() + Duration::from_millis(200);
        let started = Arc::new(Mutex::new(Vec::new()));
        let seen = started.clone();
        s.set_hook(move |step, name| {
            seen.lock().push(format!("{step} {name}"));
            if name == "a" {
                // "a"'s snapshot runs across the deadline.
                std::thread::sleep(Duration::from_millis(400));
            }
        });
        let report = s.snapshot_dirty(deadline);
        assert!(Instant::now() >= deadline);
        assert_eq!(*started.lock(), ["snapshot a"]);
        assert_eq!(report.len(), 2);
        assert_eq!(report[0].name, "a");
        assert!(
            matches!(report[0].outcome, SnapshotOutcome::Snapshotted { wal_bytes, .. } if wal_bytes > 0),
            "{report:?}"
        );
        assert_eq!(report[1].name, "b");
        assert!(
            matches!(report[1].outcome, SnapshotOutcome::NotReached),
            "{report:?}"
        );
        assert_eq!(s.get("a").unwrap().wal_bytes(), 0);
        assert_eq!(s.get("b").unwrap().wal_bytes(), b_wal);
        assert!(!dir.path().join("b").join("snapshot.bin").exists());
    }

    /// A WAL held past the deadline (a long write, or an automatic snapshot
    /// compacting) is not waited for: the collection is reported not
    /// reached at the deadline, its WAL untouched, and the next one is
    /// still tried.
    #[test]
    fn a_wal_held_past_the_deadline_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let s = filled(dir.path(), &["a", "b"], 20);
        let a = s.get("a").unwrap();
        let a_wal = a.wal_bytes();
        let (held, release) = (
            std::sync::mpsc::channel::<()>(),
            std::sync::mpsc::channel::<()>(),
        );
        let (held_tx, held_rx) = held;
        let (release_tx, release_rx) = release;
        let holder = {
            let a = a.clone();
            std::thread::spawn(move || {
                let _wal = a.hold_wal_for_test();
                held_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(Duration::from_secs(10));
            })
        };
        held_rx.recv().unwrap();
        let started = Instant::now();
        let report = s.snapshot_dirty(started + Duration::from_millis(200));
        let took = started.elapsed();
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(took < Duration::from_secs(5), "waited {took:?}");
        assert!(
            matches!(report[0].outcome, SnapshotOutcome::NotReached),
            "{report:?}"
        );
        assert_eq!(a.wal_bytes(), a_wal);
        // "b" was reached before the deadline, or reported not reached:
        // never waited on either.
        assert!(
            matches!(
                report[1].outcome,
                SnapshotOutcome::Snapshotted { .. } | SnapshotOutcome::NotReached
            ),
            "{report:?}"
        );
    }

    /// A snapshot failing after its rename (the folder fsync: the new
    /// snapshot may not survive a power cut) keeps its WAL whole, the
    /// collections after it are snapshotted, and every point is there
    /// after a reopen.
    #[test]
    fn a_failed_snapshot_keeps_its_wal_and_the_others_are_snapshotted() {
        let dir = tempfile::tempdir().unwrap();
        let s = filled(dir.path(), &["a", "bad", "c"], 30);
        let bad_wal = s.get("bad").unwrap().wal_bytes();
        // The hook runs on the snapshotting thread, where the failpoint acts.
        s.set_hook(|_, name| durable::fail_sync_dir(name == "bad"));
        let report = s.snapshot_dirty(Instant::now() + Duration::from_secs(60));
        durable::fail_sync_dir(false);
        let outcomes: Vec<(&str, &str)> = report
            .iter()
            .map(|r| (r.name.as_str(), r.outcome.label()))
            .collect();
        assert_eq!(outcomes, [("a", "ok"), ("bad", "error"), ("c", "ok")]);
        assert_eq!(s.get("bad").unwrap().wal_bytes(), bad_wal);
        drop(s);
        let s = VectorStore::open(dir.path(), opts()).unwrap();
        for name in ["a", "bad", "c"] {
            let c = s.get(name).unwrap();
            assert_eq!(c.count(), 30, "{name}");
            assert_eq!(c.get(&PointId::Num(29)).unwrap().vector, [29.0, 1.0]);
        }
        assert_eq!(s.get("a").unwrap().wal_bytes(), 0);
        assert_eq!(s.get("bad").unwrap().wal_bytes(), bad_wal);
    }
}
