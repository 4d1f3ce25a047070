//! SSIM as TF-PRDiT reports it for reconstructions (`util.py:Structural_Similarity`): scikit-image's
//! `structural_similarity` on 2D slices with its defaults (a 7×7 uniform window, K1 0.01, K2 0.03,
//! the sample covariance (×49/48), the mean over the SSIM map without its 3-pixel border), data
//! range 1 on volumes in [0, 1], averaged over the slices of an axis. TF-PRDiT averages three
//! such values meant to be the axial, coronal and sagittal ones, but its third repeats the axial
//! (`channel_axis=0` twice), so its SSIM is (2·axial + coronal)/3: [`tf_prdit`].

const WIN: usize = 7;
const K1: f64 = 0.01;
const K2: f64 = 0.03;

/// Mean SSIM of two 2D images `[rows, cols]` (row-major), data range 1.
pub fn ssim_2d(a: &[f64], b: &[f64], rows: usize, cols: usize) -> f64 {
    assert_eq!(a.len(), rows * cols);
    assert_eq!(b.len(), rows * cols);
    if rows < WIN || cols < WIN {
        return f64::NAN;
    }
    let np = (WIN * WIN) as f64;
    let cov_norm = np / (np - 1.0);
    let (c1, c2) = (K1 * K1, K2 * K2);
    // Window sums by an integral image per quantity.
    let integral = |f: &dyn Fn(usize) -> f64| {
        let mut s = vec![0.0f64; (rows + 1) * (cols + 1)];
        for r in 0..rows {
            for c in 0..cols {
                s[(r + 1) * (cols + 1) + c + 1] =
                    f(r * cols + c) + s[r * (cols + 1) + c + 1] + s[(r + 1) * (cols + 1) + c]
                        - s[r * (cols + 1) + c];
            }
        }
        s
    };
    let sums = [
        integral(&|i| a[i]),
        integral(&|i| b[i]),
        integral(&|i| a[i] * a[i]),
        integral(&|i| b[i] * b[i]),
        integral(&|i| a[i] * b[i]),
    ];
    let pad = WIN / 2;
    let mut total = 0.0;
    let mut n = 0usize;
    for r in pad..rows - pad {
        for c in pad..cols - pad {
            let (r0, c0, r1, c1_) = (r - pad, c - pad, r + pad + 1, c + pad + 1);
            let m: [f64; 5] = std::array::from_fn(|k| {
                let s = &sums[k];
                (s[r1 * (cols + 1) + c1_] - s[r0 * (cols + 1) + c1_] - s[r1 * (cols + 1) + c0]
                    + s[r0 * (cols + 1) + c0])
                    / np
            });
            let (ux, uy) = (m[0], m[1]);
            let vx = cov_norm * (m[2] - ux * ux);
            let vy = cov_norm * (m[3] - uy * uy);
            let vxy = cov_norm * (m[4] - ux * uy);
            let num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2);
            let den = (ux * ux + uy * uy + c1) * (vx + vy + c2);
            total += num / den;
            n += 1;
        }
    }
    total / n as f64
}

/// Mean over the slices along `axis` (0 = D: axial `[H, W]` slices; 1 = H: coronal `[D, W]`)
/// of [`ssim_2d`], for volumes `[D, H, W]` in [0, 1].
pub fn ssim_slices(a: &[f32], b: &[f32], dims: [usize; 3], axis: usize) -> f64 {
    let [d, h, w] = dims;
    let at = |v: &[f32], i: usize, j: usize, k: usize| v[(i * h + j) * w + k] as f64;
    let (count, rows, cols) = match axis {
        0 => (d, h, w),
        1 => (h, d, w),
        _ => (w, d, h),
    };
    let mut total = 0.0;
    for s in 0..count {
        let pick = |v: &[f32]| -> Vec<f64> {
            let mut out = Vec::with_capacity(rows * cols);
            for r in 0..rows {
                for c in 0..cols {
                    out.push(match axis {
                        0 => at(v, s, r, c),
                        1 => at(v, r, s, c),
                        _ => at(v, r, c, s),
                    });
                }
            }
            out
        };
        total += ssim_2d(&pick(a), &pick(b), rows, cols);
    }
    total / count as f64
}

/// TF-PRDiT's reported SSIM of volumes `[D, H, W]` in [0, 1]: (2·axial + coronal)/3.
pub fn tf_prdit(a: &[f32], b: &[f32], dims: [usize; 3]) -> f64 {
    (2.0 * ssim_slices(a, b, dims, 0) + ssim_slices(a, b, dims, 1)) / 3.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize, f: impl Fn(f64) -> f64) -> Vec<f32> {
        (0..n).map(|i| f(i as f64) as f32).collect()
    }

    #[test]
    fn identical_volumes_score_one_and_constants_have_the_closed_form() {
        let dims = [9, 10, 11];
        let n = 990;
        let x = pattern(n, |i| 0.5 + 0.4 * (0.37 * i).sin());
        assert!((tf_prdit(&x, &x, dims) - 1.0).abs() < 1e-12);
        // Constant images a and b: no variance, so SSIM = (2ab + C1)/(a² + b² + C1).
        let (a, b) = (0.3f32, 0.6f32);
        let want = (2.0 * 0.3 * 0.6 + 1e-4) / (0.09 + 0.36 + 1e-4);
        let got = tf_prdit(&vec![a; n], &vec![b; n], dims);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    /// Values from scikit-image 0.26 (`structural_similarity(x, y, data_range=1.0)`, float64):
    /// for the 12×13 image x[i] = 0.5 + 0.4·sin(0.37·i), y[i] = clip(x[i] + 0.1·cos(1.3·i), 0, 1)
    /// (i the row-major index) it gives 0.9692435171; for the volume [9, 10, 11] a[i] = 0.5 +
    /// 0.4·sin(0.37·i), b[i] = clip(a[i] + 0.2·cos(0.9·i), 0, 1), both rounded to float32, with
    /// `channel_axis=0` it gives 0.8909986818 on [D, H, W] (axial) and 0.8934420093 on the
    /// transpose [H, D, W] (coronal).
    #[test]
    fn matches_scikit_image() {
        let (rows, cols) = (12, 13);
        let x: Vec<f64> = (0..rows * cols).map(|i| 0.5 + 0.4 * (0.37 * i as f64).sin()).collect();
        let y: Vec<f64> =
            x.iter().enumerate().map(|(i, v)| (v + 0.1 * (1.3 * i as f64).cos()).clamp(0.0, 1.0)).collect();
        let got = ssim_2d(&x, &y, rows, cols);
        assert!((got - 0.9692435171).abs() < 1e-9, "{got}");
        let a = pattern(990, |i| 0.5 + 0.4 * (0.37 * i).sin());
        let b: Vec<f32> = (0..990)
            .map(|i| {
                ((0.5 + 0.4 * (0.37 * i as f64).sin()) + 0.2 * (0.9 * i as f64).cos()).clamp(0.0, 1.0) as f32
            })
            .collect();
        let (axial, coronal) = (ssim_slices(&a, &b, [9, 10, 11], 0), ssim_slices(&a, &b, [9, 10, 11], 1));
        assert!((axial - 0.8909986818).abs() < 1e-9, "{axial}");
        assert!((coronal - 0.8934420093).abs() < 1e-9, "{coronal}");
        assert!((tf_prdit(&a, &b, [9, 10, 11]) - (2.0 * axial + coronal) / 3.0).abs() < 1e-15);
    }
}
