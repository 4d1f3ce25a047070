//! Data whose denoiser is known in closed form, for judging samplers without a trained model:
//! an isotropic Gaussian mixture in `S³` dimensions, and volumes whose voxels are independent
//! draws from a 1D mixture. Under PRDiT's process `x_t = α·x₀ + σ·z` (α = cos φ, σ = σ_d·sin φ),
//! component k of the data gives `x_t | k ~ N(α·μ_k, (α²s_k² + σ²)·I)`, so the exact
//! `E[x₀ | x_t]` is the responsibility-weighted sum of the per-component posterior means
//! `μ_k + α·s_k²/(α²s_k² + σ²)·(x_t − α·μ_k)`, and `ε̂ = (x_t − cos φ·x̂₀)/sin φ`. Computed on the
//! host in float64.

use burn::tensor::{Tensor, TensorData};
use chacha20::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use super::{Denoiser, NOISE_STD, angle};

/// An isotropic Gaussian mixture: component k has weight `weights[k]`, mean `means[k]`
/// (`dim` values) and standard deviation `stds[k]` in every coordinate. With `per_voxel`, the
/// mixture is one-dimensional (`dim` = 1 in `means`) and every voxel of a volume is an
/// independent draw from it.
#[derive(Debug, Clone)]
pub struct Mixture {
    pub weights: Vec<f64>,
    pub means: Vec<Vec<f64>>,
    pub stds: Vec<f64>,
    pub per_voxel: bool,
}

impl Mixture {
    /// Dimension of one component mean.
    pub fn dim(&self) -> usize {
        self.means[0].len()
    }

    /// The posterior mean E[x₀ | x_t] of one vector `x` (of `dim` values).
    fn posterior_mean(&self, x: &[f64], a: f64, s: f64, out: &mut [f64]) {
        let comps = || self.weights.iter().zip(&self.means).zip(&self.stds).map(|((w, m), sd)| (*w, m, *sd));
        let logp: Vec<f64> = comps()
            .map(|(w, m, sd)| {
                let v = a * a * sd * sd + s * s;
                let d2: f64 = x.iter().zip(m).map(|(xi, mi)| (xi - a * mi).powi(2)).sum();
                w.ln() - 0.5 * x.len() as f64 * v.ln() - 0.5 * d2 / v
            })
            .collect();
        let max = logp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let r: Vec<f64> = logp.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = r.iter().sum();
        out.iter_mut().for_each(|o| *o = 0.0);
        for ((_, m, sd), rc) in comps().zip(&r) {
            let v = a * a * sd * sd + s * s;
            let gain = a * sd * sd / v;
            let w = rc / total;
            for ((o, xi), mi) in out.iter_mut().zip(x).zip(m) {
                *o += w * (mi + gain * (xi - a * mi));
            }
        }
    }

    /// `n` exact draws of a volume of `voxels` values (flattened, one vector per draw).
    pub fn draw(&self, n: usize, voxels: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let pick = |rng: &mut ChaCha8Rng| {
            let u: f64 = rng.random();
            let mut acc = 0.0;
            for (c, w) in self.weights.iter().enumerate() {
                acc += w;
                if u < acc {
                    return c;
                }
            }
            self.weights.len() - 1
        };
        (0..n)
            .map(|_| {
                if self.per_voxel {
                    (0..voxels)
                        .map(|_| {
                            let c = pick(&mut rng);
                            let z: f64 = StandardNormal.sample(&mut rng);
                            self.means[c][0] + self.stds[c] * z
                        })
                        .collect()
                } else {
                    let c = pick(&mut rng);
                    (0..voxels)
                        .map(|i| {
                            let z: f64 = StandardNormal.sample(&mut rng);
                            self.means[c][i] + self.stds[c] * z
                        })
                        .collect()
                }
            })
            .collect()
    }

    /// The exact image at t = 0 that the probability-flow ODE reaches from `x` at time `t`, for
    /// a single-component mixture (the flow keeps `(x_t − α·μ)/√(α²s² + σ²)` fixed).
    pub fn single_gaussian_flow(&self, x: &[f64], t: f64) -> Vec<f64> {
        assert_eq!(self.weights.len(), 1, "closed-form flow of one Gaussian only");
        let p = angle(t);
        let (a, s) = (p.cos(), NOISE_STD * p.sin());
        let sd = self.stds[0];
        let scale = sd / (a * a * sd * sd + s * s).sqrt();
        x.iter()
            .enumerate()
            .map(|(i, xi)| {
                let m = self.means[0][self.mean_index(i)];
                m + scale * (xi - a * m)
            })
            .collect()
    }

    fn mean_index(&self, i: usize) -> usize {
        if self.per_voxel { 0 } else { i % self.dim() }
    }
}

impl Denoiser for Mixture {
    fn predict(&self, x_t: Tensor<5>, t: &[f32]) -> (Tensor<5>, Tensor<5>) {
        let dims = x_t.dims();
        let device = x_t.device();
        let batch = dims[0];
        let values = crate::device::to_host(x_t, "the state").expect("host copy");
        let per = values.len() / batch;
        let mut x0 = vec![0f32; values.len()];
        let mut eps = vec![0f32; values.len()];
        for b in 0..batch {
            let p = angle(t[b] as f64);
            let (a, s) = (p.cos(), NOISE_STD * p.sin());
            let x: Vec<f64> = values[b * per..(b + 1) * per].iter().map(|&v| v as f64).collect();
            let mut m = vec![0.0; per];
            if self.per_voxel {
                let mut one = [0.0];
                for (i, xi) in x.iter().enumerate() {
                    self.posterior_mean(&[*xi], a, s, &mut one);
                    m[i] = one[0];
                }
            } else {
                self.posterior_mean(&x, a, s, &mut m);
            }
            for i in 0..per {
                x0[b * per + i] = m[i] as f32;
                // At t = 0 the state is the image and the noise undefined: 0.
                eps[b * per + i] = if p.sin() > 0.0 { ((x[i] - a * m[i]) / p.sin()) as f32 } else { 0.0 };
            }
        }
        let t5 = |v: Vec<f32>| Tensor::<5>::from_data(TensorData::new(v, dims), &device);
        (t5(eps), t5(x0))
    }
}

/// How far a sample set is from the data: the sliced 1-Wasserstein distance to the exact
/// distribution, and the errors of the first two moments against the exact ones.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Distance {
    /// Mean over 64 seeded directions of W1(projected samples, projected mixture), computed
    /// against the mixture's exact CDF (no reference sample, so no second sampling error).
    pub sliced_w1: f64,
    /// ‖mean − true mean‖ / √dim.
    pub mean_err: f64,
    /// ‖cov − true cov‖_F / dim.
    pub cov_err: f64,
}

/// The standard normal CDF (erfc by the Numerical Recipes Chebyshev fit, |error| < 1.2e-7).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 { 1.0 - 0.5 * erfc } else { 0.5 * erfc }
}

/// W1 between the sorted sample `y` and the 1D mixture (weights, means, stds) by integrating
/// |F_n − F| on a fine grid.
fn w1_to_mixture(y: &mut [f64], w: &[f64], mu: &[f64], sd: &[f64]) -> f64 {
    y.sort_by(f64::total_cmp);
    let n = y.len() as f64;
    let spread = sd.iter().cloned().fold(0.0, f64::max);
    let lo = y[0].min(mu.iter().cloned().fold(f64::INFINITY, f64::min)) - 6.0 * spread;
    let hi = y[y.len() - 1].max(mu.iter().cloned().fold(f64::NEG_INFINITY, f64::max)) + 6.0 * spread;
    let points = 20_000;
    let dx = (hi - lo) / points as f64;
    let mut k = 0;
    let mut total = 0.0;
    for p in 0..points {
        let x = lo + (p as f64 + 0.5) * dx;
        while k < y.len() && y[k] <= x {
            k += 1;
        }
        let f: f64 = (0..w.len()).map(|c| w[c] * normal_cdf((x - mu[c]) / sd[c])).sum();
        total += (k as f64 / n - f).abs() * dx;
    }
    total
}

/// The distance of `samples` (flattened volumes) from the mixture.
pub fn distance(m: &Mixture, samples: &[Vec<f64>]) -> Distance {
    let dim = samples[0].len();
    let sliced_w1 = if m.per_voxel {
        let mu: Vec<f64> = m.means.iter().map(|v| v[0]).collect();
        w1_to_mixture(&mut samples.iter().flatten().copied().collect::<Vec<_>>(), &m.weights, &mu, &m.stds)
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let projections = 64;
        let mut total = 0.0;
        for _ in 0..projections {
            let mut dir: Vec<f64> = (0..dim).map(|_| StandardNormal.sample(&mut rng)).collect();
            let norm = dir.iter().map(|v| v * v).sum::<f64>().sqrt();
            dir.iter_mut().for_each(|v| *v /= norm);
            let dot = |x: &[f64]| x.iter().zip(&dir).map(|(a, b)| a * b).sum::<f64>();
            let mut y: Vec<f64> = samples.iter().map(|x| dot(x)).collect();
            let mu: Vec<f64> = m.means.iter().map(|v| dot(v)).collect();
            total += w1_to_mixture(&mut y, &m.weights, &mu, &m.stds);
        }
        total / projections as f64
    };
    let n = samples.len() as f64;
    let mean: Vec<f64> = (0..dim).map(|i| samples.iter().map(|x| x[i]).sum::<f64>() / n).collect();
    // Exact moments.
    let w = &m.weights;
    let mu = |i: usize| -> f64 { (0..w.len()).map(|c| w[c] * m.means[c][m.mean_index(i)]).sum() };
    let mean_err = ((0..dim).map(|i| (mean[i] - mu(i)).powi(2)).sum::<f64>() / dim as f64).sqrt();
    let mut cov_err = 0.0;
    for i in 0..dim {
        for j in 0..dim {
            let emp = samples.iter().map(|x| (x[i] - mean[i]) * (x[j] - mean[j])).sum::<f64>() / n;
            let exact = if m.per_voxel && i != j {
                0.0
            } else {
                let second: f64 = (0..w.len())
                    .map(|c| {
                        let (mi, mj) = (m.means[c][m.mean_index(i)], m.means[c][m.mean_index(j)]);
                        w[c] * (mi * mj + if i == j { m.stds[c] * m.stds[c] } else { 0.0 })
                    })
                    .sum();
                second - mu(i) * mu(j)
            };
            cov_err += (emp - exact).powi(2);
        }
    }
    Distance { sliced_w1, mean_err, cov_err: cov_err.sqrt() / dim as f64 }
}

/// The benchmark's two data sets: a 3-component mixture in 8 = 2³ dimensions, and 8³ volumes of
/// independent voxels from a 3-component 1D mixture (air, soft tissue, bone-like levels in
/// [−1, 1]).
pub fn benchmark_mixtures() -> [(&'static str, Mixture, usize); 2] {
    let gm = Mixture {
        weights: vec![0.5, 0.3, 0.2],
        means: vec![
            vec![-0.6, -0.6, -0.6, -0.6, 0.2, 0.2, 0.2, 0.2],
            vec![0.5, -0.2, 0.5, -0.2, 0.5, -0.2, 0.5, -0.2],
            vec![0.1, 0.7, 0.1, 0.7, -0.3, -0.3, 0.6, 0.6],
        ],
        stds: vec![0.1, 0.2, 0.05],
        per_voxel: false,
    };
    let voxels = Mixture {
        weights: vec![0.45, 0.45, 0.1],
        means: vec![vec![-0.9], vec![0.0], vec![0.7]],
        stds: vec![0.03, 0.1, 0.05],
        per_voxel: true,
    };
    [("gaussian mixture (8-D)", gm, 2), ("per-voxel mixture (8³)", voxels, 8)]
}
