use super::{Candidate, Strategy};

/// Lowest `priority` first; ties keep their configured order.
#[derive(Debug, Default)]
pub struct Priority;

impl Strategy for Priority {
    fn order(&self, c: &mut [Candidate]) {
        c.sort_by_key(|c| c.priority);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{cand, indices};
    use super::*;

    #[test]
    fn lowest_priority_first_stable() {
        let mut c = vec![
            cand(0, 5, 1, None, 0, 0.0),
            cand(1, -1, 1, None, 0, 0.0),
            cand(2, 5, 1, None, 0, 0.0),
        ];
        Priority.order(&mut c);
        assert_eq!(indices(&c), vec![1, 0, 2]);
    }
}
