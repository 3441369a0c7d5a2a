use super::{Candidate, Strategy};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Rotates the starting candidate on every request.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Strategy for RoundRobin {
    fn order(&self, c: &mut [Candidate]) {
        if c.len() > 1 {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            c.rotate_left(n % c.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{cand, indices};
    use super::*;

    #[test]
    fn rotates() {
        let rr = RoundRobin::default();
        let base = vec![
            cand(0, 0, 1, None, 0, 0.0),
            cand(1, 0, 1, None, 0, 0.0),
            cand(2, 0, 1, None, 0, 0.0),
        ];
        let mut firsts = Vec::new();
        for _ in 0..6 {
            let mut c = base.clone();
            rr.order(&mut c);
            firsts.push(c[0].index);
        }
        assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2]);
        let mut c = base.clone();
        rr.order(&mut c);
        assert_eq!(indices(&c), vec![0, 1, 2]);
    }
}
