//! The memory a collection reports (`GET /v1/collections[/{name}]`): the
//! payload figure is a running count, not a re-serialization of every
//! payload under the collection's lock on each call.

use super::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting the bytes each thread asks for.
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to `System` unchanged; the count is a
// thread-local `Cell` with a const initializer, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.with(|a| a.set(a.get() + layout.size()));
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.with(|a| a.set(a.get() + new_size));
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Bytes this thread allocated while running `f`.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (out, ALLOCATED.with(Cell::get) - before)
}

fn payload_of(i: u64, len: usize) -> serde_json::Value {
    serde_json::json!({ "i": i, "text": "p".repeat(len) })
}

fn json_len(v: &serde_json::Value) -> usize {
    serde_json::to_string(v).unwrap().len()
}

/// `info()` on a collection holding 4 MiB of payloads allocates a few
/// kilobytes (its name and settings), not a string per payload; and the
/// figure stays exact through overwrites, deletes, a compaction and a
/// reopen (tombstoned points keep their payloads in memory until a
/// compaction reclaims them, so they count until then).
#[test]
fn payload_memory_is_a_running_count_that_stays_right() {
    let (dir, s) = store();
    let c = s
        .create_collection("c", CollectionConfig::new(2, Metric::L2))
        .unwrap();
    let point = |i: u64, len: usize| Point {
        id: PointId::Num(i),
        vector: vec![i as f32, 1.0],
        payload: Some(payload_of(i, len)),
    };
    // 1,000 points of 4 KiB payloads, one without a payload.
    let mut held = 0; // every node's payload, tombstoned ones included
    let mut batch: Vec<Point> = (0..1000).map(|i| point(i, 4096)).collect();
    batch.push(Point {
        id: PointId::Num(5000),
        vector: vec![0.0, 0.0],
        payload: None,
    });
    held += batch
        .iter()
        .filter_map(|p| p.payload.as_ref())
        .map(json_len)
        .sum::<usize>();
    c.upsert(batch).unwrap();
    assert_eq!(c.memory().payload_bytes, held);

    c.info(); // the first call registers the collection's gauges
    let (info, bytes) = allocated_by(|| c.info());
    assert_eq!(info.memory.payload_bytes, held);
    assert!(
        bytes < 64 * 1024,
        "info() allocated {bytes} bytes for {held} bytes of payloads"
    );

    // Overwrites: new nodes, the old ones tombstoned (still held).
    let over: Vec<Point> = (0..100).map(|i| point(i, 10)).collect();
    held += over
        .iter()
        .filter_map(|p| p.payload.as_ref())
        .map(json_len)
        .sum::<usize>();
    c.upsert(over).unwrap();
    assert_eq!(c.info().memory.payload_bytes, held);
    // Deletes tombstone: nothing freed yet.
    assert_eq!(
        c.delete((100..200).map(PointId::Num).collect()).unwrap(),
        100
    );
    assert_eq!(c.info().memory.payload_bytes, held);

    // Reopened from the WAL alone: the same nodes, the same figure.
    drop(s);
    let s = VectorStore::open(dir.path(), StoreOptions::default()).unwrap();
    let c = s.get("c").unwrap();
    assert_eq!(c.info().memory.payload_bytes, held);

    // A compaction keeps only the live points' payloads.
    c.compact().unwrap();
    let live: usize = (0..100)
        .map(|i| json_len(&payload_of(i, 10)))
        .chain((200..1000).map(|i| json_len(&payload_of(i, 4096))))
        .sum();
    assert_eq!(c.info().memory.payload_bytes, live);
    // Reopened from the snapshot written by the compaction, then again
    // with a WAL tail on top of it.
    drop(s);
    let s = VectorStore::open(dir.path(), StoreOptions::default()).unwrap();
    let c = s.get("c").unwrap();
    assert_eq!(c.info().memory.payload_bytes, live);
    c.upsert(vec![point(7, 100)]).unwrap();
    let after = live + json_len(&payload_of(7, 100));
    assert_eq!(c.info().memory.payload_bytes, after);
    drop(s);
    let s = VectorStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(s.get("c").unwrap().info().memory.payload_bytes, after);
}
