//! PRDiT-FM's straight-line flow matching (spec §13.2): `x_t = (1 − t)·z + t·x` with
//! `z ~ N(0, I)` and `t ∈ [0, 1]` (t = 0 is noise, t = 1 is data), the network predicts the
//! velocity `v = x − z` from `(x_t, 1000·t)`, the loss is the per-sample mean squared velocity
//! error averaged over the batch, and sampling integrates `dx/dt = v̂` from t = 0 with Euler or
//! Heun on the uniform grid `k/N`.
//!
//! The same path is the image-and-noise diffusion's up to a change of time and scale, which
//! lets every data-prediction solver of [`super::ode`] run a velocity model exactly
//! ([`time_change`]): at equal signal-to-noise ratio, `t/(1 − t) = cos φ/(σ_d sin φ)`, the two
//! states differ by the factor `t/cos φ`.
//!
//! Python (PRDiT-FM): `diffusion/flow_matching.py::FlowMatching` (`interpolate`,
//! `training_losses`, `predict_x_data`, `sample`).

use burn::tensor::{Device, Tensor, TensorData};

use super::{LossTerms, NOISE_STD, NUM_TIMESTEPS, angle};
use crate::denoiser::{Denoiser, VelocityModel};
use crate::error::{Error, Result};

/// The embedder sees `t·1000` (PRDiT-FM's `embed_t_scale`).
pub const EMBED_T_SCALE: f32 = 1000.0;
/// Standard deviation of the flow's noise (training, initial state).
pub const FLOW_NOISE_STD: f64 = 1.0;
/// The time of the stage-1 validation reconstruction `x̂ = x_t + (1 − t)·v̂`.
pub const VAL_T: f32 = 0.5;
/// Sampling steps of PRDiT-FM's evaluation and `sample.py` default.
pub const DEFAULT_STEPS: usize = 100;

/// The network's time input for flow times: `t·1000` in float32, as PyTorch computes it.
pub fn network_times(t: &[f32]) -> Vec<f32> {
    t.iter().map(|&v| v * EMBED_T_SCALE).collect()
}

/// Per-sample coefficients `[batch, 1, 1, 1, 1]` from host values.
pub fn per_sample(values: Vec<f32>, device: &Device) -> Tensor<5> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n, 1, 1, 1, 1]), device)
}

/// The path: `x_t = (1 − t)·z + t·x` per sample.
/// - `x`, `z` (unit noise): `[batch, C, S, S, S]`; `t`: one flow time per sample
pub fn interpolate(x: Tensor<5>, z: Tensor<5>, t: &[f32]) -> Tensor<5> {
    let device = x.device();
    let a = per_sample(t.to_vec(), &device);
    let b = per_sample(t.iter().map(|&v| 1.0 - v).collect(), &device);
    z * b + x * a
}

/// The velocity-matching loss for given times and noise: `total` is the batch mean of the
/// per-sample mean squared error of `v̂ − (x − z)`; there is one term (`image` carries it,
/// `noise` is zero).
pub fn training_loss(model: &impl VelocityModel, x: Tensor<5>, t: &[f32], z: Tensor<5>) -> LossTerms {
    let x_t = interpolate(x.clone(), z.clone(), t);
    let target = x - z;
    let v = model.velocity(x_t, t);
    let per_sample = (v - target).square().mean_dims(&[1, 2, 3, 4]).flatten::<1>(0, 4);
    let total = per_sample.clone().mean();
    LossTerms { image: total.clone(), noise: total.zeros_like(), total, per_sample }
}

/// The stage-1 validation's reconstruction: `x̂ = x_t + (1 − t)·v̂` at one time for all
/// samples; returns `(x̂, x_t)`.
pub fn reconstruct(model: &impl VelocityModel, x: Tensor<5>, z: Tensor<5>, t: f32) -> (Tensor<5>, Tensor<5>) {
    let batch = x.dims()[0];
    let x_t = interpolate(x, z, &vec![t; batch]);
    let v = model.velocity(x_t.clone(), &vec![t; batch]);
    (x_t.clone() + v * (1.0 - t) as f64, x_t)
}

/// PRDiT-FM's two ODE solvers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowSolver {
    /// `x ← x + v̂(x, t_k)/N`.
    Euler,
    /// Euler's predictor, then the mean of the velocities at both ends (2 network calls per
    /// step, the last at t = 1).
    Heun,
}

/// Network calls of `steps` steps.
pub fn network_calls(solver: FlowSolver, steps: usize) -> usize {
    match solver {
        FlowSolver::Euler => steps,
        FlowSolver::Heun => 2 * steps,
    }
}

/// The flow time of step `k` of `steps` as PyTorch makes it: `k·(1/N)` in double precision,
/// then float32.
fn grid_time(k: usize, steps: usize) -> f32 {
    (k as f64 * (1.0 / steps as f64)).min(1.0) as f32
}

/// Integrates `dx/dt = v̂` from `x_start` (unit noise, t = 0) to t = 1 on the grid `k/N`;
/// returns the state at t = 1. `on_step(done, total)` reports network calls.
pub fn sample(
    model: &impl VelocityModel,
    x_start: Tensor<5>,
    steps: usize,
    solver: FlowSolver,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Tensor<5>> {
    check_steps(steps)?;
    let batch = x_start.dims()[0];
    let dt = (1.0 / steps as f64) as f32 as f64;
    let total = network_calls(solver, steps);
    let mut x = x_start;
    let mut calls = 0;
    for k in 0..steps {
        let t = grid_time(k, steps);
        let v = model.velocity(x.clone(), &vec![t; batch]);
        calls += 1;
        on_step(calls, total);
        x = match solver {
            FlowSolver::Euler => x + v * dt,
            FlowSolver::Heun => {
                let x_pred = x.clone() + v.clone() * dt;
                let v_next = model.velocity(x_pred, &vec![grid_time(k + 1, steps); batch]);
                calls += 1;
                on_step(calls, total);
                x + (v + v_next) * (dt * 0.5)
            }
        };
    }
    Ok(x)
}

/// A step count the flow's solvers take: 1 ..= 1000 (a bound of prdit's, as for the diffusion).
pub fn check_steps(steps: usize) -> Result<()> {
    if steps == 0 || steps > NUM_TIMESTEPS {
        return Err(Error::invalid("steps", format!("{steps} is not in 1..={NUM_TIMESTEPS}")));
    }
    Ok(())
}

/// The image and unit noise a velocity implies at flow times `t` (one per sample):
/// `x̂ = x + (1 − t)·v̂`, `ẑ = x − t·v̂`.
pub fn split(x: Tensor<5>, v: Tensor<5>, t: &[f32]) -> (Tensor<5>, Tensor<5>) {
    let device = x.device();
    let image = x.clone() + v.clone() * per_sample(t.iter().map(|&v| 1.0 - v).collect(), &device);
    let noise = x - v * per_sample(t.to_vec(), &device);
    (image, noise)
}

/// The flow time and state scale matching diffusion time `tau` (spec §6): at angle φ,
/// `t = cos φ/(cos φ + σ_d sin φ)` and `x_flow = x_diffusion·t/cos φ`, the scale being
/// `1/(cos φ + σ_d sin φ)` (finite at φ = π/2, where t = 0 and the state is pure noise).
pub fn time_change(tau: f64) -> (f64, f64) {
    let (sin, cos) = angle(tau).sin_cos();
    let denom = cos + NOISE_STD * sin;
    ((cos / denom).clamp(0.0, 1.0), 1.0 / denom)
}

/// A velocity model as a [`Denoiser`] of the image-and-noise diffusion's time axis, through
/// [`time_change`]: `v̂` at the matching flow state gives `x̂₀ = x + (1 − t)·v̂` and the unit
/// noise `ẑ = x − t·v̂`, whose diffusion noise is `σ_d·ẑ`. Exact: both heads come from one
/// velocity, so they agree.
pub fn denoise(model: &impl VelocityModel, x_t: Tensor<5>, tau: &[f32]) -> (Tensor<5>, Tensor<5>) {
    let device = x_t.device();
    let changed: Vec<(f64, f64)> = tau.iter().map(|&v| time_change(v as f64)).collect();
    let t: Vec<f32> = changed.iter().map(|&(t, _)| t as f32).collect();
    let scale = per_sample(changed.iter().map(|&(_, s)| s as f32).collect(), &device);
    let x = x_t * scale;
    let v = model.velocity(x.clone(), &t);
    let (x0, z) = split(x, v, &t);
    (z * NOISE_STD, x0)
}

/// The inverse: a [`Denoiser`] (e.g. the exact one of a known distribution) as the flow's
/// velocity, `v = x̂ − ẑ` at the diffusion state matching flow time t. At t = 1 the diffusion's
/// noise is undefined (the state is the data), so times are taken at most
/// [`AsVelocity::T_MAX`]: Heun's last evaluation, at t = 1, sees the velocity at 1 − 10⁻⁴.
pub struct AsVelocity<'a, D: Denoiser>(pub &'a D);

impl<D: Denoiser> AsVelocity<'_, D> {
    /// The latest flow time evaluated.
    pub const T_MAX: f32 = 1.0 - 1e-4;
}

impl<D: Denoiser> VelocityModel for AsVelocity<'_, D> {
    fn velocity(&self, x_t: Tensor<5>, t: &[f32]) -> Tensor<5> {
        let device = x_t.device();
        let t: Vec<f32> = t.iter().map(|&v| v.min(Self::T_MAX)).collect();
        // tan φ = σ_d⁻¹·(1 − t)/t; the diffusion state is x·(cos φ + σ_d sin φ).
        let phis: Vec<f64> = t.iter().map(|&v| ((1.0 - v as f64) / (NOISE_STD * v as f64)).atan()).collect();
        let tau: Vec<f32> =
            phis.iter().map(|p| (p * 2.0 * NUM_TIMESTEPS as f64 / std::f64::consts::PI) as f32).collect();
        let scale =
            per_sample(phis.iter().map(|p| (p.cos() + NOISE_STD * p.sin()) as f32).collect(), &device);
        let (eps, x0) = self.0.predict(x_t * scale, &tau);
        x0 - eps / NOISE_STD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact velocity of data that is the constant `c`: `v = (c − x_t)/(1 − t)`.
    struct Constant(f32);

    impl VelocityModel for Constant {
        fn velocity(&self, x_t: Tensor<5>, t: &[f32]) -> Tensor<5> {
            (x_t.zeros_like() + self.0 as f64 - x_t) / (1.0 - t[0] as f64)
        }
    }

    #[test]
    fn solvers_land_on_the_constant() {
        let device = Device::flex();
        let start =
            Tensor::<5>::random([2, 1, 3, 3, 3], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        for (solver, steps) in [(FlowSolver::Euler, 10), (FlowSolver::Euler, 1)] {
            let out = sample(&Constant(0.25), start.clone(), steps, solver, &mut |_, _| {}).unwrap();
            // Straight lines: Euler is exact on this field.
            let err = (out - 0.25).abs().max().into_scalar::<f32>();
            assert!(err < 1e-5, "{solver:?} {steps}: {err}");
        }
    }

    #[test]
    fn heun_matches_hand_computation_on_a_linear_field() {
        // v(x, t) = a·x + b·t: one Heun step of size 1/2 from x at t = 0.
        struct Linear;
        impl VelocityModel for Linear {
            fn velocity(&self, x_t: Tensor<5>, t: &[f32]) -> Tensor<5> {
                x_t * 0.5 + t[0] as f64 * 2.0
            }
        }
        let device = Device::flex();
        let x = Tensor::<5>::ones([1, 1, 1, 1, 1], &device);
        let mut calls = Vec::new();
        let out = sample(&Linear, x, 2, FlowSolver::Heun, &mut |d, n| calls.push((d, n))).unwrap();
        let mut want = 1.0f64;
        for k in 0..2 {
            let (t, h) = (k as f64 * 0.5, 0.5);
            let v = 0.5 * want + 2.0 * t;
            let xp = want + h * v;
            let vn = 0.5 * xp + 2.0 * (t + h);
            want += h * 0.5 * (v + vn);
        }
        let got = out.into_scalar::<f32>() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert_eq!(calls, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    }

    #[test]
    fn time_change_round_trips_and_meets_the_ends() {
        for tau in [0.0, 1.0, 137.0, 500.0, 999.0, 1000.0] {
            let (t, scale) = time_change(tau);
            // Equal signal-to-noise: t/(1 − t) = cos φ/(σ_d sin φ) ⇔ the flow state's signal
            // t equals scale·cos φ, its noise 1 − t equals scale·σ_d·sin φ.
            let (sin, cos) = angle(tau).sin_cos();
            assert!((t - scale * cos).abs() < 1e-12 && (1.0 - t - scale * NOISE_STD * sin).abs() < 1e-12);
        }
        assert_eq!(time_change(0.0), (1.0, 1.0));
        let (t, s) = time_change(1000.0);
        assert!(t.abs() < 1e-15 && (s - 1.0 / NOISE_STD).abs() < 1e-12);
    }

    #[test]
    fn a_velocity_model_as_denoiser_and_back_is_itself() {
        struct Affine;
        impl VelocityModel for Affine {
            fn velocity(&self, x_t: Tensor<5>, t: &[f32]) -> Tensor<5> {
                x_t * (0.3 - t[0] as f64) + 0.1
            }
        }
        struct Wrapped;
        impl Denoiser for Wrapped {
            fn predict(&self, x_t: Tensor<5>, t: &[f32]) -> (Tensor<5>, Tensor<5>) {
                denoise(&Affine, x_t, t)
            }
        }
        let device = Device::flex();
        let x = Tensor::<5>::random([1, 1, 2, 2, 2], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        for t in [0.05f32, 0.5, 0.9] {
            let back = AsVelocity(&Wrapped).velocity(x.clone(), &[t]);
            let want = Affine.velocity(x.clone(), &[t]);
            let err = (back - want).abs().max().into_scalar::<f32>();
            assert!(err < 2e-5, "t = {t}: {err}");
        }
    }
}
