//! The scores, from feature matrices (rows = volumes), in f64 (spec §12.2–§12.3).
//!
//! FID = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂) with unbiased covariances. The trace
//! term is computed exactly, without a general matrix square root: with the centred
//! features A (n₁×d) and B (n₂×d), Σ₁ = AᵀA/(n₁−1) and Σ₂ = BᵀB/(n₂−1), the eigenvalues of
//! Σ₁Σ₂ are the squared singular values of ABᵀ over (n₁−1)(n₂−1), so
//! tr √(Σ₁Σ₂) = ‖ABᵀ‖_* / √((n₁−1)(n₂−1)) — the nuclear norm, real by construction.

use faer::Mat;

use crate::error::{Error, Result};

/// A feature matrix: `n` rows of `d` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub n: usize,
    pub d: usize,
    pub data: Vec<f64>,
}

impl Features {
    /// From row-major values.
    pub fn new(n: usize, d: usize, data: Vec<f64>) -> Self {
        assert_eq!(data.len(), n * d, "feature matrix size");
        Features { n, d, data }
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.d..(i + 1) * self.d]
    }

    /// Column means.
    pub fn mean(&self) -> Vec<f64> {
        let mut m = vec![0.0; self.d];
        for i in 0..self.n {
            for (a, b) in m.iter_mut().zip(self.row(i)) {
                *a += b;
            }
        }
        m.iter_mut().for_each(|v| *v /= self.n as f64);
        m
    }

    /// The centred matrix as a faer matrix, and the trace of the unbiased covariance.
    fn centred(&self) -> (Mat<f64>, f64) {
        let mu = self.mean();
        let a = Mat::from_fn(self.n, self.d, |i, j| self.data[i * self.d + j] - mu[j]);
        let ss: f64 = (0..self.n)
            .flat_map(|i| (0..self.d).map(move |j| (i, j)))
            .map(|(i, j)| a[(i, j)] * a[(i, j)])
            .sum();
        (a, ss / (self.n as f64 - 1.0))
    }
}

fn check(real: &Features, fake: &Features, min: usize) -> Result<()> {
    if real.d != fake.d {
        return Err(Error::invalid(
            "features",
            format!("real features have {} columns, fake {}", real.d, fake.d),
        ));
    }
    if real.n < min || fake.n < min {
        return Err(Error::invalid(
            "features",
            format!("need at least {min} volumes per set (real {}, fake {})", real.n, fake.n),
        ));
    }
    Ok(())
}

/// The Fréchet distance between the Gaussians fitted to two feature sets.
pub fn fid(real: &Features, fake: &Features) -> Result<f64> {
    check(real, fake, 2)?;
    let (mu1, mu2) = (real.mean(), fake.mean());
    let mean_term: f64 = mu1.iter().zip(&mu2).map(|(a, b)| (a - b).powi(2)).sum();
    let (a, tr1) = real.centred();
    let (b, tr2) = fake.centred();
    let cross = &a * b.transpose(); // n1 × n2
    let sv = cross
        .singular_values()
        .map_err(|e| Error::invalid("fid", format!("the SVD did not converge: {e:?}")))?;
    let nuclear: f64 = sv.iter().sum();
    let trace_sqrt = nuclear / ((real.n as f64 - 1.0) * (fake.n as f64 - 1.0)).sqrt();
    Ok(mean_term + tr1 + tr2 - 2.0 * trace_sqrt)
}

/// Which MMD estimator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum MmdEstimator {
    /// The official one: V-statistic, means over all entries including the diagonals.
    Biased,
    /// U-statistic: the diagonals of K_XX and K_YY left out.
    Unbiased,
}

/// MMD², MMD = √max(MMD², 0) and the kernel bandwidth γ.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Mmd {
    pub mmd2: f64,
    pub mmd: f64,
    pub gamma: f64,
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

/// Gaussian-kernel MMD as the official evaluation defines it: `k(u, v) = exp(−γ‖u−v‖²)`,
/// γ = 1 / (2·median of the n² squared distances among the real features, zero diagonal
/// included; the lower middle value for an even count, as `torch.median`).
pub fn mmd(real: &Features, fake: &Features, estimator: MmdEstimator) -> Result<Mmd> {
    check(real, fake, 2)?;
    let (n, m) = (real.n, fake.n);
    let mut dxx = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            dxx.push(if i == j { 0.0 } else { sq_dist(real.row(i), real.row(j)) });
        }
    }
    let mut sorted = dxx.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[(sorted.len() - 1) / 2];
    if median.is_nan() || median <= 0.0 {
        return Err(Error::invalid(
            "mmd",
            "the real features are all identical: the kernel bandwidth is undefined",
        ));
    }
    let gamma = 1.0 / (2.0 * median);
    let k = |d: f64| (-gamma * d).exp();
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    for (idx, &d) in dxx.iter().enumerate() {
        if estimator == MmdEstimator::Biased || idx / n != idx % n {
            sxx += k(d);
        }
    }
    for i in 0..m {
        for j in 0..m {
            if estimator == MmdEstimator::Biased || i != j {
                syy += k(if i == j { 0.0 } else { sq_dist(fake.row(i), fake.row(j)) });
            }
        }
        for j in 0..n {
            sxy += k(sq_dist(fake.row(i), real.row(j)));
        }
    }
    let (nx, ny) = match estimator {
        MmdEstimator::Biased => ((n * n) as f64, (m * m) as f64),
        MmdEstimator::Unbiased => ((n * (n - 1)) as f64, (m * (m - 1)) as f64),
    };
    let mmd2 = sxx / nx + syy / ny - 2.0 * sxy / (n * m) as f64;
    Ok(Mmd { mmd2, mmd: mmd2.max(0.0).sqrt(), gamma })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::ChaCha8Rng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    fn gaussian(n: usize, mean: &[f64], std: &[f64], seed: u64) -> Features {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let d = mean.len();
        let data = (0..n * d)
            .map(|k| {
                let z: f64 = StandardNormal.sample(&mut rng);
                mean[k % d] + std[k % d] * z
            })
            .collect();
        Features::new(n, d, data)
    }

    #[test]
    fn fid_of_identical_sets_is_zero() {
        let f = gaussian(50, &[0.0, 1.0, 2.0], &[1.0, 2.0, 0.5], 1);
        assert!(fid(&f, &f).unwrap().abs() < 1e-9);
        let m = mmd(&f, &f, MmdEstimator::Biased).unwrap();
        assert!(m.mmd2.abs() < 1e-12);
    }

    #[test]
    fn fid_of_diagonal_gaussians_is_the_closed_form() {
        // Sets with exactly prescribed sample means and (unbiased) diagonal covariances: the
        // FID is Σ(μ₁−μ₂)² + Σ(σ₁ − σ₂)² exactly. Two points per axis-aligned pair ± give it.
        let d = 4;
        let make = |mu: &[f64], sd: &[f64]| {
            // 2d rows mu ± sd_k·√((2d−1)/2)·e_k: mean mu, unbiased variance sd_k² on axis k,
            // zero covariances.
            let n = 2 * d;
            let scale = ((n - 1) as f64 / 2.0).sqrt();
            let mut data = Vec::new();
            for (k, sd_k) in sd.iter().enumerate() {
                for sign in [1.0, -1.0] {
                    data.extend(
                        mu.iter()
                            .enumerate()
                            .map(|(j, m)| m + if j == k { sign * sd_k * scale } else { 0.0 }),
                    );
                }
            }
            Features::new(n, d, data)
        };
        let (m1, s1): ([f64; 4], [f64; 4]) = ([0.0, 1.0, -2.0, 0.5], [1.0, 2.0, 0.3, 1.5]);
        let (m2, s2): ([f64; 4], [f64; 4]) = ([0.5, 1.0, 1.0, 0.0], [2.0, 0.5, 0.3, 1.0]);
        let want: f64 = (0..d).map(|k| (m1[k] - m2[k]).powi(2) + (s1[k] - s2[k]).powi(2)).sum();
        let got = fid(&make(&m1, &s1), &make(&m2, &s2)).unwrap();
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    }

    #[test]
    fn mmd_by_hand() {
        // Real {0, 1, 3}: squared distances 0,1,9 / 1,0,4 / 9,4,0 → sorted 0,0,0,1,1,4,4,9,9,
        // median 1 → γ = ½. Fake {2, 4}.
        let real = Features::new(3, 1, vec![0.0, 1.0, 3.0]);
        let fake = Features::new(2, 1, vec![2.0, 4.0]);
        let g: f64 = 0.5;
        let k = |d: f64| (-g * d).exp();
        let offdiag_xx = 2.0 * (k(1.0) + k(9.0) + k(4.0));
        let offdiag_yy = 2.0 * k(4.0);
        let kxy = k(4.0) + k(1.0) + k(1.0) + k(16.0) + k(9.0) + k(1.0);
        let biased = (3.0 + offdiag_xx) / 9.0 + (2.0 + offdiag_yy) / 4.0 - 2.0 * kxy / 6.0;
        let unbiased = offdiag_xx / 6.0 + offdiag_yy / 2.0 - 2.0 * kxy / 6.0;
        let got = mmd(&real, &fake, MmdEstimator::Biased).unwrap();
        assert_eq!(got.gamma, g);
        assert!((got.mmd2 - biased).abs() < 1e-12);
        assert!((got.mmd - biased.max(0.0).sqrt()).abs() < 1e-12);
        let got = mmd(&real, &fake, MmdEstimator::Unbiased).unwrap();
        assert!((got.mmd2 - unbiased).abs() < 1e-12);
    }
}
