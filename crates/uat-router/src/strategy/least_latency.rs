use super::{Candidate, Strategy};

/// Lowest EWMA latency first, penalised by the recent error rate (each
/// 10 % of failures weighs like 100 ms); a healthy provider without a
/// sample yet goes first so it gets measured. Ties keep priority order.
#[derive(Debug, Default)]
pub struct LeastLatency;

fn score(c: &Candidate) -> f64 {
    let l = c.latency.map_or(0.0, |d| d.as_secs_f64());
    l * (1.0 + 4.0 * c.error_rate) + c.error_rate
}

impl Strategy for LeastLatency {
    fn order(&self, c: &mut [Candidate]) {
        c.sort_by(|a, b| {
            score(a)
                .total_cmp(&score(b))
                .then(a.priority.cmp(&b.priority))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::{cand, indices};
    use super::*;

    #[test]
    fn fastest_first_unmeasured_before_all() {
        let mut c = vec![
            cand(0, 0, 1, Some(50), 0, 0.0),
            cand(1, 0, 1, Some(10), 0, 0.0),
            cand(2, 0, 1, None, 0, 0.0),
            cand(3, 0, 1, Some(20), 0, 0.0),
        ];
        LeastLatency.order(&mut c);
        assert_eq!(indices(&c), vec![2, 1, 3, 0]);
    }

    #[test]
    fn unmeasured_but_failing_goes_after_healthy() {
        let mut c = vec![cand(0, 0, 1, None, 0, 0.5), cand(1, 0, 1, Some(80), 0, 0.0)];
        LeastLatency.order(&mut c);
        assert_eq!(indices(&c), vec![1, 0]);
    }

    #[test]
    fn errors_penalise() {
        let mut c = vec![
            cand(0, 0, 1, Some(10), 0, 0.9),
            cand(1, 0, 1, Some(30), 0, 0.0),
        ];
        LeastLatency.order(&mut c);
        assert_eq!(indices(&c), vec![1, 0]);
    }
}
