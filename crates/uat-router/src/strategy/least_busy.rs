use super::{Candidate, Strategy};

/// Fewest requests in flight first; ties keep priority order.
#[derive(Debug, Default)]
pub struct LeastBusy;

impl Strategy for LeastBusy {
    fn order(&self, c: &mut [Candidate]) {
        c.sort_by_key(|c| (c.in_flight, c.priority));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{cand, indices};
    use super::*;

    #[test]
    fn idlest_first() {
        let mut c = vec![
            cand(0, 0, 1, None, 3, 0.0),
            cand(1, 1, 1, None, 0, 0.0),
            cand(2, 0, 1, None, 0, 0.0),
        ];
        LeastBusy.order(&mut c);
        assert_eq!(indices(&c), vec![2, 1, 0]);
    }
}
