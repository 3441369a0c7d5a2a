//! Distance kernels: SIMD through `simsimd` (runtime dispatch to AVX2 /
//! AVX-512 / NEON) and a scalar reference that the tests compare against.
//!
//! Internally every metric is a *distance* (smaller is closer):
//! cosine and dot use `-dot(a, b)` (cosine vectors are normalized on insert),
//! L2 uses the squared Euclidean distance.

use serde::{Deserialize, Serialize};
use simsimd::SpatialSimilarity;

/// The similarity a collection is searched by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity; vectors are normalized on insert. Score = cosine (higher is better).
    Cosine,
    /// Inner product. Score = dot product (higher is better).
    Dot,
    /// Euclidean distance. Score = distance (lower is better).
    #[serde(alias = "euclid", alias = "euclidean")]
    L2,
}

impl std::str::FromStr for Metric {
    type Err = crate::VectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" => Ok(Self::Cosine),
            "dot" => Ok(Self::Dot),
            "l2" | "euclid" | "euclidean" => Ok(Self::L2),
            _ => Err(crate::VectorError::UnknownMetric(s.to_owned())),
        }
    }
}

impl Metric {
    /// Distance between two (already prepared) vectors with the SIMD kernel.
    #[inline]
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Self::Cosine | Self::Dot => -dot(a, b),
            Self::L2 => l2sq(a, b),
        }
    }

    /// Distance with the scalar reference kernel.
    pub fn distance_scalar(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Self::Cosine | Self::Dot => -dot_scalar(a, b),
            Self::L2 => l2sq_scalar(a, b),
        }
    }

    /// Turns an internal distance into the user-facing score.
    #[inline]
    pub fn score(self, distance: f32) -> f32 {
        match self {
            Self::Cosine | Self::Dot => -distance,
            Self::L2 => distance.max(0.0).sqrt(),
        }
    }

    /// Name as accepted by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::Dot => "dot",
            Self::L2 => "l2",
        }
    }
}

/// Dot product (SIMD).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    match f32::dot(a, b) {
        Some(d) => d as f32,
        None => dot_scalar(a, b),
    }
}

/// Squared Euclidean distance (SIMD).
#[inline]
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    match f32::l2sq(a, b) {
        Some(d) => d as f32,
        None => l2sq_scalar(a, b),
    }
}

/// Dot product of int8 codes (SIMD).
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> f32 {
    match i8::dot(a, b) {
        Some(d) => d as f32,
        None => dot_i8_scalar(a, b),
    }
}

/// Squared Euclidean distance of int8 codes (SIMD).
#[inline]
pub fn l2sq_i8(a: &[i8], b: &[i8]) -> f32 {
    match i8::l2sq(a, b) {
        Some(d) => d as f32,
        None => l2sq_i8_scalar(a, b),
    }
}

/// Hamming distance of bit-packed codes.
#[inline]
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// Scalar reference dot product (f64 accumulator).
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum::<f64>() as f32
}

/// Scalar reference squared Euclidean distance (f64 accumulator).
pub fn l2sq_scalar(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum::<f64>() as f32
}

/// Scalar reference int8 dot product.
pub fn dot_i8_scalar(a: &[i8], b: &[i8]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| i64::from(*x) * i64::from(*y))
        .sum::<i64>() as f32
}

/// Scalar reference int8 squared Euclidean distance.
pub fn l2sq_i8_scalar(a: &[i8], b: &[i8]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = i64::from(*x) - i64::from(*y);
            d * d
        })
        .sum::<i64>() as f32
}

/// Normalizes in place to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let n = dot_scalar(v, v).sqrt();
    if n > 0.0 {
        for x in v.iter_mut() {
            *x /= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn rel_close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn simd_kernels_match_scalar_reference() {
        let mut rng = StdRng::seed_from_u64(7);
        for dim in [1usize, 3, 7, 8, 15, 16, 31, 64, 100, 384, 768, 1023] {
            for _ in 0..20 {
                let a: Vec<f32> = (0..dim).map(|_| rng.random_range(-2.0..2.0)).collect();
                let b: Vec<f32> = (0..dim).map(|_| rng.random_range(-2.0..2.0)).collect();
                assert!(
                    rel_close(dot(&a, &b), dot_scalar(&a, &b), 1e-4),
                    "dot dim {dim}"
                );
                assert!(
                    rel_close(l2sq(&a, &b), l2sq_scalar(&a, &b), 1e-4),
                    "l2 dim {dim}"
                );
                for m in [Metric::Cosine, Metric::Dot, Metric::L2] {
                    assert!(rel_close(
                        m.distance(&a, &b),
                        m.distance_scalar(&a, &b),
                        1e-4
                    ));
                }
                let ai: Vec<i8> = (0..dim).map(|_| rng.random_range(-127..=127)).collect();
                let bi: Vec<i8> = (0..dim).map(|_| rng.random_range(-127..=127)).collect();
                assert_eq!(
                    dot_i8(&ai, &bi),
                    dot_i8_scalar(&ai, &bi),
                    "dot_i8 dim {dim}"
                );
                assert_eq!(
                    l2sq_i8(&ai, &bi),
                    l2sq_i8_scalar(&ai, &bi),
                    "l2_i8 dim {dim}"
                );
            }
        }
    }

    #[test]
    fn dot_of_unit_vectors_near_one_does_not_misbehave() {
        // hnsw_rs panicked on a dot product of 1.0000001; ours must just work.
        let mut v = vec![0.1f32; 384];
        normalize(&mut v);
        let d = Metric::Cosine.distance(&v, &v);
        assert!((d + 1.0).abs() < 1e-5);
        assert!(Metric::Cosine.score(d) > 0.9999);
    }

    #[test]
    fn metric_parses_and_rejects_unknown() {
        assert_eq!("COSINE".parse::<Metric>().ok(), Some(Metric::Cosine));
        assert_eq!("l2".parse::<Metric>().ok(), Some(Metric::L2));
        assert!(matches!(
            "manhattan".parse::<Metric>(),
            Err(crate::VectorError::UnknownMetric(_))
        ));
        let m: Result<Metric, _> = serde_json::from_str("\"hamming\"");
        assert!(m.is_err());
    }
}
