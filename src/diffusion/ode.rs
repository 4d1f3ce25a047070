//! Few-step solvers of PRDiT's probability-flow ODE (not in the official code): DDIM, DPM-Solver++
//! (2M, 3M), UniPC and EDM's Heun, on the official uniform time grid, on grids uniform in log-SNR
//! or in EDM's σ^(1/ρ), or on a grid fitted to the model ([`super::fit`]).
//!
//! The process is `x_t = cos φ·x₀ + sin φ·ε`, `ε ~ N(0, σ_d²)`, σ_d = 0.5, φ = (π/2)·t/T (spec §6):
//! with `α = cos φ` and `σ = σ_d·sin φ` it is `x_t = α·x₀ + σ·z`, a Gaussian diffusion with
//! log-SNR `λ = log(α/σ)`, and `x_t/cos φ = x₀ + σ_d tan φ·z` is EDM's form with noise level
//! `σ_edm = σ_d·tan φ`. The network predicts x̂₀ (and ε̂), so:
//! - DDIM: `x_s = cos φ_s·x̂₀ + sin φ_s·ε̂`, exact for a single data point;
//! - DPM-Solver++(2M/3M) (Lu et al. 2022), data-prediction multistep form in λ, warming up with
//!   lower orders;
//! - UniPC (Zhao et al. 2023): the 2M predictor with the UniC corrector, one order higher at no
//!   extra network call;
//! - Heun (Karras et al. 2022) on `dy/dσ_edm = (y − x̂₀)/σ_edm`, `y = x/cos φ` (2 network calls
//!   per step but the last).
//!
//! Every solver starts at t = 999 (the official sampler's first time, from pure noise as the
//! official sampler does) and ends with the exact last step to t = 0, which is the image
//! prediction of the last evaluation. Only the current state and, for the multistep solvers,
//! the last two image predictions are kept: memory does not grow with the number of steps.

use std::ops::{Add, Div, Mul, Sub};

use burn::tensor::Tensor;

use super::{Denoiser, NOISE_STD, NUM_TIMESTEPS, SampleOutput, angle};
use crate::error::{Error, Result};

/// The first time of every solver (the official grid's first network call).
pub const T_START: f64 = (NUM_TIMESTEPS - 1) as f64;
/// The noise range of the log-SNR and EDM grids: EDM's σ ∈ [0.002, 80] (Karras et al. 2022,
/// whose σ_data = 0.5 is PRDiT's σ_d), in PRDiT's time t ≈ 996.0 … 2.55. Every solver still
/// makes its first call at [`T_START`] (the grid's first point moves there) and ends with the
/// exact step to t = 0. On the exact benchmark this range is better than t = 999 … 1, or within
/// 0.0001, in all cells but one (`docs/samplers.md`, the grids).
pub const EDM_SIGMA_MIN: f64 = 0.002;
/// See [`EDM_SIGMA_MIN`].
pub const EDM_SIGMA_MAX: f64 = 80.0;
/// EDM's ρ.
pub const EDM_RHO: f64 = 7.0;

/// Which ODE solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Solver {
    /// First order: the exact rotation to the next angle with the predicted image and noise.
    Ddim,
    /// DPM-Solver++(2M): second-order multistep in log-SNR, data prediction.
    DpmPp2m,
    /// DPM-Solver++(3M): third-order multistep in log-SNR, data prediction.
    DpmPp3m,
    /// UniPC (Zhao et al. 2023): the DPM-Solver++(2M) predictor and the UniC corrector (`B(h)
    /// = e^h − 1`), which re-solves each step with the network's prediction at its end — the
    /// call the next step makes anyway — raising the order by one at no extra call.
    UniPc,
    /// Heun's method on EDM's ODE (second order, two network calls per step but the last).
    Heun,
}

/// Which ODE the solvers integrate. A trained PRDiT has two heads, x̂₀ and ε̂, trained
/// separately; they agree only approximately, and the two choices are different flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Field {
    /// The official samplers' ODE, `dx/dφ = −(sin φ·x̂₀ − cos φ·ε̂)` (both heads), written for
    /// the data-prediction solvers with the image `sin²φ·x̂₀ + cos φ·(x − sin φ·ε̂)` — the image
    /// whose implied noise `(x − cos φ·x̂)/sin φ` gives that same velocity: the x̂₀ head's weight
    /// sin²φ at high noise, the ε̂ head's implied image `(x − sin φ·ε̂)/cos φ` (weight cos²φ) at
    /// low noise. The few-step solvers then converge to the official deterministic sampler's
    /// volumes (`docs/samplers.md`).
    #[default]
    Official,
    /// The x̂₀ head alone, the noise implied by it (what DPM-Solver++ usually integrates).
    Image,
}

/// Where the steps lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Grid {
    /// Uniform in t (the official grid's spacing).
    #[default]
    Uniform,
    /// Uniform in log-SNR λ over EDM's noise range σ_edm ∈ [0.002, 80] (λ = −ln σ_edm).
    LogSnr,
    /// EDM's: uniform in σ_edm^(1/ρ), ρ = 7, over σ_edm ∈ [0.002, 80].
    Edm,
    /// Fitted to the model by a pilot run ([`super::fit`]): its times come from
    /// [`super::fit::fit_times`], not from [`times`].
    Fitted,
}

/// φ(t) = (π/2)·t/T for a continuous t.
fn phi(t: f64) -> f64 {
    angle(t)
}

/// The log-SNR λ = log(cos φ / (σ_d sin φ)) of time t (> 0).
pub fn log_snr(t: f64) -> f64 {
    let p = phi(t);
    (p.cos() / (NOISE_STD * p.sin())).ln()
}

/// The time of log-SNR λ.
fn t_of_log_snr(lambda: f64) -> f64 {
    // cot φ = σ_d·e^λ
    let p = (1.0 / (NOISE_STD * lambda.exp())).atan();
    p * 2.0 * NUM_TIMESTEPS as f64 / std::f64::consts::PI
}

/// EDM's noise level σ_d·tan φ of time t.
pub fn edm_sigma(t: f64) -> f64 {
    NOISE_STD * phi(t).tan()
}

fn t_of_edm_sigma(sigma: f64) -> f64 {
    (sigma / NOISE_STD).atan() * 2.0 * NUM_TIMESTEPS as f64 / std::f64::consts::PI
}

/// The times of `steps` steps, from [`T_START`] down to 0 inclusive (`steps + 1` values; the
/// network is called at the first `steps`).
pub fn times(steps: usize, grid: Grid) -> Result<Vec<f64>> {
    if steps == 0 || steps > NUM_TIMESTEPS {
        return Err(Error::invalid("steps", format!("{steps} is not in 1..={NUM_TIMESTEPS}")));
    }
    let n = steps;
    let mut t: Vec<f64> = match grid {
        Grid::Uniform => (0..n).map(|k| T_START * (1.0 - k as f64 / n as f64)).collect(),
        Grid::Fitted => {
            return Err(Error::invalid(
                "grid",
                "a fitted grid's times come from a pilot run (fit::fit_times)",
            ));
        }
        Grid::LogSnr | Grid::Edm if n == 1 => vec![T_START],
        Grid::LogSnr => uniform_in_log_snr(-EDM_SIGMA_MAX.ln(), -EDM_SIGMA_MIN.ln(), n),
        Grid::Edm => {
            let (a, b) = (EDM_SIGMA_MAX.powf(1.0 / EDM_RHO), EDM_SIGMA_MIN.powf(1.0 / EDM_RHO));
            (0..n).map(|k| t_of_edm_sigma((a + (b - a) * k as f64 / (n - 1) as f64).powf(EDM_RHO))).collect()
        }
    };
    t[0] = T_START;
    t.push(0.0);
    Ok(t)
}

/// `n` (≥ 2) times whose log-SNR runs uniformly from `from` to `to`.
fn uniform_in_log_snr(from: f64, to: f64, n: usize) -> Vec<f64> {
    (0..n).map(|k| t_of_log_snr(from + (to - from) * k as f64 / (n - 1) as f64)).collect()
}

/// Network calls of `steps` steps of `solver`.
pub fn network_calls(solver: Solver, steps: usize) -> usize {
    match solver {
        Solver::Heun => 2 * steps - 1,
        _ => steps,
    }
}

/// The image and noise the solvers step with at time `t` > 0 (one network call for the batch),
/// consistent with each other (`x = cos φ·x̂ + sin φ·ε̂`) on `field`, and the network's own image
/// prediction.
fn predict(model: &impl Denoiser, x: Tensor<5>, t: f64, field: Field) -> (Tensor<5>, Tensor<5>, Tensor<5>) {
    let [batch, ..] = x.dims();
    let (eps, x0_head) = model.predict(x.clone(), &vec![t as f32; batch]);
    let (s, c) = phi(t).sin_cos();
    let x0 = match field {
        Field::Official => x0_head.clone() * (s * s) + (x.clone() - eps * s) * c,
        Field::Image => x0_head.clone(),
    };
    let eps = (x - x0.clone() * c) / s;
    (x0, eps, x0_head)
}

/// Integrates from `x_start` (pure noise, taken to be at t = 999) to t = 0 in `steps` steps;
/// returns the final state and the network's last image prediction. `on_step(done, total)` reports
/// progress in network calls.
pub fn solve(
    model: &impl Denoiser,
    x_start: Tensor<5>,
    steps: usize,
    solver: Solver,
    grid: Grid,
    field: Field,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<SampleOutput> {
    integrate(model, x_start, &times(steps, grid)?, solver, field, on_step)
}

/// Integrates from `x_start` at `t[0]` through the times `t` (decreasing; a last time of 0
/// is the exact last step) on `field`; returns the state at the last time and the network's
/// last image prediction.
pub fn integrate(
    model: &impl Denoiser,
    x_start: Tensor<5>,
    t: &[f64],
    solver: Solver,
    field: Field,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<SampleOutput> {
    integrate_observed(model, x_start, t, solver, field, on_step, &mut |_, _, _, _| {})
}

/// [`integrate`], showing `observe(k, x, x̂₀, ε̂)` each network call at `t[k]` of the steps (not
/// Heun's second calls): the state the network saw and the two predictions stepped with.
pub(crate) fn integrate_observed(
    model: &impl Denoiser,
    x_start: Tensor<5>,
    t: &[f64],
    solver: Solver,
    field: Field,
    on_step: &mut dyn FnMut(usize, usize),
    observe: &mut dyn FnMut(usize, &Tensor<5>, &Tensor<5>, &Tensor<5>),
) -> Result<SampleOutput> {
    if t.len() < 2 || t.windows(2).any(|w| w[1] >= w[0] || w[1] < 0.0) {
        return Err(Error::invalid("steps", "the times must decrease to a value ≥ 0"));
    }
    let steps = t.len() - 1;
    let calls = network_calls(solver, steps);
    let mut done = 0;
    let mut call = |on_step: &mut dyn FnMut(usize, usize)| {
        done += 1;
        on_step(done, calls);
    };
    let mut x = x_start;
    // (x̂₀, λ) of the previous two evaluations, newest first (multistep solvers).
    let mut history: Vec<(Tensor<5>, f64)> = Vec::with_capacity(2);
    // UniPC: the state the last step started from, and its time.
    let mut start: Option<(Tensor<5>, f64)> = None;
    let mut last_x0 = None;
    for k in 0..steps {
        let (ti, tj) = (t[k], t[k + 1]);
        let (x0, eps, x0_head) = predict(model, x.clone(), ti, field);
        call(on_step);
        observe(k, &x, &x0, &eps);
        if let Some((xs, ts)) = start.take() {
            // UniC: the step ts → ti again, with the prediction at ti (x0) among its nodes.
            x = unic(&xs, ts, ti, &x0, &history);
        }
        if tj == 0.0 {
            // The exact last step: at t = 0 the state is the image.
            last_x0 = Some(x0_head);
            x = x0;
            break;
        }
        x = match solver {
            Solver::Ddim => ddim(&x0, eps, tj),
            Solver::DpmPp2m | Solver::DpmPp3m | Solver::UniPc => {
                if solver == Solver::UniPc {
                    start = Some((x.clone(), ti));
                }
                // UniPC's predictor is DPM-Solver++(2M).
                let order = if solver == Solver::DpmPp3m { 3 } else { 2 };
                let next = multistep(order, x, &x0, ti, tj, &history);
                history.insert(0, (x0.clone(), log_snr(ti)));
                history.truncate(2);
                next
            }
            Solver::Heun => {
                let (ci, cj) = (phi(ti).cos(), phi(tj).cos());
                let (si, sj) = (edm_sigma(ti), edm_sigma(tj));
                let y = x / ci;
                let d = (y.clone() - x0.clone()) / si;
                let y_euler = y.clone() + d.clone() * (sj - si);
                let (x0_j, _, _) = predict(model, y_euler.clone() * cj, tj, field);
                call(on_step);
                let d_j = (y_euler - x0_j) / sj;
                (y + (d + d_j) * (0.5 * (sj - si))) * cj
            }
        };
        last_x0 = Some(x0_head);
    }
    Ok(SampleOutput { x, x0: last_x0.expect("at least one step") })
}

/// What the step formulas compute with: tensors when sampling, and symbolic combinations of
/// recorded states when a grid is fitted (`super::fit`), so that both use the same formulas.
pub(crate) trait Linear:
    Clone + Add<Output = Self> + Sub<Output = Self> + Mul<f64, Output = Self> + Div<f64, Output = Self>
{
}

impl<T> Linear for T where
    T: Clone + Add<Output = T> + Sub<Output = T> + Mul<f64, Output = T> + Div<f64, Output = T>
{
}

/// DDIM's step to `tj`: the rotation `cos φ_j·x̂₀ + sin φ_j·ε̂`.
pub(crate) fn ddim<V: Linear>(x0: &V, eps: V, tj: f64) -> V {
    let pj = phi(tj);
    x0.clone() * pj.cos() + eps * pj.sin()
}

/// DPM-Solver++ of `order` (≤ 3; lower while `history` is short) from `x` at `ti` to `tj` > 0,
/// with the image prediction `x0` at `ti` and the earlier ones in `history` (newest first,
/// with their λ).
pub(crate) fn multistep<V: Linear>(order: usize, x: V, x0: &V, ti: f64, tj: f64, history: &[(V, f64)]) -> V {
    let (pi, pj) = (phi(ti), phi(tj));
    let (li, lj) = (log_snr(ti), log_snr(tj));
    let h = lj - li;
    let si = NOISE_STD * pi.sin();
    let (aj, sj) = (pj.cos(), NOISE_STD * pj.sin());
    let phi1 = (-h).exp_m1();
    // First order: x_j = (σ_j/σ_i)·x − α_j·φ₁·x̂₀.
    let next = x * (sj / si) - x0.clone() * (aj * phi1);
    let used = history.len().min(order.saturating_sub(1));
    if used == 0 {
        return next;
    }
    let (m1, l1) = &history[0];
    let r0 = (li - l1) / h;
    let d1_0 = (x0.clone() - m1.clone()) / r0;
    if used == 1 {
        return next - d1_0 * (0.5 * aj * phi1);
    }
    let (m2, l2) = &history[1];
    let r1 = (l1 - l2) / h;
    let d1_1 = (m1.clone() - m2.clone()) / r1;
    // With x̂₀(λ) ≈ m + m'·(λ−λᵢ) + m''·(λ−λᵢ)²/2, the exponential integrator
    // x_j = (σ_j/σ_i)·x + σ_j ∫ e^λ x̂₀(λ) dλ is
    // (σ_j/σ_i)·x − α_j·φ₁·m + α_j·φ₂·(h·m') − α_j·φ₃·(h²·m'') with
    // φ₂ = φ₁/h + 1, φ₃ = φ₂/h − 1/2; the divided differences give
    // h·m' = d1 and h²·m'' = d2 up to O(h³).
    let d1 = d1_0.clone() + (d1_0.clone() - d1_1.clone()) * (r0 / (r0 + r1));
    let d2 = (d1_0 - d1_1) * (2.0 / (r0 + r1));
    let phi2 = phi1 / h + 1.0;
    let phi3 = phi2 / h - 0.5;
    next + d1 * (aj * phi2) - d2 * (aj * phi3)
}

/// The UniC-2 corrector (UniPC's `B(h) = e^h − 1` variant, data prediction): the step from
/// `xs` at `ts` to `tt` recomputed from the image predictions at `ts` (`history[0]`), at one
/// earlier time (`history[1]`, when there is one) and at `tt` (`x0_t`):
/// `x_t = (σ_t/σ_s)·x_s − α_t·φ₁·m₀ − α_t·B(h)·(Σ ρ_k·D_k)`, `D_k = (m_k − m₀)/r_k`, with the ρ
/// solving `Σ ρ_k r_k^(i−1) = i!·φ_{i+1}(h)/B(h)` (i = 1, 2); one node: ρ = ½.
pub(crate) fn unic<V: Linear>(xs: &V, ts: f64, tt: f64, x0_t: &V, history: &[(V, f64)]) -> V {
    let (m0, ls) = &history[0];
    let lt = log_snr(tt);
    let h = lt - ls;
    let (ps, pt) = (phi(ts), phi(tt));
    let (ss, at, st) = (NOISE_STD * ps.sin(), pt.cos(), NOISE_STD * pt.sin());
    let hh = -h;
    let phi1 = hh.exp_m1();
    let b_h = phi1;
    let base = xs.clone() * (st / ss) - m0.clone() * (at * phi1);
    let d_t = x0_t.clone() - m0.clone();
    let Some((m1, l1)) = history.get(1) else {
        return base - d_t * (0.5 * at * b_h);
    };
    // b_i = i!·h_phi_(i+1)/B(h) with h_phi_2 = φ₁/hh − 1, h_phi_3 = h_phi_2/hh − 1/2.
    let hphi2 = phi1 / hh - 1.0;
    let hphi3 = hphi2 / hh - 0.5;
    let (b1, b2) = (hphi2 / b_h, 2.0 * hphi3 / b_h);
    let rk = (l1 - ls) / h;
    // [1 1; rk 1]·[ρ₀ ρ₁]ᵀ = [b1 b2]ᵀ
    let rho0 = (b1 - b2) / (1.0 - rk);
    let rho1 = b1 - rho0;
    let d1 = (m1.clone() - m0.clone()) / rk;
    base - (d1 * rho0 + d_t * rho1) * (at * b_h)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::diffusion::exact::Mixture;
    use crate::diffusion::{NoiseSource, SeededNoise};

    fn host(t: Tensor<5>) -> Vec<f64> {
        crate::device::to_host(t, "test").unwrap().into_iter().map(f64::from).collect()
    }

    fn gaussian(dim: usize, mean: f64, std: f64) -> Mixture {
        Mixture { weights: vec![1.0], means: vec![vec![mean; dim]], stds: vec![std], per_voxel: false }
    }

    #[test]
    fn grids_start_at_999_end_at_0_and_follow_their_spacing() {
        for grid in [Grid::Uniform, Grid::LogSnr, Grid::Edm] {
            let t = times(10, grid).unwrap();
            assert_eq!((t.len(), t[0], t[10]), (11, T_START, 0.0));
            assert!(t.windows(2).all(|w| w[1] < w[0]), "{grid:?}: {t:?}");
        }
        // After the first call at t = 999: uniform in λ up to EDM's σ_min (λ = −ln 0.002), the
        // spacing that starts at σ_max = 80.
        let l: Vec<f64> = times(6, Grid::LogSnr).unwrap()[1..6].iter().map(|&t| log_snr(t)).collect();
        let d: Vec<f64> = l.windows(2).map(|w| w[1] - w[0]).collect();
        let step = (EDM_SIGMA_MAX.ln() - EDM_SIGMA_MIN.ln()) / 5.0;
        assert!(d.iter().all(|x| (x - step).abs() < 1e-9), "uniform in λ: {d:?}");
        assert!((l[4] + EDM_SIGMA_MIN.ln()).abs() < 1e-9);
        let sigma: Vec<f64> = times(6, Grid::Edm).unwrap()[1..6].iter().map(|&t| edm_sigma(t)).collect();
        assert!((sigma[4] - EDM_SIGMA_MIN).abs() < 1e-12, "{sigma:?}");
        assert!(times(0, Grid::Uniform).is_err());
    }

    /// Data that is one point: one DDIM step to any time is the exact ODE solution (the noise
    /// estimate is then constant along the path), and the last step lands on the point.
    #[test]
    fn ddim_is_exact_for_a_single_point() {
        let device = Device::flex();
        let point = gaussian(8, 0.3, 0.0);
        let mut noise = SeededNoise::new(1, NOISE_STD);
        let x = noise.draw([4, 1, 2, 2, 2], &device).unwrap();
        let mid =
            integrate(&point, x.clone(), &[T_START, 400.0], Solver::Ddim, Field::Official, &mut |_, _| {})
                .unwrap()
                .x;
        let (p0, p1) = (phi(T_START), phi(400.0));
        let want: Vec<f64> = host(x.clone())
            .iter()
            .map(|v| {
                let eps = (v - p0.cos() * 0.3) / p0.sin();
                p1.cos() * 0.3 + p1.sin() * eps
            })
            .collect();
        let err = host(mid).iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-6, "one DDIM step off the exact path by {err}");
        let end =
            solve(&point, x, 1, Solver::Ddim, Grid::Uniform, Field::Official, &mut |_, _| {}).unwrap().x;
        assert!(host(end).iter().all(|v| (v - 0.3).abs() < 1e-6));
    }

    /// A denoiser whose two heads disagree, as a trained network's do: the exact image head
    /// of one Gaussian and a noise head off the noise that image implies.
    struct TwoHeads(Mixture);

    impl Denoiser for TwoHeads {
        fn predict(&self, x_t: Tensor<5>, t: &[f32]) -> (Tensor<5>, Tensor<5>) {
            let (eps, x0) = self.0.predict(x_t, t);
            (eps * 1.2 + 0.05, x0)
        }
    }

    /// On the official field a few-step solver converges to the official deterministic
    /// sampler's volumes from the same noise; on the image head's it lands elsewhere.
    #[test]
    fn the_official_field_reproduces_the_official_sampler() {
        use crate::diffusion::sampler::{Sampler, sample};
        let device = Device::flex();
        let model = TwoHeads(gaussian(8, 0.2, 0.3));
        let x = SeededNoise::new(5, NOISE_STD).draw([64, 1, 2, 2, 2], &device).unwrap();
        let mut noise = SeededNoise::new(6, NOISE_STD);
        let official = host(
            sample(&model, x.clone(), 1000, Sampler::Deterministic, &mut noise, &mut |_, _| {}).unwrap().x,
        );
        let rms = |field: Field| {
            let end =
                solve(&model, x.clone(), 20, Solver::UniPc, Grid::LogSnr, field, &mut |_, _| {}).unwrap();
            let end = host(end.x);
            (end.iter().zip(&official).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / end.len() as f64).sqrt()
        };
        let (on_official, on_image) = (rms(Field::Official), rms(Field::Image));
        eprintln!(
            "UniPC 20 steps vs the official sampler at 1000: official field {on_official:.5}, image field {on_image:.5}"
        );
        assert!(on_official < 0.01 && on_official < 0.1 * on_image, "{on_official} vs {on_image}");
    }

    /// RMS error at t = 0 against the closed-form flow of one Gaussian, from the same noise, on
    /// a grid uniform in λ from t = 999 to t = 0.01 (so that the last step's truncation, of the
    /// order of σ² there, stays below the solvers' own errors).
    fn flow_error(solver: Solver, steps: usize) -> f64 {
        let device = Device::flex();
        let data = gaussian(8, 0.2, 0.5);
        let mut noise = SeededNoise::new(3, NOISE_STD);
        let x = noise.draw([64, 1, 2, 2, 2], &device).unwrap();
        let exact = data.single_gaussian_flow(&host(x.clone()), T_START);
        let mut t = uniform_in_log_snr(log_snr(T_START), log_snr(0.01), steps);
        t[0] = T_START;
        t.push(0.0);
        let end = integrate(&data, x, &t, solver, Field::Official, &mut |_, _| {}).unwrap();
        let got = host(end.x);
        (got.iter().zip(&exact).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / got.len() as f64).sqrt()
    }

    /// Each solver's error falls at its order as the steps double (log₂ of the error ratio).
    #[test]
    fn solvers_converge_at_their_order() {
        for (solver, order) in [
            (Solver::Ddim, 1.0),
            (Solver::DpmPp2m, 2.0),
            (Solver::DpmPp3m, 3.0),
            (Solver::UniPc, 3.0),
            (Solver::Heun, 2.0),
        ] {
            let e: Vec<f64> = [32, 64, 128].iter().map(|&n| flow_error(solver, n)).collect();
            let slopes: Vec<f64> = e.windows(2).map(|w| (w[0] / w[1]).log2()).collect();
            eprintln!("{solver:?}: errors {e:?}, slopes {slopes:?}");
            assert!(
                slopes.iter().all(|&s| s > order - 0.35),
                "{solver:?}: slopes {slopes:?} below order {order}"
            );
        }
    }

    /// On the benchmark's Gaussian mixture, DPM-Solver++(2M) with the UniC corrector (UniPC) in
    /// 20 steps, and DPM-Solver++(2M) alone in 50, end at least as close to the data (sliced W1
    /// to the exact law, the same starting noise) as the official deterministic sampler in
    /// 1000 — 50× and 20× fewer network calls (every solver and step count: the tables of
    /// `docs/samplers.md`).
    #[test]
    fn few_step_solvers_are_as_close_as_the_official_sampler_in_1000() {
        use crate::diffusion::exact::distance;
        use crate::diffusion::sampler::{Sampler, sample};
        let device = Device::flex();
        let [(_, data, edge), _] = crate::diffusion::exact::benchmark_mixtures();
        let n = 4096;
        let run = |sampler: Sampler, steps: usize| {
            let mut noise = SeededNoise::new(11, NOISE_STD);
            let x = noise.draw([n, 1, edge, edge, edge], &device).unwrap();
            let out = sample(&data, x, steps, sampler, &mut noise, &mut |_, _| {}).unwrap();
            let v = host(out.x);
            let sets: Vec<Vec<f64>> = v.chunks(v.len() / n).map(<[f64]>::to_vec).collect();
            distance(&data, &sets).sliced_w1
        };
        let unipc =
            run(Sampler::Ode { solver: Solver::UniPc, grid: Grid::LogSnr, field: Field::Official }, 20);
        let dpm =
            run(Sampler::Ode { solver: Solver::DpmPp2m, grid: Grid::LogSnr, field: Field::Official }, 50);
        let official = run(Sampler::Deterministic, 1000);
        eprintln!(
            "sliced W1 to the data: UniPC 20 steps {unipc:.4}, DPM-Solver++(2M) 50 steps {dpm:.4}, \
             official deterministic 1000 steps {official:.4}"
        );
        assert!(
            unipc <= official,
            "UniPC at 20 steps {unipc:.4} vs the official sampler at 1000 {official:.4}"
        );
        assert!(
            dpm <= official,
            "DPM-Solver++(2M) at 50 steps {dpm:.4} vs the official sampler at 1000 {official:.4}"
        );
    }
}
