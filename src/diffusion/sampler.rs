//! The two samplers of spec §7, integrating the probability-flow ODE in the angle variable
//! on the official time grid. Only the current state is kept: memory does not grow with
//! the number of steps.
//!
//! Python: `diffusion/ian_diffusion.py`, `p_sample_loop` → `_generalized_steps` (deterministic)
//! or, with `new_sampling=True` (`sample.py --new`), `_predictor_corrector_steps` (hot PC).

use burn::tensor::Tensor;

pub use super::ode::{Field, Grid, Solver, integrate};
use super::{Denoiser, NUM_TIMESTEPS, NoiseSource, angle};
use crate::error::{Error, Result};

/// Which update rule to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// Explicit Euler in φ: `x ← x + Δφ·f`, `f = sin φ·x̂₀ − cos φ·ε̂`.
    Deterministic,
    /// The "hot" predictor–corrector: an Euler jump `k` steps down, then an exact forward
    /// re-noising back up to the next grid time (k = 1 is the deterministic sampler).
    PredictorCorrector { k: usize },
    /// A few-step ODE solver (not in the official code) on its grid: [`super::ode`].
    Ode { solver: Solver, grid: Grid, field: Field },
}

impl Default for Sampler {
    /// The paper's sampler: predictor–corrector with k = 2.
    fn default() -> Self {
        Sampler::PredictorCorrector { k: 2 }
    }
}

/// What a sampling run returns (the official `sample.py` writes both).
pub struct SampleOutput {
    /// The final state (`xs/`).
    pub x: Tensor<5>,
    /// The image prediction of the last network call, at t = 0 (`x0/`).
    pub x0: Tensor<5>,
}

/// Network calls of `steps` steps of `sampler`.
pub fn network_calls(sampler: Sampler, steps: usize) -> Result<usize> {
    match sampler {
        Sampler::Ode { solver, .. } => {
            super::ode::times(steps, Grid::Uniform)?;
            Ok(super::ode::network_calls(solver, steps))
        }
        _ => Ok(time_grid(steps)?.len()),
    }
}

/// The official grid for `steps` steps: `skip = T / steps`, `seq = 0, skip, 2·skip, … < T`,
/// `next = [0, seq₀, …]`; returns the `(i, j)` pairs in sampling order (i descending).
/// There is one network call per pair: ⌈T/skip⌉ calls, equal to `steps` when it divides T.
pub fn time_grid(steps: usize) -> Result<Vec<(usize, usize)>> {
    if steps == 0 || steps > NUM_TIMESTEPS {
        return Err(Error::invalid("steps", format!("{steps} is not in 1..={NUM_TIMESTEPS}")));
    }
    let skip = NUM_TIMESTEPS / steps;
    let seq: Vec<usize> = (0..NUM_TIMESTEPS).step_by(skip).collect();
    let next: Vec<usize> = std::iter::once(0).chain(seq[..seq.len() - 1].iter().copied()).collect();
    Ok(seq.into_iter().zip(next).rev().collect())
}

/// The jump `k` of a sampler (1 for the deterministic one); an error for k = 0.
pub fn jump(sampler: Sampler) -> Result<usize> {
    match sampler {
        Sampler::Deterministic | Sampler::Ode { .. } => Ok(1),
        Sampler::PredictorCorrector { k: 0 } => {
            Err(Error::invalid("k", "the predictor–corrector jump k must be at least 1"))
        }
        Sampler::PredictorCorrector { k } => Ok(k),
    }
}

/// One step from time `i` to `j` (one network call): returns the new state and the image
/// prediction x̂₀ at `i`.
pub fn step(
    model: &impl Denoiser,
    x: Tensor<5>,
    (i, j): (usize, usize),
    sampler: Sampler,
    noise: &mut dyn NoiseSource,
) -> Result<(Tensor<5>, Tensor<5>)> {
    if let Sampler::Ode { .. } = sampler {
        return Err(Error::invalid("sampler", "an ODE solver runs whole (`sample`), not by official steps"));
    }
    let k = jump(sampler)?;
    let [batch, ..] = x.dims();
    let device = x.device();
    let (eps_hat, x0_hat) = model.predict(x.clone(), &vec![i as f32; batch]);
    let (sin, cos) = angle(i as f64).sin_cos();
    let dphi = angle((i - j) as f64);
    let t_pred = i as isize - (k * (i - j)) as isize;
    let x = if k > 1 && t_pred > 0 {
        // Predictor: Euler jump k steps down to t_pred.
        let jump = k as f64 * dphi;
        let x_pred = x + x0_hat.clone() * (jump * sin) - eps_hat * (jump * cos);
        // Corrector: exact forward re-noising from t_pred back up to j.
        let alpha = angle(j as f64).cos() / angle(t_pred as f64).cos();
        let z = noise.draw(x_pred.dims(), &device)?;
        x_pred * alpha + z * (1.0 - alpha * alpha).max(0.0).sqrt()
    } else {
        x + x0_hat.clone() * (dphi * sin) - eps_hat * (dphi * cos)
    };
    Ok((x, x0_hat))
}

/// Runs `sampler` from `x_start` (at the grid's first time, `seq[-1]`; t = 999 for the ODE
/// solvers) for `steps` steps. `noise` supplies the corrector noise (already scaled by 0.5),
/// drawn once per predictor–corrector step in step order; `on_step(done, total)` reports
/// progress in network calls.
pub fn sample(
    model: &impl Denoiser,
    x_start: Tensor<5>,
    steps: usize,
    sampler: Sampler,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<SampleOutput> {
    if let Sampler::Ode { solver, grid, field } = sampler {
        return super::ode::solve(model, x_start, steps, solver, grid, field, on_step);
    }
    let grid = time_grid(steps)?;
    jump(sampler)?;
    let mut x = x_start;
    let mut x0 = None;
    for (n, &pair) in grid.iter().enumerate() {
        let (next, x0_hat) = step(model, x, pair, sampler, noise)?;
        x = next;
        x0 = Some(x0_hat);
        on_step(n + 1, grid.len());
    }
    let x0 = x0.expect("the time grid has at least one step");
    Ok(SampleOutput { x, x0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::{NOISE_STD, SeededNoise, q_sample};
    use burn::tensor::Device;

    #[test]
    fn grid_matches_official() {
        let g = time_grid(1000).unwrap();
        assert_eq!(g.len(), 1000);
        assert_eq!((g[0], g[1], g[998], g[999]), ((999, 998), (998, 997), (1, 0), (0, 0)));
        let g = time_grid(10).unwrap();
        assert_eq!(g.first(), Some(&(900, 800)));
        assert_eq!(&g[7..], &[(200, 100), (100, 0), (0, 0)]);
        // 300 steps: skip 3, 334 network calls.
        assert_eq!(time_grid(300).unwrap().len(), 334);
        assert!(time_grid(0).is_err() && time_grid(1001).is_err());
    }

    /// The exact denoiser for data that is the constant `c`.
    struct ConstantData(f32);

    impl Denoiser for ConstantData {
        fn predict(&self, x_t: Tensor<5>, t: &[f32]) -> (Tensor<5>, Tensor<5>) {
            let t = t[0] as f64;
            let (sin, cos) = angle(t).sin_cos();
            let x0 = x_t.zeros_like() + self.0 as f64;
            let eps = if sin > 0.0 { (x_t - x0.clone() * cos) / sin } else { x0.zeros_like() };
            (eps, x0)
        }
    }

    #[test]
    fn exact_denoiser_lands_on_the_constant() {
        let device = Device::flex();
        let c = 0.3f32;
        let shape = [2, 1, 4, 4, 4];
        for (sampler, steps) in [
            (Sampler::Deterministic, 1000),
            (Sampler::Deterministic, 50),
            (Sampler::PredictorCorrector { k: 2 }, 1000),
            (Sampler::PredictorCorrector { k: 3 }, 100),
        ] {
            let mut noise = SeededNoise::new(1, NOISE_STD);
            let start = noise.draw(shape, &device).unwrap();
            let first = time_grid(steps).unwrap()[0].0;
            // Start on the trajectory of the constant: x_t = cos φ·c + sin φ·ε.
            let x0 = Tensor::<5>::zeros(shape, &device) + c as f64;
            let start = q_sample(x0, &[first, first], start);
            let out = sample(&ConstantData(c), start, steps, sampler, &mut noise, &mut |_, _| {}).unwrap();
            let err = (out.x - c as f64).abs().max().into_scalar::<f32>();
            // Euler in φ on the exact ODE: the error shrinks with the step (spacing π/2/steps).
            let tol = 3.0 * std::f32::consts::FRAC_PI_2 / steps as f32;
            assert!(err < tol, "{sampler:?} {steps}: max |x − c| = {err} ≥ {tol}");
        }
    }
}
