//! The query planner for filtered search.
//!
//! An exact scan costs one distance per matching point. A graph walk that
//! checks the filter as it goes must expand about `ef / selectivity` nodes,
//! each costing `m0` distances. The planner picks the cheaper, so small
//! matching sets are scanned exactly (perfect recall, and fast because they
//! are small) and large ones are walked.

use serde::Serialize;

/// How a filtered search is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// Brute force over just the points that pass the filter.
    Exact,
    /// HNSW walk that admits only passing points into the results.
    Walk,
}

/// Picks a plan from the estimated number of matching points, the number of
/// live points, the search's `ef` and the graph's level-0 degree `m0`.
pub fn choose_plan(estimated: usize, live: usize, ef: usize, m0: usize) -> Plan {
    if estimated == 0 || estimated <= ef {
        return Plan::Exact;
    }
    let exact_cost = estimated as f64;
    let selectivity = estimated as f64 / live.max(1) as f64;
    let walk_cost = (ef * m0) as f64 / selectivity.min(1.0);
    if exact_cost <= walk_cost {
        Plan::Exact
    } else {
        Plan::Walk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planner_scans_small_sets_and_walks_large_ones() {
        let live = 50_000;
        // 0.1%, 1%, 10% of 50k with ef 64, m0 32 -> exact; 65% and 100% -> walk.
        assert_eq!(choose_plan(50, live, 64, 32), Plan::Exact);
        assert_eq!(choose_plan(500, live, 64, 32), Plan::Exact);
        assert_eq!(choose_plan(5_000, live, 64, 32), Plan::Exact);
        assert_eq!(choose_plan(32_500, live, 64, 32), Plan::Walk);
        assert_eq!(choose_plan(50_000, live, 64, 32), Plan::Walk);
        // In a million points, 10% is too many to scan.
        assert_eq!(choose_plan(100_000, 1_000_000, 64, 32), Plan::Walk);
        assert_eq!(choose_plan(0, live, 64, 32), Plan::Exact);
    }
}
