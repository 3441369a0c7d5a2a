//! Shared by the black-box tests: a `uat serve` child listens on port 0 and
//! logs the address it bound, which the test reads back. (Picking a free port
//! by binding and dropping a listener is a race: a test running beside it can
//! take the port before the child binds it.)

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Child;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The child's stderr so far (read on a thread, and echoed to this
/// process's stderr).
pub type Log = Arc<Mutex<String>>;

/// Reads the child's (piped) stderr until it logs `uat is listening` (start-up
/// done) and returns that address and the log, which keeps filling while the
/// child runs. Panics, with the log, when the child exits first or has not
/// listened within `max`.
pub fn listening_addr(child: &mut Child, max: Duration) -> (SocketAddr, Log) {
    logged_addr(child, "uat is listening", max)
}

/// [`listening_addr`] for the first line containing `message` with an
/// `addr=` field (`port bound` comes as soon as the port is, before the
/// subsystems start).
pub fn logged_addr(child: &mut Child, message: &'static str, max: Duration) -> (SocketAddr, Log) {
    let stderr = child.stderr.take().expect("the child's stderr is piped");
    let log = Log::default();
    let (tx, rx) = mpsc::channel();
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Ok(mut l) = kept.lock() {
                l.push_str(&line);
                l.push('\n');
            }
            if line.contains(message)
                && let Some(addr) = addr_in(&line)
            {
                let _ = tx.send(addr);
            }
        }
    });
    let started = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(addr) => return (addr, log),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                panic!(
                    "uat serve closed stderr before `{message}`:\n{}",
                    text(&log)
                )
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("uat serve exited early with {status}:\n{}", text(&log));
        }
        assert!(
            started.elapsed() < max,
            "uat serve did not log `{message}` within {max:?}:\n{}",
            text(&log)
        );
    }
}

/// What the child has written to stderr so far.
pub fn text(log: &Log) -> String {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

/// The `addr=` field of a text log line.
fn addr_in(line: &str) -> Option<SocketAddr> {
    let at = line.find("addr=")? + "addr=".len();
    line[at..].split_whitespace().next()?.parse().ok()
}
