//! The store: a folder holding one subfolder per collection (and, briefly,
//! the `.dropped-*` folders of dropped ones being removed).

use crate::collection::Collection;
use crate::durable;
use crate::error::{Result, VectorError};
use crate::metrics;
use crate::types::{CollectionConfig, CollectionInfo};
use crate::wal::{BATCH_INTERVAL, FsyncPolicy};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod shutdown;

pub use shutdown::{CollectionSnapshot, SnapshotOutcome};

/// Prefix of the folders of dropped collections awaiting removal; never a
/// collection name ([`check_name`] refuses the dot).
const DROPPED_PREFIX: &str = ".dropped-";

/// Default of [`StoreOptions::snapshot_wal_bytes`]: 64 MiB.
pub const DEFAULT_SNAPSHOT_WAL_BYTES: u64 = 64 * 1024 * 1024;

/// Default of [`StoreOptions::snapshot_check_interval`]: 5 s.
pub const DEFAULT_SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Shortest check interval honoured (a zero one would spin).
const MIN_SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// Store-wide options.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// WAL flush policy for every collection.
    pub fsync: FsyncPolicy,
    /// A collection whose WAL holds at least this many bytes is snapshotted
    /// by the store itself, as [`Collection::snapshot`] does (compacting
    /// first when many points are tombstoned), which empties the WAL: the
    /// WAL, and the replay at the next open, stay bounded without anyone
    /// asking for snapshots. A collection whose tombstones outnumber its
    /// live points (1,000 of them at least) is snapshotted and compacted
    /// whatever its WAL's size: deletes barely grow the WAL, and tombstones
    /// slow searches and hold memory until compacted. 0 turns automatic
    /// snapshots off (both). [`DEFAULT_SNAPSHOT_WAL_BYTES`] by default.
    ///
    /// Writes to the collection wait while its snapshot is written, as they
    /// do for a snapshot asked for.
    pub snapshot_wal_bytes: u64,
    /// How often a background thread compares every collection's WAL size
    /// with `snapshot_wal_bytes` (at least 10 ms);
    /// [`DEFAULT_SNAPSHOT_CHECK_INTERVAL`] by default. A failed snapshot is
    /// logged and tried again at a later check.
    pub snapshot_check_interval: Duration,
    /// The WAL must also hold this fraction of the last snapshot's size
    /// before the next automatic snapshot ([`DEFAULT_SNAPSHOT_WAL_RATIO`],
    /// a half): a snapshot rewrites the whole collection, so a large one is
    /// rewritten once it has grown by half, not every `snapshot_wal_bytes`.
    pub snapshot_wal_ratio: f64,
}

/// Default of [`StoreOptions::snapshot_wal_ratio`].
pub const DEFAULT_SNAPSHOT_WAL_RATIO: f64 = 0.5;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::default(),
            snapshot_wal_bytes: DEFAULT_SNAPSHOT_WAL_BYTES,
            snapshot_check_interval: DEFAULT_SNAPSHOT_CHECK_INTERVAL,
            snapshot_wal_ratio: DEFAULT_SNAPSHOT_WAL_RATIO,
        }
    }
}

/// A folder of named collections.
#[derive(Debug)]
pub struct VectorStore {
    dir: PathBuf,
    options: StoreOptions,
    collections: Arc<RwLock<BTreeMap<String, Arc<Collection>>>>,
    /// Names a create or a drop is working on (its file I/O runs without
    /// the map lock, so lookups never wait for an fsync): taken before the
    /// I/O, given back once the result is in the map. A name here is taken,
    /// as one in the map is. Locked before `collections` when both are.
    busy: Mutex<BTreeSet<String>>,
    /// Collections that failed to open at start-up, with why: their files
    /// stay for an operator, and `/ready` names them.
    failed: Vec<(String, String)>,
    /// The automatic snapshot thread and the channel whose closing stops it.
    snapshotter: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    /// Test builds: called where a create or a drop does its I/O, and
    /// before each snapshot of [`VectorStore::snapshot_dirty`].
    #[cfg(test)]
    hook: TestHook,
}

/// A test's callback, given the step (`"create"`, `"drop"`, `"snapshot"`)
/// and the name, run while a create or a drop does its file I/O, and before
/// a shutdown snapshot (on the thread that takes it).
#[cfg(test)]
#[derive(Default)]
struct TestHook(Mutex<Option<HookFn>>);

#[cfg(test)]
type HookFn = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// A name taken by a create or a drop doing its I/O; given back on drop
/// (on every path out, errors included) or by [`Claim::publish`].
struct Claim<'a> {
    busy: &'a Mutex<BTreeSet<String>>,
    name: String,
}

impl Claim<'_> {
    /// Puts the new collection in the map and gives the name back in one
    /// step under the claims' lock, so no one sees the name both claimed
    /// and in the map (a drop would take that for another drop running).
    fn publish(mut self, map: &RwLock<BTreeMap<String, Arc<Collection>>>, c: Arc<Collection>) {
        let mut busy = self.busy.lock();
        busy.remove(&self.name);
        // Given back: the drop below has nothing left to do (no name is empty).
        let name = std::mem::take(&mut self.name);
        map.write().insert(name, c);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            self.busy.lock().remove(&self.name);
        }
    }
}

#[cfg(test)]
impl std::fmt::Debug for TestHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestHook")
    }
}

/// Checks a collection name: 1-64 characters from `[A-Za-z0-9_-]`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(VectorError::BadCollectionName(name.to_owned()))
    }
}

/// Syncs dirty WALs every [`BATCH_INTERVAL`] for the `batch` policy; stops
/// when the store is dropped.
fn spawn_flusher(collections: Weak<RwLock<BTreeMap<String, Arc<Collection>>>>) {
    let spawned = std::thread::Builder::new()
        .name("uat-vector-wal-flush".into())
        .spawn(move || {
            loop {
                std::thread::sleep(BATCH_INTERVAL);
                let Some(map) = collections.upgrade() else {
                    return;
                };
                let all: Vec<Arc<Collection>> = map.read().values().cloned().collect();
                drop(map);
                for c in all {
                    if let Err(e) = c.flush_if_dirty() {
                        // Writes acknowledged since the last good sync may be
                        // lost; the collection refuses writes from now on.
                        tracing::error!(collection = c.name(), error = %e, "WAL flush failed");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the WAL flusher; batch fsync happens on writes only");
    }
}

/// Snapshots, every `every`, each collection whose WAL holds at least
/// `wal_bytes` bytes; stops when `stop`'s sender is dropped (the store's drop,
/// which waits for it) or the collections are gone.
fn spawn_snapshotter(
    collections: Weak<RwLock<BTreeMap<String, Arc<Collection>>>>,
    wal_bytes: u64,
    ratio: f64,
    every: Duration,
) -> Option<(mpsc::Sender<()>, JoinHandle<()>)> {
    let (tx, stop) = mpsc::channel::<()>();
    let every = every.max(MIN_SNAPSHOT_CHECK_INTERVAL);
    let spawned = std::thread::Builder::new()
        .name("uat-vector-snapshot".into())
        .spawn(move || {
            // Nothing is ever sent: only the sender's drop ends the wait early.
            while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
                let Some(map) = collections.upgrade() else {
                    return;
                };
                let all: Vec<Arc<Collection>> = map.read().values().cloned().collect();
                drop(map);
                for c in all {
                    if let Err(TryRecvError::Disconnected) = stop.try_recv() {
                        return;
                    }
                    let started = Instant::now();
                    match c.snapshot_if_wal_over(wal_bytes, ratio) {
                        Ok(None) => {}
                        Ok(Some(wal)) => {
                            metrics::auto_snapshot(true);
                            tracing::info!(
                                collection = c.name(),
                                wal_bytes = wal,
                                seconds = started.elapsed().as_secs_f64(),
                                "WAL past vector.snapshot_wal_bytes, or most points deleted: snapshotted"
                            );
                        }
                        Err(e) => {
                            metrics::auto_snapshot(false);
                            tracing::warn!(collection = c.name(), error = %e, "automatic snapshot failed; tried again at the next check");
                        }
                    }
                }
            }
        });
    match spawned {
        Ok(thread) => Some((tx, thread)),
        Err(e) => {
            tracing::warn!(error = %e, "could not start the snapshot thread; WALs grow until a snapshot is asked for");
            None
        }
    }
}

impl Drop for VectorStore {
    /// Stops the snapshot thread and waits for a snapshot it is writing, so
    /// none runs on after the store is gone (into a store reopened on the
    /// same folder, say).
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.snapshotter.take() {
            drop(stop);
            if thread.join().is_err() {
                tracing::error!("the vector snapshot thread panicked");
            }
        }
    }
}

impl VectorStore {
    /// Opens (creating if needed) the store folder and every collection in it,
    /// each recovered from its snapshot and WAL.
    ///
    /// A collection that fails to open (a damaged `config.json`, snapshot or
    /// WAL) is logged and skipped, its files left untouched for an operator
    /// to repair; the others open. The remains of interrupted drops are
    /// deleted.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(|e| VectorError::io(&dir, e))?;
        let mut collections = BTreeMap::new();
        let mut failed = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| VectorError::io(&dir, e))? {
            let entry = entry.map_err(|e| VectorError::io(&dir, e))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if name.starts_with(DROPPED_PREFIX) && path.is_dir() {
                // Renamed away by a drop that did not finish removing it.
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove a dropped collection's folder");
                }
                continue;
            }
            if !path.join("config.json").is_file() || check_name(&name).is_err() {
                continue;
            }
            match Collection::open(&path, &name, options.fsync) {
                Ok(c) => {
                    collections.insert(name, Arc::new(c));
                }
                // One damaged collection must not keep the others (and the
                // server) down; its name stays taken until it is repaired.
                Err(e) => {
                    tracing::error!(collection = %name, error = %e, "collection failed to open; skipped, its files left in place");
                    failed.push((name, e.to_string()));
                }
            }
        }
        let collections = Arc::new(RwLock::new(collections));
        if options.fsync == FsyncPolicy::Batch {
            spawn_flusher(Arc::downgrade(&collections));
        }
        let snapshotter = (options.snapshot_wal_bytes > 0)
            .then(|| {
                spawn_snapshotter(
                    Arc::downgrade(&collections),
                    options.snapshot_wal_bytes,
                    options.snapshot_wal_ratio,
                    options.snapshot_check_interval,
                )
            })
            .flatten();
        Ok(Self {
            dir,
            options,
            collections,
            busy: Mutex::new(BTreeSet::new()),
            failed,
            snapshotter,
            #[cfg(test)]
            hook: TestHook::default(),
        })
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The collections that failed to open at start-up and why (their
    /// files are left in place; the names answer 409 until repaired).
    pub fn failed(&self) -> &[(String, String)] {
        &self.failed
    }

    /// Creates a collection, durably; [`VectorError::AlreadyExists`] if the
    /// name is taken (by a collection, or by a create or drop of that name
    /// still running), [`VectorError::FolderNotEmpty`] if its folder holds
    /// files (a collection that failed to open at start-up).
    ///
    /// The files are written and fsynced with the name claimed but no lock
    /// held, so lookups, and creates and drops of other names, never wait
    /// for this one's I/O; the collection is published once it is durable.
    pub fn create_collection(
        &self,
        name: &str,
        config: CollectionConfig,
    ) -> Result<Arc<Collection>> {
        check_name(name)?;
        config.validate()?;
        let claim = self
            .claim(name, |taken| taken)
            .ok_or_else(|| VectorError::AlreadyExists(name.to_owned()))?;
        #[cfg(test)]
        self.pause("create", name);
        let c = Arc::new(Collection::create(
            &self.dir.join(name),
            name,
            config,
            self.options.fsync,
        )?);
        claim.publish(&self.collections, c.clone());
        Ok(c)
    }

    /// Claims `name` for a create or a drop: `None` when another create or
    /// drop holds it, or when `refuse` says no given whether the name is in
    /// the map (a create refuses a name in use).
    fn claim(&self, name: &str, refuse: impl FnOnce(bool) -> bool) -> Option<Claim<'_>> {
        let mut busy = self.busy.lock();
        if busy.contains(name) || refuse(self.collections.read().contains_key(name)) {
            return None;
        }
        busy.insert(name.to_owned());
        Some(Claim {
            busy: &self.busy,
            name: name.to_owned(),
        })
    }

    /// Number of collections.
    pub fn len(&self) -> usize {
        self.collections.read().len()
    }

    /// Whether there are no collections.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A collection by name; [`VectorError::NotFound`] if there is none.
    pub fn get(&self, name: &str) -> Result<Arc<Collection>> {
        self.collections
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| VectorError::NotFound(name.to_owned()))
    }

    /// Names of all collections, sorted.
    pub fn names(&self) -> Vec<String> {
        self.collections.read().keys().cloned().collect()
    }

    /// Summaries of all collections, sorted by name.
    pub fn list(&self) -> Vec<CollectionInfo> {
        let all: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
        all.iter().map(|c| c.info()).collect()
    }

    /// Deletes a collection and its files; [`VectorError::NotFound`] if there
    /// is none (or another drop of it is running).
    ///
    /// The folder is first renamed (durably) to a name no collection can
    /// have, then removed: a crash or a create of the same name never meets
    /// half-deleted files under the collection's name, and
    /// [`VectorStore::open`] deletes what an interrupted drop left. The name
    /// is claimed until the rename is durable (a create of it is refused
    /// meanwhile), but no lock is held across the I/O: lookups, and creates
    /// and drops of other names, never wait for it.
    pub fn drop_collection(&self, name: &str) -> Result<()> {
        let c = self.get(name)?;
        // Only a drop can take a name that is in the map: one is running.
        let claim = self
            .claim(name, |taken| !taken)
            .ok_or_else(|| VectorError::NotFound(name.to_owned()))?;
        if !self.get(name).is_ok_and(|m| Arc::ptr_eq(&m, &c)) {
            return Err(VectorError::NotFound(name.to_owned())); // dropped meanwhile
        }
        // A snapshot of it still running after the rename could land in the
        // folder of a new collection of the same name: wait for it to end
        // (a compaction can take seconds).
        c.set_retired(true);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let graveyard = self.dir.join(format!("{DROPPED_PREFIX}{name}-{nanos}"));
        if let Err(e) = std::fs::rename(c.dir(), &graveyard) {
            c.set_retired(false);
            return Err(VectorError::io(c.dir(), e));
        }
        // Renamed: the collection is gone from its name whatever happens next.
        self.collections.write().remove(name);
        #[cfg(test)]
        self.pause("drop", name);
        // Synced before a create of the name can run (the claim is given
        // back below) and before any unlink: a power cut must not undo the
        // rename and keep the unlinks.
        let synced = durable::sync_dir(&self.dir);
        metrics::forget(name);
        drop(claim);
        // If unsynced (or unremoved), the folder is deleted at the next open.
        synced?;
        std::fs::remove_dir_all(&graveyard).map_err(|e| VectorError::io(&graveyard, e))
    }

    /// Test builds: runs `hook` at each step a create or drop pauses at.
    #[cfg(test)]
    fn set_hook(&self, hook: impl Fn(&str, &str) + Send + Sync + 'static) {
        *self.hook.0.lock() = Some(Arc::new(hook));
    }

    #[cfg(test)]
    fn pause(&self, step: &str, name: &str) {
        let hook = self.hook.0.lock().clone();
        if let Some(hook) = hook {
            hook(step, name);
        }
    }

    /// Snapshots every collection, compacting those with many tombstones,
    /// whether or not its WAL holds anything; stops at the first failure.
    /// At shutdown, [`VectorStore::snapshot_dirty`] does only what is
    /// needed, within a deadline.
    pub fn snapshot_all(&self) -> Result<()> {
        let all: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
        for c in all {
            c.snapshot()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::Metric;
    use crate::types::{Point, PointId};

    /// A create or drop doing its file I/O (fsyncs, a rename) holds no lock
    /// that lookups take: while one is paused in the middle of it, every
    /// other collection is found, listed and dropped, and the name being
    /// created or dropped stays taken (a second create of it is a conflict)
    /// until it is done.
    #[test]
    fn lookups_never_wait_for_the_io_of_a_create_or_drop() {
        let dir = tempfile::tempdir().unwrap();
        let off = StoreOptions {
            snapshot_wal_bytes: 0,
            ..StoreOptions::default()
        };
        let s = VectorStore::open(dir.path(), off).unwrap();
        let cfg = || CollectionConfig::new(2, Metric::L2);
        for name in ["other", "gone", "spare"] {
            s.create_collection(name, cfg()).unwrap();
        }
        for (step, name) in [("create", "slow"), ("drop", "gone")] {
            std::thread::scope(|scope| {
                // Dropped on a failed assertion too, which lets the paused
                // thread go on (so a failure never hangs the test).
                let (release, released) = mpsc::channel::<()>();
                let (entered, entered_rx) = mpsc::channel::<String>();
                let released = parking_lot::Mutex::new(released);
                let entered = parking_lot::Mutex::new(entered);
                // Pauses the create or drop of `name` only.
                s.set_hook(move |at, of| {
                    if of == name {
                        let _ = entered.lock().send(at.to_owned());
                        let _ = released.lock().recv();
                    }
                });
                let s = &s;
                let worker = scope.spawn(move || match step {
                    "create" => s.create_collection(name, cfg()).map(drop),
                    _ => s.drop_collection(name),
                });
                assert_eq!(entered_rx.recv().unwrap(), step);
                // Paused in its I/O: the map is not locked at all.
                assert!(
                    s.collections.try_write().is_some(),
                    "{step} holds the map lock"
                );
                assert_eq!(s.get("other").unwrap().name(), "other");
                assert!(s.names().contains(&"other".to_owned()));
                assert!(!s.list().is_empty());
                // The name is taken until the create or drop is done.
                assert!(matches!(
                    s.create_collection(name, cfg()),
                    Err(VectorError::AlreadyExists(_))
                ));
                // Other collections are created and dropped meanwhile.
                s.create_collection(&format!("{name}-2"), cfg()).unwrap();
                s.drop_collection("spare").unwrap();
                s.create_collection("spare", cfg()).unwrap();
                release.send(()).unwrap();
                worker.join().unwrap().unwrap();
            });
        }
        s.set_hook(|_, _| {});
        assert!(s.busy.lock().is_empty(), "every claim given back");
        assert!(s.get("slow").is_ok());
        assert!(matches!(s.get("gone"), Err(VectorError::NotFound(_))));
        // Dropped for good: the name is free again.
        s.create_collection("gone", cfg()).unwrap();
    }

    /// A collection being dropped is skipped quietly (no error to log, no
    /// snapshot written), and snapshotted again once the drop failed.
    #[test]
    fn automatic_snapshot_skips_a_retired_collection() {
        let dir = tempfile::tempdir().unwrap();
        let off = StoreOptions {
            snapshot_wal_bytes: 0,
            ..StoreOptions::default()
        };
        let s = VectorStore::open(dir.path(), off).unwrap();
        let c = s
            .create_collection("r", CollectionConfig::new(2, Metric::L2))
            .unwrap();
        c.upsert(vec![Point {
            id: PointId::Num(1),
            vector: vec![0.5, 0.5],
            payload: None,
        }])
        .unwrap();
        c.set_retired(true);
        assert_eq!(c.snapshot_if_wal_over(1, 0.0).unwrap(), None);
        assert!(!c.dir().join("snapshot.bin").exists());
        c.set_retired(false);
        let wal = c.snapshot_if_wal_over(1, 0.0).unwrap().unwrap();
        assert!(wal > 0);
        assert_eq!(c.snapshot_if_wal_over(1, 0.0).unwrap(), None);
        assert!(c.dir().join("snapshot.bin").is_file());
    }

    /// Under `batch`, a failed fsync of the background flusher may have
    /// lost writes already acknowledged: the collection refuses writes from
    /// then on (they went on, on top of the lost ones), reads keep working.
    #[test]
    fn failed_batch_flush_refuses_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let batch = StoreOptions {
            fsync: FsyncPolicy::Batch,
            snapshot_wal_bytes: 0,
            ..StoreOptions::default()
        };
        let s = VectorStore::open(dir.path(), batch).unwrap();
        let c = s
            .create_collection("b", CollectionConfig::new(2, Metric::L2))
            .unwrap();
        let pt = |i: u64| Point {
            id: PointId::Num(i),
            vector: vec![i as f32, 0.5],
            payload: None,
        };
        c.upsert(vec![pt(1)]).unwrap();
        c.fail_wal_syncs(true);
        // Acknowledged unless it happened to fsync itself (>= 100 ms since
        // the last sync): either way the next flush fails.
        let _ = c.upsert(vec![pt(2)]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut i = 3;
        loop {
            match c.upsert(vec![pt(i)]) {
                Err(VectorError::WalPoisoned { collection, .. }) => {
                    assert_eq!(collection, "b");
                    break;
                }
                r => assert!(r.is_ok(), "{r:?}"),
            }
            assert!(Instant::now() < deadline, "writes still accepted");
            std::thread::sleep(Duration::from_millis(20));
            i += 1;
        }
        c.fail_wal_syncs(false);
        assert!(matches!(
            c.upsert(vec![pt(1000)]),
            Err(VectorError::WalPoisoned { .. })
        ));
        assert!(c.get(&PointId::Num(1)).is_ok());
    }
}
