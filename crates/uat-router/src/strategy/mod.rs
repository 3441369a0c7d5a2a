//! Routing strategies: each orders the candidate providers for one request,
//! first to try first. They read live statistics and never block.

mod least_busy;
mod least_latency;
mod priority;
mod round_robin;
mod weighted;

pub use least_busy::LeastBusy;
pub use least_latency::LeastLatency;
pub use priority::Priority;
pub use round_robin::RoundRobin;
pub use weighted::Weighted;

use std::time::Duration;
use uat_config::RoutingStrategy;

/// What a strategy knows about one candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Position in the resolved target list (opaque to the strategy).
    pub index: usize,
    /// Configured priority (lower first).
    pub priority: i32,
    /// Configured weight.
    pub weight: u32,
    /// EWMA time to first byte; `None` before the first sample.
    pub latency: Option<Duration>,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Recent failure rate, 0.0 to 1.0.
    pub error_rate: f64,
}

/// Orders candidates, first to try first.
pub trait Strategy: Send + Sync {
    /// Reorders `candidates` in place.
    fn order(&self, candidates: &mut [Candidate]);
}

/// The strategy for a configuration value.
pub fn from_config(s: RoutingStrategy) -> Box<dyn Strategy> {
    match s {
        RoutingStrategy::Priority => Box::new(Priority),
        RoutingStrategy::RoundRobin => Box::new(RoundRobin::default()),
        RoutingStrategy::Weighted => Box::new(Weighted),
        RoutingStrategy::LeastLatency => Box::new(LeastLatency),
        RoutingStrategy::LeastBusy => Box::new(LeastBusy),
    }
}

#[cfg(test)]
pub(crate) fn cand(
    index: usize,
    priority: i32,
    weight: u32,
    latency_ms: Option<u64>,
    in_flight: u32,
    error_rate: f64,
) -> Candidate {
    Candidate {
        index,
        priority,
        weight,
        latency: latency_ms.map(Duration::from_millis),
        in_flight,
        error_rate,
    }
}

#[cfg(test)]
pub(crate) fn indices(c: &[Candidate]) -> Vec<usize> {
    c.iter().map(|c| c.index).collect()
}
