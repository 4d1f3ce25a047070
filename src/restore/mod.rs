//! Reconstruction with a trained PRDiT as the prior (TF-PRDiT's tasks, no retraining):
//! sparse-view X-rays, super-resolution, infilling and deblurring from a linear measurement
//! `y = A·x`.
//!
//! - [`guided`]: TF-PRDiT's guided predictor–corrector step as its code has it (spec §13.1;
//!   parity with their code: `tests/restore.rs`): the gradient of `‖A·x̂₀ − y‖` with respect to
//!   the image prediction (not through the network), `Aᵀr/‖r‖`, scaled by ρ·w(t) and subtracted
//!   from the predictor (taken only on corrector steps); the corrector re-noises with weight
//!   λ_n; infilling then writes the measured voxels into x̂₀ (after the gradient is taken).
//! - [`Consistent`]: the few-step alternative (DDS): any sampler's image prediction made
//!   consistent with `y` before the step — an exact projection where `A·Aᵀ` is a multiple of the
//!   identity (the mask; downsampling too, but `prdit restore` back-projects there, which
//!   measured better), conjugate-gradient steps otherwise (the blur).
//!
//! Sparse-view X-rays: [`xray`] (DiffDRR's Siddon projector as TF-PRDiT sets it up).

pub mod job;
pub mod ops;
pub mod xray;

use burn::tensor::Tensor;

pub use ops::Operator;

use crate::denoiser::Denoiser;
use crate::diffusion::{NoiseSource, angle, time_grid};
use crate::error::{Error, Result};

/// The settings of TF-PRDiT's guided sampler for one task (its samplers' code defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    /// Predictor–corrector jump.
    pub k: usize,
    /// Guidance scale ρ.
    pub rho: f64,
    /// Weight w(t) = sin²φ (`true`) or 1.
    pub cosine_weight: bool,
    /// Weight λ_n of the corrector's noise.
    pub noise_weight: f64,
    /// Guidance only at times above this.
    pub cutoff: usize,
    /// Write the measured voxels of `y` into x̂₀ (infilling).
    pub replace_measured: bool,
}

impl Guidance {
    /// Super-resolution: k 2, ρ 20, w 1, λ_n 0.9, cutoff 100.
    pub const SR: Guidance = Guidance {
        k: 2,
        rho: 20.0,
        cosine_weight: false,
        noise_weight: 0.9,
        cutoff: 100,
        replace_measured: false,
    };
    /// Infilling: k 2, ρ 3, w sin²φ, λ_n 1, cutoff 100, measured voxels written into x̂₀.
    pub const INFILL: Guidance = Guidance {
        k: 2,
        rho: 3.0,
        cosine_weight: true,
        noise_weight: 1.0,
        cutoff: 100,
        replace_measured: true,
    };
    /// Sparse-view X-rays (`XrayGuidanceConfig`): k 4, ρ 0.70, w sin²φ, λ_n 0.95, cutoff 20.
    pub const XRAY: Guidance = Guidance {
        k: 4,
        rho: 0.70,
        cosine_weight: true,
        noise_weight: 0.95,
        cutoff: 20,
        replace_measured: false,
    };
    /// Deblurring: k 2, ρ 10, w 1, λ_n 1, cutoff 100.
    pub const DEBLUR: Guidance = Guidance {
        k: 2,
        rho: 10.0,
        cosine_weight: false,
        noise_weight: 1.0,
        cutoff: 100,
        replace_measured: false,
    };
}

/// A denoiser whose image prediction is made consistent with the measurement (DDS), and whose
/// noise prediction follows it (`ε̂ = (x − cos φ·x̂₀)/sin φ`), so that every sampler of
/// [`crate::diffusion`] runs on it unchanged.
pub struct Consistent<'a, D: Denoiser> {
    pub model: &'a D,
    pub op: &'a Operator,
    pub y: &'a Tensor<5>,
    /// Conjugate-gradient steps where there is no exact projection.
    pub cg_steps: usize,
    /// Downsampling: this many back-projection steps ([`Operator::back_project`]) instead of
    /// the exact projection (0: the projection).
    pub back_projections: usize,
}

impl<D: Denoiser> Denoiser for Consistent<'_, D> {
    fn predict(&self, x_t: Tensor<5>, t: &[f32]) -> (Tensor<5>, Tensor<5>) {
        let (eps, x0) = self.model.predict(x_t.clone(), t);
        let x0 = if self.back_projections > 0 {
            self.op.back_project(x0, self.y, self.back_projections, self.cg_steps)
        } else {
            self.op.consistent(x0, self.y, self.cg_steps)
        };
        let (sin, cos) = angle(t[0] as f64).sin_cos();
        if sin <= 0.0 {
            return (eps, x0);
        }
        ((x_t - x0.clone() * cos) / sin, x0)
    }
}

/// TF-PRDiT's guided sampler for the measurement `y` of `op`: `steps` steps of the official
/// grid from `x_start` (at its first time); `noise` supplies the corrector noise in step order. Returns the image prediction of
/// the last network call (at t = 0), which is what TF-PRDiT returns.
pub fn guided(
    model: &impl Denoiser,
    (op, y): (&Operator, &Tensor<5>),
    x_start: Tensor<5>,
    steps: usize,
    g: Guidance,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Tensor<5>> {
    if g.k == 0 {
        return Err(Error::invalid("k", "the predictor–corrector jump k must be at least 1"));
    }
    let grid = time_grid(steps)?;
    let batch = x_start.dims()[0];
    let device = x_start.device();
    let mut x = x_start;
    let mut last = None;
    for (n, &(i, j)) in grid.iter().enumerate() {
        let (eps, x0) = model.predict(x.clone(), &vec![i as f32; batch]);
        let (sin, cos) = angle(i as f64).sin_cos();
        // The guidance is the gradient at the network's own x̂₀ (before infilling's paste).
        let guidance = if i > g.cutoff {
            let r = op.apply(x0.clone()) - y.clone();
            let norm = r.clone().square().sum().sqrt().into_scalar::<f64>();
            let w = if g.cosine_weight { sin * sin } else { 1.0 };
            (norm > 0.0).then(|| op.adjoint(r) * (g.rho * w / norm))
        } else {
            None
        };
        let x0 = if g.replace_measured { op.consistent(x0, y, 0) } else { x0 };
        let dphi = angle((i - j) as f64);
        let f = x0.clone() * sin - eps * cos;
        let t_pred = i as isize - (g.k * (i - j)) as isize;
        x = if t_pred >= 0 && i != 0 {
            let mut x_pred = x + f * (g.k as f64 * dphi);
            if let Some(step) = guidance {
                x_pred = x_pred - step;
            }
            let alpha = angle(j as f64).cos() / angle(t_pred as f64).cos();
            let z = noise.draw(x_pred.dims(), &device)?;
            x_pred * alpha + z * ((1.0 - alpha * alpha).max(0.0).sqrt() * g.noise_weight)
        } else {
            x + f * dphi
        };
        last = Some(x0);
        on_step(n + 1, grid.len());
    }
    Ok(last.expect("the grid has at least one step"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::exact::Mixture;
    use crate::diffusion::sampler::{Field, Grid, Sampler, Solver};
    use crate::diffusion::{NOISE_STD, SeededNoise, sample};
    use burn::tensor::{Device, TensorData};

    /// The exact posterior of a Gaussian prior N(μ, s²) per voxel under a noise-free
    /// measurement: for the mask, the measured voxels are known and the others keep the prior;
    /// for ×2 downsampling (each measured value the mean of a pair), the pair's mean is known
    /// and its half-difference keeps variance s²/2. The few-step solver on the consistent exact
    /// denoiser draws from it: sample mean and variance per class of voxel, over 256 draws.
    #[test]
    fn few_step_consistent_sampling_draws_the_gaussian_posterior() {
        let device = Device::flex();
        let (mu, s) = (0.2f64, 0.3f64);
        let prior = Mixture { weights: vec![1.0], means: vec![vec![mu]], stds: vec![s], per_voxel: true };
        let n = 256;
        let dims = [n, 1, 2, 2, 2];
        let truth: Vec<f32> = (0..8).map(|i| (mu + s * ((i as f64 * 0.7).sin())) as f32).collect();
        let truth = Tensor::<5>::from_data(TensorData::new(truth, [1, 1, 2, 2, 2]), &device);
        let mut keep = vec![0f32; 8];
        keep[..4].fill(1.0);
        let keep = Tensor::<5>::from_data(TensorData::new(keep, [1, 1, 2, 2, 2]), &device);
        let sampler = Sampler::Ode { solver: Solver::UniPc, grid: Grid::LogSnr, field: Field::Official };
        let stats = |x: Tensor<5>, idx: &[usize]| -> (f64, f64) {
            let v = crate::device::to_host(x, "samples").unwrap();
            let v = &v;
            let vals: Vec<f64> = (0..n).flat_map(|b| idx.iter().map(move |&i| v[b * 8 + i] as f64)).collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            (m, vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / vals.len() as f64)
        };
        // Infilling: voxels 0..4 measured.
        let op = Operator::Mask { keep: Box::new(keep.clone()) };
        let y = op.apply(truth.clone()).repeat_dim(0, n);
        let model = Consistent { model: &prior, op: &op, y: &y, cg_steps: 0, back_projections: 0 };
        let x = SeededNoise::new(3, NOISE_STD).draw(dims, &device).unwrap();
        let out =
            sample(&model, x, 20, sampler, &mut SeededNoise::new(4, NOISE_STD), &mut |_, _| {}).unwrap();
        let known = crate::device::to_host(out.x.clone().narrow(0, 0, 1), "x").unwrap();
        let want = crate::device::to_host(truth.clone(), "t").unwrap();
        for i in 0..4 {
            assert!((known[i] - want[i]).abs() < 1e-5, "measured voxel {i}: {} vs {}", known[i], want[i]);
        }
        let (m, var) = stats(out.x, &[4, 5, 6, 7]);
        eprintln!(
            "infill, unmeasured voxels: mean {m:.4} (prior {mu}), variance {var:.4} (prior {:.4})",
            s * s
        );
        assert!((m - mu).abs() < 0.05 && (var / (s * s) - 1.0).abs() < 0.15);

        // ×2 along D: the pair means (voxel i and i + 4) are measured.
        let op = Operator::Downsample { factor: 2, axes: [true, false, false] };
        let y = op.apply(truth.clone()).repeat_dim(0, n);
        let model = Consistent { model: &prior, op: &op, y: &y, cg_steps: 0, back_projections: 0 };
        let x = SeededNoise::new(5, NOISE_STD).draw(dims, &device).unwrap();
        let out =
            sample(&model, x, 20, sampler, &mut SeededNoise::new(6, NOISE_STD), &mut |_, _| {}).unwrap();
        let ym = op.apply(out.x.clone());
        let err = (ym - y).abs().max().into_scalar::<f32>();
        assert!(err < 1e-5, "the samples meet the measurement: {err}");
        let half = (out.x.clone().narrow(2, 0, 1) - out.x.narrow(2, 1, 1)) * 0.5;
        let (m, var) = stats(half.repeat_dim(2, 2), &[0, 1, 2, 3]);
        eprintln!(
            "sr ×2, half-differences: mean {m:.4} (posterior 0), variance {var:.4} (posterior {:.4})",
            s * s / 2.0
        );
        assert!(m.abs() < 0.05 && (var / (s * s / 2.0) - 1.0).abs() < 0.15);

        // The blur (3 taps, σ 1, zero padding) is invertible on 2³: the posterior is the point
        // `truth`, and CG to convergence (8 unknowns) puts every draw there.
        let op = Operator::Blur { taps: ops::gaussian_taps(3, 1.0).unwrap() };
        let y = op.apply(truth.clone()).repeat_dim(0, n);
        let model = Consistent { model: &prior, op: &op, y: &y, cg_steps: 30, back_projections: 0 };
        let x = SeededNoise::new(7, NOISE_STD).draw(dims, &device).unwrap();
        let out =
            sample(&model, x, 20, sampler, &mut SeededNoise::new(8, NOISE_STD), &mut |_, _| {}).unwrap();
        let err = (out.x - truth.repeat_dim(0, n)).abs().max().into_scalar::<f32>();
        eprintln!("deblur 3 taps on 2³: every draw within {err:.2e} of the posterior's point");
        assert!(err < 1e-3, "{err}");
    }

    /// The same for one X-ray view of a 4³ volume (16 rays, 64 voxels; the consistency by CG to
    /// convergence is the exact projection onto `A·x = y`): the posterior fixes the component
    /// in the range of Aᵀ and keeps the prior on the null space, mean (I − P)μ and total variance
    /// s²·(64 − rank A), P = Aᵀ(AAᵀ)⁻¹A computed here densely.
    #[test]
    fn few_step_consistent_xray_draws_the_gaussian_posterior() {
        let device = Device::flex();
        let (mu, s) = (0.2f64, 0.3f64);
        let prior = Mixture { weights: vec![1.0], means: vec![vec![mu]], stds: vec![s], per_voxel: true };
        let (n, e, v) = (256, 4, 64);
        let projector = xray::Projector::new(xray::Geometry::official(1, e).unwrap(), &device).unwrap();
        let op = Operator::Xray(Box::new(projector));
        // A densely, column by column.
        let r = e * e;
        let mut a = vec![0f64; r * v];
        for j in 0..v {
            let mut basis = vec![0f32; v];
            basis[j] = 1.0;
            let col = op.apply(Tensor::<5>::from_data(TensorData::new(basis, [1, 1, e, e, e]), &device));
            for (i, c) in crate::device::to_host(col, "A").unwrap().iter().enumerate() {
                a[i * v + j] = *c as f64;
            }
        }
        // Z = (AAᵀ)⁻¹A by Gauss–Jordan; P = AᵀZ.
        let mut g: Vec<f64> =
            (0..r * r).map(|k| (0..v).map(|t| a[(k / r) * v + t] * a[(k % r) * v + t]).sum()).collect();
        let mut z = a.clone();
        for c in 0..r {
            let piv = (c..r).max_by(|&x, &y| g[x * r + c].abs().total_cmp(&g[y * r + c].abs())).unwrap();
            assert!(g[piv * r + c].abs() > 1e-9, "A has full row rank");
            for k in 0..r {
                g.swap(c * r + k, piv * r + k);
            }
            for k in 0..v {
                z.swap(c * v + k, piv * v + k);
            }
            let d = g[c * r + c];
            for row in 0..r {
                if row != c {
                    let f = g[row * r + c] / d;
                    for k in 0..r {
                        g[row * r + k] -= f * g[c * r + k];
                    }
                    for k in 0..v {
                        z[row * v + k] -= f * z[c * v + k];
                    }
                }
            }
        }
        for row in 0..r {
            let d = g[row * r + row];
            for k in 0..v {
                z[row * v + k] /= d;
            }
        }
        let p: Vec<f64> =
            (0..v * v).map(|k| (0..r).map(|i| a[i * v + k / v] * z[i * v + k % v]).sum()).collect();
        let truth: Vec<f32> = (0..v).map(|i| (mu + s * ((i as f64 * 0.7).sin())) as f32).collect();
        let truth = Tensor::<5>::from_data(TensorData::new(truth, [1, 1, e, e, e]), &device);
        let y = op.apply(truth).repeat_dim(0, n);
        let model = Consistent { model: &prior, op: &op, y: &y, cg_steps: 40, back_projections: 0 };
        let sampler = Sampler::Ode { solver: Solver::UniPc, grid: Grid::LogSnr, field: Field::Official };
        let x = SeededNoise::new(7, NOISE_STD).draw([n, 1, e, e, e], &device).unwrap();
        let out =
            sample(&model, x, 20, sampler, &mut SeededNoise::new(8, NOISE_STD), &mut |_, _| {}).unwrap();
        let residual = ((op.apply(out.x.clone()) - y.clone()).square().sum().sqrt()
            / y.square().sum().sqrt())
        .into_scalar::<f64>();
        let x = crate::device::to_host(out.x, "samples").unwrap();
        // Null-space parts (I − P)x per draw: their mean against (I − P)μ, their total variance.
        let null: Vec<Vec<f64>> = (0..n)
            .map(|b| {
                (0..v)
                    .map(|i| {
                        x[b * v + i] as f64 - (0..v).map(|j| p[i * v + j] * x[b * v + j] as f64).sum::<f64>()
                    })
                    .collect()
            })
            .collect();
        let want_mean: Vec<f64> =
            (0..v).map(|i| mu - (0..v).map(|j| p[i * v + j] * mu).sum::<f64>()).collect();
        let mean: Vec<f64> = (0..v).map(|i| null.iter().map(|z| z[i]).sum::<f64>() / n as f64).collect();
        let mean_err = mean.iter().zip(&want_mean).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let total_var: f64 =
            (0..v).map(|i| null.iter().map(|z| (z[i] - mean[i]).powi(2)).sum::<f64>() / n as f64).sum();
        let want_var = s * s * (v - r) as f64;
        eprintln!(
            "xray, 1 view of 4³: residual {residual:.2e}; null-space mean within {mean_err:.4} of (I − P)μ, \
             total variance {total_var:.3} (posterior {want_var:.3})"
        );
        assert!(residual < 1e-4, "the samples meet the measurement: {residual}");
        assert!(mean_err < 0.1, "{mean_err}");
        assert!((total_var / want_var - 1.0).abs() < 0.1, "{total_var} vs {want_var}");
    }
}
