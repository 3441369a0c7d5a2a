//! Fused element-wise kernels for the BERT forward pass, as candle custom ops.
//!
//! candle runs its own element-wise ops on a global spinning thread pool sized by
//! the number of cores, outside any pool we install. These kernels replace every
//! element-wise op of the forward pass (bias, activation, residual, layer norm),
//! fusing them to save passes over memory, and split rows with rayon in the
//! *current* pool: the compute pool's bound holds for the whole forward pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape};
use rayon::prelude::*;

/// Rows handed to one rayon task at least.
const MIN_ROWS_PER_TASK: usize = 32;

/// Activation of the feed-forward layer (or none, for a plain bias add).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Identity,
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    #[inline(always)]
    fn f(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::GeluErf => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
            Activation::GeluTanh => {
                let c = (2.0 / std::f32::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044_715 * x * x * x)).tanh())
            }
            Activation::Relu => x.max(0.0),
        }
    }
}

/// erf without calls (Abramowitz & Stegun 7.1.28, |error| <= 3e-7), so the loop
/// over a row auto-vectorizes; libm's `erff` took a tenth of the forward pass.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let p = 1.0
        + a * (0.070_523_08
            + a * (0.042_282_01
                + a * (0.009_270_527
                    + a * (0.000_152_014_3 + a * (0.000_276_567_2 + a * 0.000_043_063_8)))));
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    let p16 = p8 * p8;
    (1.0 - 1.0 / p16).copysign(x)
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused kernel needs a contiguous input".into()))?;
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// `act(x + bias)` over the rows of a contiguous `(rows, n)` f32 matrix.
pub(crate) struct BiasAct {
    pub bias: Vec<f32>,
    pub act: Activation,
}

impl BiasAct {
    fn row(&self, out: &mut [f32], x: &[f32]) {
        // One loop per activation so each monomorphizes and vectorizes.
        macro_rules! apply {
            ($act:expr) => {
                for ((o, x), b) in out.iter_mut().zip(x).zip(&self.bias) {
                    *o = $act.f(x + b);
                }
            };
        }
        match self.act {
            Activation::Identity => apply!(Activation::Identity),
            Activation::GeluErf => apply!(Activation::GeluErf),
            Activation::GeluTanh => apply!(Activation::GeluTanh),
            Activation::Relu => apply!(Activation::Relu),
        }
    }
}

impl CustomOp1 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = contiguous(s, l)?;
        let n = self.bias.len();
        if n == 0 || xs.len() % n != 0 {
            candle_core::bail!("bias of {n} does not divide {:?}", l.shape());
        }
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(n)
            .zip(xs.par_chunks(n))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(o, x)| self.row(o, x));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `LayerNorm(x + residual + bias)` over the rows of two contiguous `(rows, n)`
/// matrices (the post-norm residual block of BERT; with no bias, the embeddings).
pub(crate) struct AddNorm {
    pub bias: Option<Vec<f32>>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f32,
}

impl AddNorm {
    fn row(&self, out: &mut [f32], x: &[f32], r: &[f32]) {
        match &self.bias {
            Some(b) => {
                for (((o, x), r), b) in out.iter_mut().zip(x).zip(r).zip(b) {
                    *o = x + r + b;
                }
            }
            None => {
                for ((o, x), r) in out.iter_mut().zip(x).zip(r) {
                    *o = x + r;
                }
            }
        }
        let n = out.len() as f32;
        let mean = out.iter().sum::<f32>() / n;
        let var = out.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + self.eps).sqrt();
        for ((o, g), b) in out.iter_mut().zip(&self.gamma).zip(&self.beta) {
            *o = (*o - mean) * inv * g + b;
        }
    }
}

impl CustomOp2 for AddNorm {
    fn name(&self) -> &'static str {
        "add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = contiguous(s1, l1)?;
        let rs = contiguous(s2, l2)?;
        let n = self.gamma.len();
        if n == 0 || xs.len() != rs.len() || xs.len() % n != 0 {
            candle_core::bail!("add-layer-norm shapes {:?} {:?}", l1.shape(), l2.shape());
        }
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(n)
            .zip(xs.par_chunks(n).zip(rs.par_chunks(n)))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(o, (x, r))| self.row(o, x, r));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_accurate() {
        // Reference values of erf.
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.1, 0.112_462_916),
            (0.5, 0.520_499_878),
            (1.0, 0.842_700_793),
            (-1.5, -0.966_105_146),
            (2.5, 0.999_593_048),
            (-4.0, -0.999_999_985),
        ] {
            assert!(
                (erf(x) as f64 - want).abs() < 1e-6,
                "erf({x}) = {} want {want}",
                erf(x)
            );
        }
    }
}
