//! Quantization for the graph walk: scalar int8 (SQ8) with one range per
//! collection, and binary (one bit per dimension). Results are always
//! rescored against the full f32 vectors.

use crate::distance::{Metric, dot_i8, hamming, l2sq_i8};
use serde::{Deserialize, Serialize};

/// Trained parameters of a quantizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Quantizer {
    /// `x ≈ offset + scale * c`, `c` in `[-127, 127]`.
    Sq8 { offset: f32, scale: f32 },
    /// Bit `d` is set when `x[d] > center[d]`.
    Binary { center: Vec<f32> },
}

/// The code of one vector.
#[derive(Debug, Clone)]
pub(crate) enum Code {
    /// Not quantized.
    None,
    /// SQ8 codes and `offset * scale * sum(codes)` (the per-vector dot correction).
    Sq8 { codes: Box<[i8]>, corr: f32 },
    /// Packed sign bits.
    Binary(Box<[u64]>),
    /// A query against binary codes, kept in f32 (asymmetric distance): for
    /// each byte of a code, a 256-entry table of the sum of the centered query
    /// components whose bits are set, so a distance is one lookup per byte.
    BinaryQuery(Box<[f32]>),
}

impl Code {
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::None => 0,
            Self::Sq8 { codes, .. } => codes.len() + 4,
            Self::Binary(b) => b.len() * 8,
            Self::BinaryQuery(q) => q.len() * 4,
        }
    }
}

impl Quantizer {
    /// Trains SQ8 on sample vectors: the range covers the 0.05%..99.95% quantiles.
    pub(crate) fn train_sq8<'a>(samples: impl Iterator<Item = &'a [f32]>) -> Self {
        let mut vals: Vec<f32> = Vec::new();
        for v in samples {
            vals.extend_from_slice(v);
            if vals.len() > 4_000_000 {
                break;
            }
        }
        if vals.is_empty() {
            return Self::Sq8 {
                offset: 0.0,
                scale: 1.0 / 127.0,
            };
        }
        vals.sort_unstable_by(f32::total_cmp);
        let q = |p: f64| vals[((vals.len() - 1) as f64 * p).round() as usize];
        let (lo, hi) = (q(0.0005), q(0.9995));
        let half = ((hi - lo) / 2.0).max(1e-6);
        Self::Sq8 {
            offset: (hi + lo) / 2.0,
            scale: half / 127.0,
        }
    }

    /// Trains binary quantization: the center is the per-dimension mean.
    pub(crate) fn train_binary<'a>(samples: impl Iterator<Item = &'a [f32]>, dim: usize) -> Self {
        let mut sum = vec![0f64; dim];
        let mut n = 0usize;
        for v in samples {
            for (s, x) in sum.iter_mut().zip(v) {
                *s += f64::from(*x);
            }
            n += 1;
        }
        let center = sum
            .iter()
            .map(|s| if n == 0 { 0.0 } else { (s / n as f64) as f32 })
            .collect();
        Self::Binary { center }
    }

    /// Encodes a vector.
    pub(crate) fn encode(&self, v: &[f32]) -> Code {
        match self {
            Self::Sq8 { offset, scale } => {
                let codes: Box<[i8]> = v
                    .iter()
                    .map(|x| ((x - offset) / scale).round().clamp(-127.0, 127.0) as i8)
                    .collect();
                let sum: i64 = codes.iter().map(|c| i64::from(*c)).sum();
                Code::Sq8 {
                    corr: offset * scale * sum as f32,
                    codes,
                }
            }
            Self::Binary { center } => {
                let mut bits = vec![0u64; v.len().div_ceil(64)];
                for (d, (x, c)) in v.iter().zip(center).enumerate() {
                    if x > c {
                        bits[d / 64] |= 1 << (d % 64);
                    }
                }
                Code::Binary(bits.into_boxed_slice())
            }
        }
    }

    /// Encodes a query: like [`Quantizer::encode`] for SQ8; for binary the
    /// centered f32 query, scored asymmetrically against the bits.
    pub(crate) fn encode_query(&self, v: &[f32]) -> Code {
        match self {
            Self::Sq8 { .. } => self.encode(v),
            Self::Binary { center } => {
                let qc: Vec<f32> = v.iter().zip(center).map(|(x, c)| x - c).collect();
                let nbytes = qc.len().div_ceil(64) * 8;
                let mut lut = vec![0f32; nbytes * 256];
                for (j, table) in lut.chunks_exact_mut(256).enumerate() {
                    for b in 1..256usize {
                        let low = b.trailing_zeros() as usize;
                        let x = qc.get(j * 8 + low).copied().unwrap_or(0.0);
                        table[b] = table[b & (b - 1)] + x;
                    }
                }
                Code::BinaryQuery(lut.into_boxed_slice())
            }
        }
    }

    /// Approximate distance between a query code and a point code, monotone
    /// in the true distance up to quantization error.
    #[inline]
    pub(crate) fn distance(&self, metric: Metric, q: &Code, x: &Code) -> f32 {
        match (self, q, x) {
            (
                Self::Sq8 { scale, .. },
                Code::Sq8 { codes: qc, .. },
                Code::Sq8 { codes: xc, corr },
            ) => match metric {
                Metric::L2 => scale * scale * l2sq_i8(qc, xc),
                Metric::Cosine | Metric::Dot => -(scale * scale * dot_i8(qc, xc) + corr),
            },
            (Self::Binary { .. }, Code::Binary(a), Code::Binary(b)) => hamming(a, b) as f32,
            (Self::Binary { .. }, Code::BinaryQuery(lut), Code::Binary(bits)) => {
                -lut_sum(lut, bits)
            }
            _ => f32::INFINITY,
        }
    }
}

/// `sum(q[d] for set bits d)`, which orders points like the query's dot
/// product with their sign vectors (`2 * this - sum(q)`).
#[inline]
fn lut_sum(lut: &[f32], bits: &[u64]) -> f32 {
    let mut sum = 0.0f32;
    let mut tables = lut.chunks_exact(256);
    for w in bits {
        for byte in w.to_le_bytes() {
            if let Some(t) = tables.next() {
                sum += t[byte as usize];
            }
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::normalize;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn sq8_distance_tracks_exact_dot_and_l2() {
        let mut rng = StdRng::seed_from_u64(3);
        let vs: Vec<Vec<f32>> = (0..200)
            .map(|_| {
                let mut v: Vec<f32> = (0..64).map(|_| rng.random_range(-1.0..1.0)).collect();
                normalize(&mut v);
                v
            })
            .collect();
        let q = Quantizer::train_sq8(vs.iter().map(|v| v.as_slice()));
        for m in [Metric::Dot, Metric::L2] {
            let (a, b) = (&vs[0], &vs[1]);
            let exact = m.distance(a, b);
            let approx = q.distance(m, &q.encode(a), &q.encode(b));
            // The dot approximation drops the terms constant in x; compare orderings instead.
            let mut pairs: Vec<(f32, f32)> = vs[1..]
                .iter()
                .map(|b| (m.distance(a, b), q.distance(m, &q.encode(a), &q.encode(b))))
                .collect();
            pairs.sort_by(|x, y| x.0.total_cmp(&y.0));
            let best_approx = pairs.iter().map(|p| p.1).fold(f32::INFINITY, f32::min);
            assert!(
                pairs[..5].iter().any(|p| p.1 == best_approx),
                "{m:?}: nearest not preserved"
            );
            assert!(exact.is_finite() && approx.is_finite());
        }
    }

    #[test]
    fn binary_lookup_table_equals_the_signed_dot_product() {
        let mut rng = StdRng::seed_from_u64(5);
        let dim = 100;
        let vs: Vec<Vec<f32>> = (0..50)
            .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let q = Quantizer::train_binary(vs.iter().map(|v| v.as_slice()), dim);
        let Quantizer::Binary { center } = &q else {
            panic!("binary")
        };
        let query = &vs[0];
        let qc: Vec<f32> = query.iter().zip(center).map(|(x, c)| x - c).collect();
        let qcode = q.encode_query(query);
        for v in &vs[1..] {
            let code = q.encode(v);
            let Code::Binary(bits) = &code else {
                panic!("binary")
            };
            let signed: f32 = (0..dim)
                .map(|d| {
                    if bits[d / 64] >> (d % 64) & 1 == 1 {
                        qc[d]
                    } else {
                        -qc[d]
                    }
                })
                .sum();
            let want = -(signed + qc.iter().sum::<f32>()) / 2.0;
            let got = q.distance(Metric::Dot, &qcode, &code);
            assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        }
    }

    #[test]
    fn binary_codes_have_one_bit_per_dimension() {
        let q = Quantizer::Binary {
            center: vec![0.0; 70],
        };
        let mut v = vec![-1.0f32; 70];
        v[0] = 1.0;
        v[69] = 1.0;
        match q.encode(&v) {
            Code::Binary(b) => {
                assert_eq!(b.len(), 2);
                assert_eq!(b[0], 1);
                assert_eq!(b[1], 1 << 5);
            }
            other => panic!("{other:?}"),
        }
    }
}
