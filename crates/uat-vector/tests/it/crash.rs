//! Crash recovery: a child process writes and acknowledges points with
//! `fsync = always` and is killed with SIGKILL mid-stream; after reopening,
//! every acknowledged point is present and searchable.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use uat_vector::SearchRequest;

const CHILD_ENV: &str = "UAT_VECTOR_CRASH_CHILD";
const DIM: usize = 32;
const KILL_AFTER: usize = 300;

fn vector_of(i: u64) -> Vec<f32> {
    uniform(1, DIM, 1000 + i).remove(0)
}

/// The child: writes batches forever, printing `ACK id` after each returns.
fn child(dir: &str) {
    let s = VectorStore::open(
        dir,
        StoreOptions {
            fsync: FsyncPolicy::Always,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let c = match s.get("crash") {
        Ok(c) => c,
        Err(_) => s
            .create_collection("crash", config(DIM, Metric::Cosine))
            .unwrap(),
    };
    let mut out = std::io::stdout().lock();
    for batch in 0u64.. {
        let ids: Vec<u64> = (batch * 3..batch * 3 + 3).collect();
        let pts = ids
            .iter()
            .map(|&i| Point {
                id: PointId::Num(i),
                vector: vector_of(i),
                payload: Some(serde_json::json!({"i": i})),
            })
            .collect();
        c.upsert(pts).unwrap();
        for i in ids {
            writeln!(out, "ACK {i}").unwrap();
        }
        out.flush().unwrap();
        if batch == 40 {
            c.snapshot().unwrap();
        }
    }
}

#[test]
fn acknowledged_points_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::acknowledged_points_survive_sigkill",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = proc.stdout.take().unwrap();
    let mut acked: Vec<u64> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.parse().unwrap());
            if acked.len() >= KILL_AFTER {
                proc.kill().unwrap(); // SIGKILL: no destructor, no flush, no shutdown
                break;
            }
        }
    }
    let status = proc.wait().unwrap();
    assert!(
        !status.success(),
        "the child must have been killed, not have finished"
    );
    assert!(
        acked.len() >= KILL_AFTER,
        "child acknowledged only {} points",
        acked.len()
    );

    let s = VectorStore::open(
        dir.path(),
        StoreOptions {
            fsync: FsyncPolicy::Always,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let c = s.get("crash").unwrap();
    assert!(
        c.count() >= acked.len(),
        "count {} < acknowledged {}",
        c.count(),
        acked.len()
    );
    for &i in &acked {
        let p = c
            .get(&PointId::Num(i))
            .unwrap_or_else(|e| panic!("acknowledged point {i} lost: {e}"));
        assert_eq!(p.payload.unwrap()["i"], i);
        let hits = c.search(&SearchRequest::new(vector_of(i), 1)).unwrap();
        assert_eq!(
            hits[0].id,
            PointId::Num(i),
            "acknowledged point {i} not found by its own vector"
        );
    }
    // And the recovered collection takes writes again.
    c.upsert(vec![Point {
        id: PointId::Num(u64::MAX),
        vector: vector_of(1),
        payload: None,
    }])
    .unwrap();
}
