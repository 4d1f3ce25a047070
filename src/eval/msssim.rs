//! 3D MS-SSIM as MONAI-Generative's `MultiScaleSSIMMetric(spatial_dims=3, data_range=1,
//! kernel_size=3)` computes it (spec §12.4): a separable normalised Gaussian (σ 1.5), valid
//! (unpadded) filtering, biased local variances, k₁ 0.01, k₂ 0.03, five scales with weights
//! (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2×2×2 average pooling between scales,
//! `∏_{s<5} cs_s^{w_s} · ssim_5^{w_5}` with each term clamped at 0 (ReLU).

use super::super::data::volume::Volume;
use crate::error::{Error, Result};

const WEIGHTS: [f64; 5] = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333];
const KERNEL: usize = 3;
const SIGMA: f64 = 1.5;

fn kernel() -> [f64; KERNEL] {
    let c = (KERNEL / 2) as f64;
    let mut k = [0.0; KERNEL];
    for (i, v) in k.iter_mut().enumerate() {
        *v = (-(i as f64 - c).powi(2) / (2.0 * SIGMA * SIGMA)).exp();
    }
    let s: f64 = k.iter().sum();
    k.map(|v| v / s)
}

/// A volume of f64 with its dims.
#[derive(Clone)]
struct Grid {
    dims: [usize; 3],
    data: Vec<f64>,
}

impl Grid {
    fn at(&self, a: usize, b: usize, c: usize) -> f64 {
        self.data[(a * self.dims[1] + b) * self.dims[2] + c]
    }

    /// Valid separable filtering along all three axes.
    fn filter(&self, k: &[f64; KERNEL]) -> Grid {
        let mut g = self.clone();
        for axis in 0..3 {
            let mut dims = g.dims;
            dims[axis] -= KERNEL - 1;
            let mut out = Vec::with_capacity(dims.iter().product());
            for a in 0..dims[0] {
                for b in 0..dims[1] {
                    for c in 0..dims[2] {
                        let mut s = 0.0;
                        for (t, w) in k.iter().enumerate() {
                            let mut p = [a, b, c];
                            p[axis] += t;
                            s += w * g.at(p[0], p[1], p[2]);
                        }
                        out.push(s);
                    }
                }
            }
            g = Grid { dims, data: out };
        }
        g
    }

    fn map2(&self, other: &Grid, f: impl Fn(f64, f64) -> f64) -> Grid {
        Grid { dims: self.dims, data: self.data.iter().zip(&other.data).map(|(a, b)| f(*a, *b)).collect() }
    }

    /// 2×2×2 average pooling (floor of odd sizes).
    fn pool(&self) -> Grid {
        let dims = self.dims.map(|d| d / 2);
        let mut out = Vec::with_capacity(dims.iter().product());
        for a in 0..dims[0] {
            for b in 0..dims[1] {
                for c in 0..dims[2] {
                    let mut s = 0.0;
                    for (x, y, z) in (0..8).map(|i| (i >> 2, (i >> 1) & 1, i & 1)) {
                        s += self.at(2 * a + x, 2 * b + y, 2 * c + z);
                    }
                    out.push(s / 8.0);
                }
            }
        }
        Grid { dims, data: out }
    }
}

/// (mean SSIM, mean contrast-structure) of one scale.
fn ssim_cs(x: &Grid, y: &Grid, k: &[f64; KERNEL]) -> (f64, f64) {
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let mx = x.filter(k);
    let my = y.filter(k);
    let mxx = x.map2(x, |a, b| a * b).filter(k);
    let myy = y.map2(y, |a, b| a * b).filter(k);
    let mxy = x.map2(y, |a, b| a * b).filter(k);
    let n = mx.data.len() as f64;
    let (mut ssim, mut cs) = (0.0, 0.0);
    for i in 0..mx.data.len() {
        let (ux, uy) = (mx.data[i], my.data[i]);
        let vx = mxx.data[i] - ux * ux;
        let vy = myy.data[i] - uy * uy;
        let cxy = mxy.data[i] - ux * uy;
        let c = (2.0 * cxy + c2) / (vx + vy + c2);
        cs += c;
        ssim += c * (2.0 * ux * uy + c1) / (ux * ux + uy * uy + c1);
    }
    (ssim / n, cs / n)
}

/// MS-SSIM of two volumes of the same shape (data range 1).
pub fn ms_ssim(x: &Volume, y: &Volume) -> Result<f64> {
    if x.dims != y.dims {
        return Err(Error::invalid("ms-ssim", format!("volumes of shapes {:?} and {:?}", x.dims, y.dims)));
    }
    // Five scales of valid 3-tap filtering need the edge to stay ≥ 3 after four halvings.
    if x.dims.iter().any(|&d| d < 3 << 4) {
        return Err(Error::invalid(
            "ms-ssim",
            format!("volumes of {:?} are too small for 5 scales (need ≥ 48)", x.dims),
        ));
    }
    let k = kernel();
    let mut a = Grid { dims: x.dims, data: x.data.iter().map(|&v| v as f64).collect() };
    let mut b = Grid { dims: y.dims, data: y.data.iter().map(|&v| v as f64).collect() };
    let mut result = 1.0;
    for (s, w) in WEIGHTS.iter().enumerate() {
        let (ssim, cs) = ssim_cs(&a, &b, &k);
        let term = if s + 1 == WEIGHTS.len() { ssim } else { cs };
        result *= term.max(0.0).powf(*w);
        if s + 1 < WEIGHTS.len() {
            a = a.pool();
            b = b.pool();
        }
    }
    Ok(result)
}

/// Mean MS-SSIM over all pairs of distinct volumes (the official loop visits both orders of
/// each pair; MS-SSIM is symmetric, so the mean over unique pairs is the same).
pub fn diversity(volumes: &[Volume]) -> Result<(f64, usize)> {
    if volumes.len() < 2 {
        return Err(Error::invalid("ms-ssim", "needs at least 2 volumes"));
    }
    let mut sum = 0.0;
    let mut pairs = 0;
    for i in 0..volumes.len() {
        for j in i + 1..volumes.len() {
            sum += ms_ssim(&volumes[i], &volumes[j])?;
            pairs += 1;
        }
    }
    Ok((sum / pairs as f64, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: u64, n: usize) -> Volume {
        let mut v = Volume::filled([n; 3], 0.0);
        let mut s = seed;
        for x in v.data.iter_mut() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *x = ((s >> 33) as f64 / (1u64 << 31) as f64) as f32;
        }
        v
    }

    #[test]
    fn identical_is_one_and_noise_lowers_it() {
        let a = noise(1, 48);
        assert!((ms_ssim(&a, &a).unwrap() - 1.0).abs() < 1e-12);
        let mut b = a.clone();
        for (i, x) in b.data.iter_mut().enumerate() {
            *x += if i % 2 == 0 { 0.05 } else { -0.05 };
        }
        let c = noise(2, 48);
        let (ab, ac) = (ms_ssim(&a, &b).unwrap(), ms_ssim(&a, &c).unwrap());
        assert!(ab < 1.0 && ac < ab, "{ab} {ac}");
        assert!((ms_ssim(&c, &a).unwrap() - ac).abs() < 1e-12, "symmetric");
        assert!(ms_ssim(&noise(1, 32), &noise(2, 32)).is_err());
    }
}
