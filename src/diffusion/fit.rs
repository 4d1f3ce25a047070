//! Time grids fitted to the model (not in the official code): the `steps` times at which a
//! solver's local errors along the model's own trajectories add up to the least.
//!
//! A pilot batch of noise is integrated once with UniPC on a fine grid of candidate times
//! ([`candidates_for`]: uniform in log-SNR over EDM's range, the first at t = 999), on the field
//! the samples use: the reference path. At each candidate the state and the two predictions the
//! solvers step with are recorded (on a strided subset of the voxels).
//! Every solver step is a linear combination of recorded states and predictions, so the local
//! error of a step from candidate `j` to `k` (after `i`, for the multistep solvers) — the
//! distance between where the step lands from the reference path and the reference path
//! itself — is a quadratic form in the Gram matrix of the recordings, for all triples at once.
//! Dynamic programming then picks the `steps` candidates, from the first to the exact last
//! step to t = 0, with the least sum of local errors (RMS per voxel). This is the schedule
//! search of GITS (Chen et al. 2024, "On the trajectory regularity of ODE-based diffusion
//! sampling"), with the solver's own step instead of a first-order one.
//!
//! The pilot costs [`candidates_for`] network calls on its batch, once per model and solver; the
//! grid depends on the model and on nothing the samples are judged by. What it buys on the
//! exact benchmark and on the demo's model: the `fitted` rows of `docs/samplers.md`.

use std::ops::{Add, Div, Mul, Sub};

use burn::tensor::{Int, Tensor, TensorData};

use super::Denoiser;
use super::ode::{Field, Grid, Solver, ddim, integrate_observed, log_snr, multistep, times, unic};
use crate::error::{Error, Result};

/// Candidate times of the fine grid (network calls of the pilot): 40, or twice the steps.
pub fn candidates_for(steps: usize) -> usize {
    (2 * steps).max(40)
}
/// The most steps a grid is fitted for (the search grows with the cube of the candidates).
pub const MAX_STEPS: usize = 100;
/// Voxels per pilot volume the errors are measured on (a strided subset of larger volumes).
pub const VOXELS: usize = 32_768;

/// A fitted grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    /// `steps + 1` times from t = 999 down to 0 (for [`super::ode::integrate`]).
    pub times: Vec<f64>,
    /// The sum of the local errors (RMS per voxel) the grid was chosen by.
    pub local_error: f64,
    /// The same sum for the candidates nearest to the `logsnr` grid of the same steps.
    pub logsnr_local_error: f64,
}

/// A linear combination `Σ c·v` of recorded vectors (sorted by index).
#[derive(Debug, Clone, Default)]
struct Comb(Vec<(usize, f64)>);

impl Comb {
    fn of(index: usize) -> Self {
        Comb(vec![(index, 1.0)])
    }
}

impl Add for Comb {
    type Output = Comb;
    fn add(self, rhs: Comb) -> Comb {
        let (mut a, mut b) = (self.0.into_iter().peekable(), rhs.0.into_iter().peekable());
        let mut out = Vec::new();
        loop {
            match (a.peek(), b.peek()) {
                (Some(&(i, x)), Some(&(j, y))) if i == j => {
                    out.push((i, x + y));
                    a.next();
                    b.next();
                }
                (Some(&(i, _)), Some(&(j, _))) if i < j => out.extend(a.next()),
                (Some(_), Some(_)) => out.extend(b.next()),
                (Some(_), None) => out.extend(a.next()),
                (None, Some(_)) => out.extend(b.next()),
                (None, None) => return Comb(out),
            }
        }
    }
}

impl Sub for Comb {
    type Output = Comb;
    fn sub(self, rhs: Comb) -> Comb {
        self + rhs * -1.0
    }
}

impl Mul<f64> for Comb {
    type Output = Comb;
    fn mul(mut self, s: f64) -> Comb {
        self.0.iter_mut().for_each(|(_, c)| *c *= s);
        self
    }
}

impl Div<f64> for Comb {
    type Output = Comb;
    fn div(self, s: f64) -> Comb {
        self * (1.0 / s)
    }
}

/// The vectors of candidate `k`: state, image prediction, noise prediction.
fn state(k: usize) -> Comb {
    Comb::of(3 * k)
}
fn image(k: usize) -> Comb {
    Comb::of(3 * k + 1)
}
fn noise(k: usize) -> Comb {
    Comb::of(3 * k + 2)
}

/// Fits the times of `steps` steps of `solver` on `field` to `model`, from the pilot noise
/// `pilot` (`[n, 1, S, S, S]`, at t = 999): [`candidates_for`] network calls on the pilot
/// batch, errors on at most [`VOXELS`] voxels per volume. `on_step(done, total)` reports the
/// pilot's calls.
pub fn fit_times(
    model: &impl Denoiser,
    pilot: Tensor<5>,
    solver: Solver,
    field: Field,
    steps: usize,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Fitted> {
    let candidates = candidates_for(steps);
    if solver == Solver::Heun {
        return Err(Error::invalid(
            "grid",
            "a fitted grid is for the one-call solvers (ddim, dpm2m, dpm3m, unipc)",
        ));
    }
    if steps > MAX_STEPS {
        return Err(Error::invalid(
            "steps",
            format!("a fitted grid is for at most {MAX_STEPS} steps, not {steps}"),
        ));
    }
    if steps == 0 {
        return Err(Error::invalid("steps", "a fitted grid needs at least one step"));
    }
    // The `logsnr` grid of `candidates` steps: uniform in λ over EDM's range, first at 999.
    let t = times(candidates, Grid::LogSnr)?;
    let [n, ..] = pilot.dims();
    let per = pilot.dims()[1..].iter().product::<usize>();
    let stride = per.div_ceil(VOXELS);
    // The strided voxels, picked on the device so that only they are copied to the host.
    let picked: Vec<i64> = (0..per).step_by(stride).map(|i| i as i64).collect();
    let picked = (stride > 1).then(|| {
        let len = picked.len();
        Tensor::<1, Int>::from_data(TensorData::new(picked, [len]), &pilot.device())
    });
    let mut rec: Vec<Vec<f32>> = Vec::with_capacity(3 * candidates);
    let mut failed = None;
    let mut keep = |k: usize, what: &str, v: &Tensor<5>| -> Vec<f32> {
        if failed.is_some() {
            return Vec::new();
        }
        let flat: Tensor<2> = v.clone().reshape([n, per]);
        let flat = match &picked {
            Some(idx) => flat.select(1, idx.clone()),
            None => flat,
        };
        let kept: Vec<f32> = match crate::device::to_host(flat, "the pilot trajectory") {
            Ok(kept) => kept,
            Err(e) => {
                failed = Some(e);
                return Vec::new();
            }
        };
        if let Some(bad) = crate::weights::non_finite(&kept) {
            failed = Some(Error::invalid(
                "grid",
                format!("the pilot run for the fitted grid diverged: its {what} at t = {:.1} {bad}", t[k]),
            ));
        }
        kept
    };
    integrate_observed(model, pilot, &t, Solver::UniPc, field, on_step, &mut |k, x, x0, eps| {
        for (what, v) in [("state", x), ("image prediction", x0), ("noise prediction", eps)] {
            let kept = keep(k, what, v);
            rec.push(kept);
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let len = rec[0].len() as f64;
    // The Gram matrix of the recordings, per voxel, in float64 (local errors are differences of
    // nearly equal vectors).
    let m = rec.len();
    let mut gram = vec![0f64; m * m];
    for a in 0..m {
        for b in a..m {
            let dot: f64 = rec[a].iter().zip(&rec[b]).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>() / len;
            gram[a * m + b] = dot;
            gram[b * m + a] = dot;
        }
    }
    drop(rec);
    let gram = &gram;
    let norm = |c: &Comb| -> f64 {
        let q: f64 =
            c.0.iter().flat_map(|&(a, x)| c.0.iter().map(move |&(b, y)| x * y * gram[a * m + b])).sum();
        q.max(0.0).sqrt()
    };
    let last = candidates; // index of t = 0
    // The reference image: the path's end (its last step is the exact one, x = x̂₀).
    let end = image(candidates - 1);
    let cost = |i: Option<usize>, j: usize, k: usize| -> f64 {
        if k == last {
            return norm(&(image(j) - end.clone()));
        }
        let hist: Vec<(Comb, f64)> = i.map(|i| (image(i), log_snr(t[i]))).into_iter().collect();
        let mut pred = match solver {
            Solver::Ddim => ddim(&image(j), noise(j), t[k]),
            // DPM-Solver++(3M) is fitted with its second-order step (one earlier node).
            _ => multistep(2, state(j), &image(j), t[j], t[k], &hist),
        };
        if solver == Solver::UniPc {
            let mut nodes = vec![(image(j), log_snr(t[j]))];
            nodes.extend(hist);
            pred = unic(&state(j), t[j], t[k], &image(k), &nodes);
        }
        norm(&(pred - state(k)))
    };
    let path = best_path(candidates, steps, &cost);
    let local_error = path_cost(&path, &cost);
    // The log-SNR grid of the same steps, snapped to the candidates.
    let reference = times(steps, Grid::LogSnr)?;
    let mut snapped: Vec<usize> = reference[..steps]
        .iter()
        .map(|&r| {
            (0..candidates)
                .min_by(|&a, &b| {
                    (log_snr(t[a]) - log_snr(r)).abs().total_cmp(&(log_snr(t[b]) - log_snr(r)).abs())
                })
                .unwrap_or(0)
        })
        .collect();
    snapped[0] = 0;
    snapped.dedup();
    snapped.push(last);
    let logsnr_local_error = path_cost(&snapped, &cost);
    Ok(Fitted { times: path.iter().map(|&p| t[p]).collect(), local_error, logsnr_local_error })
}

/// The summed cost of the steps along `path` (candidate indices, the first 0, the last the end).
fn path_cost(path: &[usize], cost: &dyn Fn(Option<usize>, usize, usize) -> f64) -> f64 {
    (0..path.len() - 1).map(|s| cost(s.checked_sub(1).map(|p| path[p]), path[s], path[s + 1])).sum()
}

/// The path `0 = p₀ < p₁ < … < p_steps = m` (m = `candidates`, the end) with the least summed
/// `cost(p_{s−1}, p_s, p_{s+1})` (the previous point `None` for the first step), by dynamic
/// programming over the last two points.
fn best_path(m: usize, steps: usize, cost: &dyn Fn(Option<usize>, usize, usize) -> f64) -> Vec<usize> {
    if steps == 1 {
        return vec![0, m];
    }
    // The costs of every step (i, j) → k with 0 ≤ i < j < k ≤ m, and the first steps 0 → k.
    let idx = |i: usize, j: usize, k: usize| (i * (m + 1) + j) * (m + 1) + k;
    let mut table = vec![f64::INFINITY; (m + 1) * (m + 1) * (m + 1)];
    for i in 0..m {
        for j in i + 1..m {
            for k in j + 1..=m {
                table[idx(i, j, k)] = cost(Some(i), j, k);
            }
        }
    }
    let first: Vec<f64> = (0..=m).map(|k| if k == 0 { f64::INFINITY } else { cost(None, 0, k) }).collect();
    // f[(i, j)]: the least cost of s steps ending with the points i, j (j < m until the last).
    let pair = |i: usize, j: usize| i * (m + 1) + j;
    let mut f = vec![f64::INFINITY; (m + 1) * (m + 1)];
    for j in 1..m {
        f[pair(0, j)] = first[j];
    }
    let mut back: Vec<Vec<usize>> = Vec::with_capacity(steps);
    for s in 2..=steps {
        let mut g = vec![f64::INFINITY; (m + 1) * (m + 1)];
        let mut arg = vec![usize::MAX; (m + 1) * (m + 1)];
        // The s-th point: the end at the last step, before it a candidate < m.
        let ks: Vec<usize> = if s == steps { vec![m] } else { (1..m).collect() };
        for &k in &ks {
            for j in 1..k {
                for i in 0..j {
                    let v = f[pair(i, j)] + table[idx(i, j, k)];
                    if v < g[pair(j, k)] {
                        g[pair(j, k)] = v;
                        arg[pair(j, k)] = i;
                    }
                }
            }
        }
        f = g;
        back.push(arg);
    }
    let j = (1..m).min_by(|&a, &b| f[pair(a, m)].total_cmp(&f[pair(b, m)])).expect("m ≥ 2");
    let mut path = vec![m, j];
    let (mut j, mut k) = (j, m);
    for arg in back.iter().rev() {
        let i = arg[pair(j, k)];
        path.push(i);
        (j, k) = (i, j);
    }
    path.reverse();
    debug_assert_eq!(path.len(), steps + 1);
    path
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::diffusion::exact::{benchmark_mixtures, distance};
    use crate::diffusion::ode::{Grid, integrate, times};
    use crate::diffusion::{NOISE_STD, NoiseSource, SeededNoise};

    /// The dynamic programme finds the cheapest path that brute force finds.
    #[test]
    fn best_path_is_the_cheapest() {
        let m = 9;
        // A fixed pseudo-random cost of every (i, j, k).
        let cost = |i: Option<usize>, j: usize, k: usize| {
            let h = (i.map_or(97, |i| i + 1) * 7919 + j * 104_729 + k * 1_299_709) % 1000;
            h as f64 / 1000.0 + 0.05 * (k - j) as f64
        };
        for steps in 1..m {
            let mut best = (f64::INFINITY, Vec::new());
            // Every subset of 1..m of size steps − 1, as a bit mask.
            for mask in 0u32..(1 << (m - 1)) {
                if mask.count_ones() as usize != steps - 1 {
                    continue;
                }
                let mut path = vec![0];
                path.extend((1..m).filter(|p| mask & (1 << (p - 1)) != 0));
                path.push(m);
                let c = path_cost(&path, &cost);
                if c < best.0 {
                    best = (c, path);
                }
            }
            let found = best_path(m, steps, &cost);
            assert_eq!(found.len(), steps + 1);
            assert!((path_cost(&found, &cost) - best.0).abs() < 1e-12, "{steps}: {found:?} vs {:?}", best.1);
        }
    }

    /// The step formulas on symbolic combinations give what they give on tensors.
    #[test]
    fn combinations_evaluate_like_tensors() {
        let device = Device::flex();
        // Vector v of candidate k is values[v] (state 3k, image 3k + 1, noise 3k + 2).
        let values: Vec<Vec<f32>> =
            (0..9).map(|k| (0..5).map(|i| ((k * 5 + i) as f32 * 0.37).sin()).collect()).collect();
        let v = |c: Comb| {
            Tensor::<5>::from_data(TensorData::new(values[c.0[0].0].clone(), [1, 1, 5, 1, 1]), &device)
        };
        let (t0, t1, t2, t3) = (700.0, 500.0, 300.0, 150.0);
        let sym_hist = vec![(image(1), log_snr(t1)), (image(0), log_snr(t0))];
        let ten_hist = vec![(v(image(1)), log_snr(t1)), (v(image(0)), log_snr(t0))];
        let cases = [
            (
                multistep(3, state(2), &image(2), t2, t3, &sym_hist),
                multistep(3, v(state(2)), &v(image(2)), t2, t3, &ten_hist),
            ),
            (
                multistep(2, state(2), &image(2), t2, t3, &sym_hist[..1]),
                multistep(2, v(state(2)), &v(image(2)), t2, t3, &ten_hist[..1]),
            ),
            (ddim(&image(2), noise(2), t3), ddim(&v(image(2)), v(noise(2)), t3)),
            (
                unic(&state(1), t1, t2, &image(2), &sym_hist),
                unic(&v(state(1)), t1, t2, &v(image(2)), &ten_hist),
            ),
        ];
        for (n, (sym, ten)) in cases.into_iter().enumerate() {
            let got = crate::device::to_host(ten, "test").unwrap();
            for (i, b) in got.iter().enumerate() {
                let a: f64 = sym.0.iter().map(|&(k, x)| x * values[k][i] as f64).sum();
                assert!((a - *b as f64).abs() < 1e-5, "case {n}: {a} vs {b}");
            }
        }
    }

    /// On the per-voxel mixture of the exact benchmark, UniPC at 10 steps on the fitted grid
    /// (from pilot noise of another seed) ends much closer to the data than on the log-SNR
    /// grid, and the fit's own error estimate says so too.
    #[test]
    fn a_fitted_grid_beats_the_log_snr_grid() {
        let device = Device::flex();
        let [_, (_, data, edge)] = benchmark_mixtures();
        let pilot = SeededNoise::new(12, NOISE_STD).draw([16, 1, edge, edge, edge], &device).unwrap();
        let fit = fit_times(&data, pilot, Solver::UniPc, Field::Official, 10, &mut |_, _| {}).unwrap();
        assert!(fit.local_error < fit.logsnr_local_error, "{fit:?}");
        let run = |t: &[f64]| {
            let n = 128;
            let x = SeededNoise::new(11, NOISE_STD).draw([n, 1, edge, edge, edge], &device).unwrap();
            let out = integrate(&data, x, t, Solver::UniPc, Field::Official, &mut |_, _| {}).unwrap().x;
            let v: Vec<f64> =
                crate::device::to_host(out, "test").unwrap().into_iter().map(f64::from).collect();
            let sets: Vec<Vec<f64>> = v.chunks(v.len() / n).map(<[f64]>::to_vec).collect();
            distance(&data, &sets).sliced_w1
        };
        let (fitted, logsnr) = (run(&fit.times), run(&times(10, Grid::LogSnr).unwrap()));
        eprintln!("UniPC, 10 steps, per-voxel mixture: fitted grid {fitted:.4}, log-SNR grid {logsnr:.4}");
        assert!(fitted < 0.5 * logsnr, "fitted {fitted:.4} vs log-SNR {logsnr:.4}");
        // A pilot volume larger than VOXELS is measured on its strided voxels (picked on the
        // device): 64³ = 8·32768, every eighth voxel; the same data, so much the same grid.
        let big = SeededNoise::new(12, NOISE_STD).draw([1, 1, 64, 64, 64], &device).unwrap();
        let fit_big = fit_times(&data, big, Solver::UniPc, Field::Official, 10, &mut |_, _| {}).unwrap();
        assert!(fit_big.local_error < fit_big.logsnr_local_error, "{fit_big:?}");
        assert!(run(&fit_big.times) < 0.5 * logsnr, "{fit_big:?}");
        assert!(
            fit_times(
                &data,
                SeededNoise::new(1, NOISE_STD).draw([1, 1, 2, 2, 2], &device).unwrap(),
                Solver::Heun,
                Field::Official,
                5,
                &mut |_, _| {}
            )
            .is_err()
        );
    }
}
