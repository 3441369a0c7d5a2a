//! Live per-provider statistics that feed the strategies: EWMA latency,
//! requests in flight and a recent error rate. Lock-free.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Weight of the newest sample in the moving averages.
const ALPHA: f64 = 0.3;

/// Live statistics of one provider.
#[derive(Debug, Default)]
pub struct ProviderStats {
    in_flight: AtomicU32,
    /// EWMA latency in seconds, as f64 bits; 0 = no sample yet.
    latency: AtomicU64,
    /// EWMA of failures (1.0) and successes (0.0), as f64 bits.
    error_rate: AtomicU64,
}

impl ProviderStats {
    /// Requests being served by the provider now (streams included).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Moving average of the time to first byte; `None` before any sample.
    pub fn latency(&self) -> Option<Duration> {
        let v = f64::from_bits(self.latency.load(Ordering::Relaxed));
        (v > 0.0).then(|| Duration::from_secs_f64(v))
    }

    /// Moving average of the failure rate, 0.0 to 1.0.
    pub fn error_rate(&self) -> f64 {
        f64::from_bits(self.error_rate.load(Ordering::Relaxed))
    }

    /// Adds a latency sample.
    pub fn record_latency(&self, d: Duration) {
        let sample = d.as_secs_f64().max(1e-9);
        update(&self.latency, |old| {
            if old <= 0.0 {
                sample
            } else {
                old + ALPHA * (sample - old)
            }
        });
    }

    /// Adds an outcome sample.
    pub fn record_outcome(&self, ok: bool) {
        let sample = if ok { 0.0 } else { 1.0 };
        update(&self.error_rate, |old| old + ALPHA * (sample - old));
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            stats: self.clone(),
        }
    }
}

fn update(cell: &AtomicU64, f: impl Fn(f64) -> f64) {
    let mut cur = cell.load(Ordering::Relaxed);
    loop {
        let new = f(f64::from_bits(cur)).to_bits();
        match cell.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// Decrements the in-flight count when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    stats: Arc<ProviderStats>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_moves_towards_samples() {
        let s = ProviderStats::default();
        assert_eq!(s.latency(), None);
        s.record_latency(Duration::from_millis(100));
        assert_eq!(s.latency(), Some(Duration::from_millis(100)));
        s.record_latency(Duration::from_millis(200));
        let l = s.latency().unwrap().as_secs_f64();
        assert!((l - 0.13).abs() < 1e-6, "{l}");
        s.record_outcome(false);
        assert!((s.error_rate() - 0.3).abs() < 1e-9);
        s.record_outcome(true);
        assert!((s.error_rate() - 0.21).abs() < 1e-9);
    }

    #[test]
    fn guard_counts_in_flight() {
        let s = Arc::new(ProviderStats::default());
        let a = s.enter();
        let b = s.enter();
        assert_eq!(s.in_flight(), 2);
        drop(a);
        assert_eq!(s.in_flight(), 1);
        drop(b);
        assert_eq!(s.in_flight(), 0);
    }
}
