use super::{Candidate, Strategy};

/// Random order, each next candidate drawn with probability proportional to
/// its `weight` (weight 0 goes last).
#[derive(Debug, Default)]
pub struct Weighted;

impl Strategy for Weighted {
    fn order(&self, c: &mut [Candidate]) {
        let mut rng = rand::rng();
        weighted_shuffle(c, || rand::Rng::random::<f64>(&mut rng));
    }
}

fn weighted_shuffle(c: &mut [Candidate], mut uniform: impl FnMut() -> f64) {
    for i in 0..c.len() {
        let total: u64 = c[i..].iter().map(|c| u64::from(c.weight)).sum();
        if total == 0 {
            return;
        }
        let mut r = uniform() * total as f64;
        let mut pick = c.len() - 1;
        for (j, cand) in c.iter().enumerate().skip(i) {
            let w = f64::from(cand.weight);
            if r < w {
                pick = j;
                break;
            }
            r -= w;
        }
        c.swap(i, pick);
    }
}

#[cfg(test)]
mod tests {
    use super::super::cand;
    use super::*;

    #[test]
    fn first_choice_follows_weights() {
        let base = vec![
            cand(0, 0, 1, None, 0, 0.0),
            cand(1, 0, 3, None, 0, 0.0),
            cand(2, 0, 0, None, 0, 0.0),
        ];
        let mut counts = [0usize; 3];
        let n = 20_000;
        for _ in 0..n {
            let mut c = base.clone();
            Weighted.order(&mut c);
            counts[c[0].index] += 1;
            assert_eq!(c[2].index, 2, "weight 0 is always last");
        }
        let share = counts[1] as f64 / n as f64;
        assert!(
            (share - 0.75).abs() < 0.03,
            "share of weight 3 out of 4: {share}"
        );
        assert_eq!(counts[2], 0);
    }

    #[test]
    fn deterministic_draws() {
        let mut c = vec![cand(0, 0, 1, None, 0, 0.0), cand(1, 0, 1, None, 0, 0.0)];
        weighted_shuffle(&mut c, || 0.9);
        assert_eq!(c[0].index, 1);
    }
}
