//! A circuit breaker per provider: closed until N consecutive failures, then
//! open for a cooldown, then half-open with a single probe whose outcome
//! closes or re-opens it. The lock is held for a few instructions, never
//! across an `.await`.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// The externally visible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the cooldown ends.
    Open,
    /// One probe request is allowed through.
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// A circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// What [`Breaker::acquire`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// A normal request.
    Normal,
    /// The single half-open probe: report its outcome, or [`Breaker::abandon`] it.
    Probe,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// The current state (an open breaker past its cooldown reads half-open).
    pub fn state(&self) -> BreakerState {
        match &*self.state.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() >= *until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to send a request; `None` when the breaker refuses.
    pub fn acquire(&self) -> Option<Permit> {
        let mut s = self.state.lock();
        match &mut *s {
            State::Closed { .. } => Some(Permit::Normal),
            State::Open { until } => {
                if Instant::now() >= *until {
                    *s = State::HalfOpen { probing: true };
                    Some(Permit::Probe)
                } else {
                    None
                }
            }
            State::HalfOpen { probing } => {
                if *probing {
                    None
                } else {
                    *probing = true;
                    Some(Permit::Probe)
                }
            }
        }
    }

    /// Reports a success: the breaker closes. Returns true when it was not closed.
    pub fn success(&self) -> bool {
        let mut s = self.state.lock();
        let was_closed = matches!(*s, State::Closed { .. });
        *s = State::Closed { failures: 0 };
        !was_closed
    }

    /// Reports a failure. Returns true when this failure opened the breaker.
    pub fn failure(&self) -> bool {
        let mut s = self.state.lock();
        match &mut *s {
            State::Closed { failures } => {
                *failures += 1;
                if *failures >= self.threshold {
                    *s = State::Open {
                        until: Instant::now() + self.cooldown,
                    };
                    true
                } else {
                    false
                }
            }
            State::HalfOpen { .. } => {
                *s = State::Open {
                    until: Instant::now() + self.cooldown,
                };
                true
            }
            State::Open { .. } => false,
        }
    }

    /// A probe ended without an outcome (cancelled): allow another probe.
    pub fn abandon(&self, permit: Permit) {
        if permit == Permit::Probe {
            let mut s = self.state.lock();
            if let State::HalfOpen { probing } = &mut *s {
                *probing = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            assert_eq!(b.acquire(), Some(Permit::Normal));
            assert!(!b.failure());
        }
        assert!(b.failure(), "third consecutive failure opens");
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.acquire(), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.acquire(), Some(Permit::Probe));
        assert_eq!(b.acquire(), None, "only one probe at a time");
        assert!(b.failure(), "failed probe re-opens");
        assert_eq!(b.acquire(), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.acquire(), Some(Permit::Probe));
        assert!(b.success());
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.acquire(), Some(Permit::Normal));
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(60));
        b.failure();
        b.success();
        assert!(!b.failure());
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn abandoned_probe_allows_another() {
        let b = Breaker::new(1, Duration::ZERO);
        b.failure();
        let p = b.acquire();
        assert_eq!(p, Some(Permit::Probe));
        assert_eq!(b.acquire(), None);
        b.abandon(Permit::Probe);
        assert_eq!(b.acquire(), Some(Permit::Probe));
    }
}
