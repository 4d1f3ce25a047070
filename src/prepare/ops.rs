//! The steps of `prdit prepare` as pure functions on host volumes: reorientation to the
//! canonical LPS order, trilinear resampling to a spacing, centre crop/pad to a field of
//! view, resizing, windowing and quantiles.

use crate::data::nifti::Axes;
use crate::data::volume::Volume;

/// Air, what short scans are padded with.
pub const AIR_HU: f32 = -1000.0;

/// For each voxel axis, the letter of the direction it increases toward (RAS+ world:
/// R/L for x, A/P for y, S/I for z), as nibabel's `aff2axcodes`.
pub fn orientation_code(axes: &Axes) -> String {
    (0..3)
        .map(|a| {
            let w = (0..3).max_by(|&x, &y| axes[x][a].abs().total_cmp(&axes[y][a].abs())).expect("3 axes");
            let positive = axes[w][a] > 0.0;
            match (w, positive) {
                (0, true) => 'R',
                (0, false) => 'L',
                (1, true) => 'A',
                (1, false) => 'P',
                (2, true) => 'S',
                _ => 'I',
            }
        })
        .collect()
}

/// The volume reordered so that axis 0 runs toward the patient's left, 1 toward posterior and
/// 2 toward superior (LPS) — the closest such permutation and flips of its voxel axes.
pub fn to_lps(v: &Volume, axes: &Axes) -> Volume {
    // World axis each voxel axis is closest to, assigned greedily by alignment strength.
    let mut pairs: Vec<(usize, usize, f64)> =
        (0..3).flat_map(|a| (0..3).map(move |w| (a, w))).map(|(a, w)| (a, w, axes[w][a].abs())).collect();
    pairs.sort_by(|x, y| y.2.total_cmp(&x.2));
    let mut world_of = [usize::MAX; 3];
    let mut taken = [false; 3];
    for (a, w, _) in pairs {
        if world_of[a] == usize::MAX && !taken[w] {
            world_of[a] = w;
            taken[w] = true;
        }
    }
    // Output axis o (= world axis o) takes source axis src[o]; LPS wants x decreasing
    // (left), y decreasing (posterior), z increasing (superior) in RAS+ world terms.
    let mut src = [0usize; 3];
    for a in 0..3 {
        src[world_of[a]] = a;
    }
    let want_positive = [false, false, true];
    let flip: [bool; 3] = std::array::from_fn(|o| (axes[o][src[o]] > 0.0) != want_positive[o]);
    permute_flip(v, src, flip)
}

/// Output axis `o` reads source axis `src[o]`, reversed where `flip[o]`.
pub fn permute_flip(v: &Volume, src: [usize; 3], flip: [bool; 3]) -> Volume {
    let dims = src.map(|a| v.dims[a]);
    let spacing = src.map(|a| v.spacing[a]);
    let mut data = Vec::with_capacity(v.data.len());
    let mut idx = [0usize; 3];
    for o0 in 0..dims[0] {
        for o1 in 0..dims[1] {
            for o2 in 0..dims[2] {
                for (o, pos) in [o0, o1, o2].into_iter().enumerate() {
                    idx[src[o]] = if flip[o] { dims[o] - 1 - pos } else { pos };
                }
                data.push(v.data[v.index(idx[0], idx[1], idx[2])]);
            }
        }
    }
    Volume { dims, spacing, data }
}

/// Linear interpolation along `axis` to `out` samples at source coordinates `coord(o)`
/// (clamped to the volume).
fn linear_axis(v: &Volume, axis: usize, out: usize, coord: impl Fn(usize) -> f64) -> Volume {
    let mut dims = v.dims;
    let n = dims[axis];
    dims[axis] = out;
    let taps: Vec<(usize, usize, f32)> = (0..out)
        .map(|o| {
            let c = coord(o).clamp(0.0, (n - 1) as f64);
            let i0 = (c.floor() as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            (i0, i1, (c - i0 as f64) as f32)
        })
        .collect();
    let strides = [v.dims[1] * v.dims[2], v.dims[2], 1];
    let mut data = Vec::with_capacity(dims.iter().product());
    for a in 0..dims[0] {
        for b in 0..dims[1] {
            for c in 0..dims[2] {
                let mut p = [a, b, c];
                let (i0, i1, w) = taps[p[axis]];
                p[axis] = 0;
                let base = p[0] * strides[0] + p[1] * strides[1] + p[2] * strides[2];
                let (x0, x1) = (v.data[base + i0 * strides[axis]], v.data[base + i1 * strides[axis]]);
                data.push(x0 + (x1 - x0) * w);
            }
        }
    }
    let mut spacing = v.spacing;
    spacing[axis] = v.spacing[axis] * n as f32 / out as f32;
    Volume { dims, spacing, data }
}

/// Trilinear resampling to voxels of `target` mm: each output voxel's centre is placed at
/// its physical position, `(o + ½)·target`, from the volume's edge.
pub fn resample_to_spacing(v: &Volume, target: f32) -> Volume {
    let mut out = v.clone();
    for axis in 0..3 {
        let s = v.spacing[axis] as f64;
        let n = ((v.dims[axis] as f64 * s / target as f64).round() as usize).max(1);
        out = linear_axis(&out, axis, n, |o| (o as f64 + 0.5) * target as f64 / s - 0.5);
        out.spacing[axis] = target;
    }
    out
}

/// Edge samples added on each side before the spline prefilter (as scipy does for `nearest`):
/// the prefilter's boundary condition then reaches the data only through z¹² ≈ 1.4e-7.
const SPLINE_PAD: usize = 12;

/// Cubic B-spline interpolation coefficients of one line in place (Unser's recursive filter,
/// pole z = √3 − 2, mirror-symmetric boundary), in float64.
fn bspline3_prefilter(c: &mut [f64]) {
    let n = c.len();
    if n < 2 {
        return;
    }
    let z = 3f64.sqrt() - 2.0;
    let gain = (1.0 - z) * (1.0 - 1.0 / z);
    c.iter_mut().for_each(|x| *x *= gain);
    // Causal initialisation for a mirror-symmetric extension.
    let mut zk = z;
    let z2n = z.powi(2 * n as i32 - 2);
    let mut iz = z2n / z; // z^(2n−3)
    let mut sum = c[0] + z.powi(n as i32 - 1) * c[n - 1];
    for x in c.iter().take(n - 1).skip(1) {
        sum += (zk + iz) * x;
        zk *= z;
        iz /= z;
    }
    c[0] = sum / (1.0 - z2n);
    for k in 1..n {
        c[k] += z * c[k - 1];
    }
    c[n - 1] = (z / (z * z - 1.0)) * (c[n - 1] + z * c[n - 2]);
    for k in (0..n - 1).rev() {
        c[k] = z * (c[k + 1] - c[k]);
    }
}

/// The cubic B-spline β³(t).
fn bspline3(t: f64) -> f64 {
    let a = t.abs();
    if a < 1.0 {
        2.0 / 3.0 - a * a + a * a * a / 2.0
    } else if a < 2.0 {
        (2.0 - a).powi(3) / 6.0
    } else {
        0.0
    }
}

/// `scipy.ndimage.zoom(v, order=3, mode='nearest')` to `out` voxels per axis: output voxel `o`
/// samples the input at `o·(n − 1)/(out − 1)` (scipy's `grid_mode=False`) from the cubic spline
/// through the samples, the volume extended by its edge values (12 of them, then the spline
/// prefilter, as scipy pads for `nearest`). Separable, float64 per line.
pub fn spline_zoom(v: &Volume, out: [usize; 3]) -> Volume {
    let mut cur = v.clone();
    for (axis, &m) in out.iter().enumerate() {
        cur = spline_axis(&cur, axis, m);
    }
    cur
}

fn spline_axis(v: &Volume, axis: usize, out: usize) -> Volume {
    let n = v.dims[axis];
    let mut dims = v.dims;
    dims[axis] = out;
    let scale = if out > 1 { (n - 1) as f64 / (out - 1) as f64 } else { 0.0 };
    // For each output position: the first coefficient index (in the padded line) and 4 weights.
    let taps: Vec<(usize, [f64; 4])> = (0..out)
        .map(|o| {
            let x = SPLINE_PAD as f64 + o as f64 * scale;
            let i = x.floor() as usize;
            (i - 1, std::array::from_fn(|k| bspline3(x - (i + k - 1) as f64)))
        })
        .collect();
    let strides = [v.dims[1] * v.dims[2], v.dims[2], 1];
    let out_strides = [dims[1] * dims[2], dims[2], 1];
    let mut data = vec![0f32; dims.iter().product()];
    let others: Vec<usize> = (0..3).filter(|&a| a != axis).collect();
    let mut line = vec![0f64; n + 2 * SPLINE_PAD];
    for p in 0..v.dims[others[0]] {
        for q in 0..v.dims[others[1]] {
            let base = p * strides[others[0]] + q * strides[others[1]];
            let out_base = p * out_strides[others[0]] + q * out_strides[others[1]];
            for (k, slot) in line.iter_mut().enumerate() {
                let i = k.saturating_sub(SPLINE_PAD).min(n - 1);
                *slot = v.data[base + i * strides[axis]] as f64;
            }
            bspline3_prefilter(&mut line);
            for (o, (first, w)) in taps.iter().enumerate() {
                let value: f64 = (0..4).map(|k| w[k] * line[first + k]).sum();
                data[out_base + o * out_strides[axis]] = value as f32;
            }
        }
    }
    let mut spacing = v.spacing;
    spacing[axis] = if out > 1 { v.spacing[axis] * scale as f32 } else { v.spacing[axis] };
    Volume { dims, spacing, data }
}

/// `scipy.ndimage.zoom(v, order=1, mode='constant', cval=fill)` to `out` voxels per axis (the
/// official RAD-ChestCT downsampling): output voxel `o` samples the input at
/// `o·(n − 1)/(out − 1)` by linear interpolation, neighbours beyond the edge taken as `fill`.
/// Separable, float64 per line.
pub fn linear_zoom(v: &Volume, out: [usize; 3], fill: f32) -> Volume {
    let mut cur = v.clone();
    for (axis, &m) in out.iter().enumerate() {
        let n = cur.dims[axis];
        let scale = if m > 1 { (n - 1) as f64 / (m - 1) as f64 } else { 0.0 };
        let mut dims = cur.dims;
        dims[axis] = m;
        let strides = [cur.dims[1] * cur.dims[2], cur.dims[2], 1];
        let out_strides = [dims[1] * dims[2], dims[2], 1];
        let others: Vec<usize> = (0..3).filter(|&a| a != axis).collect();
        let taps: Vec<(usize, f64)> = (0..m)
            .map(|o| {
                let x = o as f64 * scale;
                let i = x.floor() as usize;
                (i, x - i as f64)
            })
            .collect();
        let mut data = vec![0f32; dims.iter().product()];
        for p in 0..cur.dims[others[0]] {
            for q in 0..cur.dims[others[1]] {
                let base = p * strides[others[0]] + q * strides[others[1]];
                let out_base = p * out_strides[others[0]] + q * out_strides[others[1]];
                let at =
                    |i: usize| if i < n { cur.data[base + i * strides[axis]] as f64 } else { fill as f64 };
                for (o, &(i, f)) in taps.iter().enumerate() {
                    let value = if f == 0.0 { at(i) } else { (1.0 - f) * at(i) + f * at(i + 1) };
                    data[out_base + o * out_strides[axis]] = value as f32;
                }
            }
        }
        let mut spacing = cur.spacing;
        spacing[axis] = if m > 1 { cur.spacing[axis] * scale as f32 } else { cur.spacing[axis] };
        cur = Volume { dims, spacing, data };
    }
    cur
}

/// Trilinear resize to `size`³ (`align_corners=False`).
pub fn resize(v: &Volume, size: [usize; 3]) -> Volume {
    let mut out = v.clone();
    for (axis, &m) in size.iter().enumerate() {
        let n = v.dims[axis] as f64;
        out = linear_axis(&out, axis, m, |o| (o as f64 + 0.5) * n / m as f64 - 0.5);
    }
    out
}

/// Average of `k`³ blocks (edges must be multiples of `k`).
pub fn avg_pool(v: &Volume, k: usize) -> Volume {
    let dims = v.dims.map(|d| d / k);
    let mut data = Vec::with_capacity(dims.iter().product());
    let norm = 1.0 / (k * k * k) as f64;
    for a in 0..dims[0] {
        for b in 0..dims[1] {
            for c in 0..dims[2] {
                let mut s = 0.0f64;
                for x in 0..k {
                    for y in 0..k {
                        for z in 0..k {
                            s += v.data[v.index(a * k + x, b * k + y, c * k + z)] as f64;
                        }
                    }
                }
                data.push((s * norm) as f32);
            }
        }
    }
    Volume { dims, spacing: v.spacing.map(|s| s * k as f32), data }
}

/// Centre crop or pad (with `fill`) each axis to `fov` voxels, as the official scripts crop
/// (start `(dim − fov) / 2`); padding splits the difference the same way.
pub fn crop_or_pad(v: &Volume, fov: [usize; 3], fill: f32) -> Volume {
    crop_or_pad_flipped(v, fov, fill, [false; 3])
}

/// [`crop_or_pad`] as it falls on the array mirrored along the axes in `mirrored`: there the
/// odd voxel of an odd margin is cut from the high end instead of the low end. (The official
/// LIDC script crops dicom2nifti's LAS arrays; prdit's are LPS, mirrored along j.)
pub fn crop_or_pad_flipped(v: &Volume, fov: [usize; 3], fill: f32, mirrored: [bool; 3]) -> Volume {
    let mut out = Volume { dims: fov, spacing: v.spacing, data: vec![fill; fov.iter().product()] };
    // Offset of output index o in the source: o + shift (negative when padding).
    let shift: [isize; 3] = std::array::from_fn(|k| {
        let margin = v.dims[k] as isize - fov[k] as isize;
        if mirrored[k] { margin - margin.div_euclid(2) } else { margin.div_euclid(2) }
    });
    for a in 0..fov[0] {
        let sa = a as isize + shift[0];
        if sa < 0 || sa >= v.dims[0] as isize {
            continue;
        }
        for b in 0..fov[1] {
            let sb = b as isize + shift[1];
            if sb < 0 || sb >= v.dims[1] as isize {
                continue;
            }
            for c in 0..fov[2] {
                let sc = c as isize + shift[2];
                if sc >= 0 && sc < v.dims[2] as isize {
                    let i = out.index(a, b, c);
                    out.data[i] = v.data[v.index(sa as usize, sb as usize, sc as usize)];
                }
            }
        }
    }
    out
}

/// The `q`-quantile (0–1) with linear interpolation between order statistics (NumPy's default).
pub fn quantile(values: &[f32], q: f64) -> f32 {
    let mut v = values.to_vec();
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let (_, x0, rest) = v.select_nth_unstable_by(lo, f32::total_cmp);
    let x0 = *x0;
    let x1 = if pos > lo as f64 { rest.iter().copied().fold(f32::INFINITY, f32::min) } else { x0 };
    x0 + (x1 - x0) * (pos - lo as f64) as f32
}

/// Clips to `[lo, hi]` and maps that window linearly onto [−1, 1].
pub fn window_to_model(v: &mut Volume, lo: f32, hi: f32) {
    let scale = 2.0 / (hi - lo);
    for x in v.data.iter_mut() {
        *x = (x.clamp(lo, hi) - lo) * scale - 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(dims: [usize; 3], spacing: [f32; 3], f: impl Fn(usize, usize, usize) -> f32) -> Volume {
        let mut v = Volume { dims, spacing, data: Vec::new() };
        for a in 0..dims[0] {
            for b in 0..dims[1] {
                for c in 0..dims[2] {
                    v.data.push(f(a, b, c));
                }
            }
        }
        v
    }

    #[test]
    fn spline_zoom_interpolates_and_keeps_constants() {
        // At integer positions the spline passes through the samples; a constant stays constant.
        let v = ramp([6, 5, 7], [1.0; 3], |a, b, c| ((a * 7 + b * 3 + c) % 5) as f32 * 100.0 - 300.0);
        let same = spline_zoom(&v, v.dims);
        assert!(same.data.iter().zip(&v.data).all(|(a, b)| (a - b).abs() < 1e-3));
        let flat = spline_zoom(&Volume::filled([5, 4, 6], -700.0), [9, 3, 13]);
        assert!(flat.data.iter().all(|x| (x + 700.0).abs() < 1e-3));
        assert_eq!(flat.dims, [9, 3, 13]);
    }

    #[test]
    fn resampling_a_linear_ramp_stays_linear() {
        // 2 mm voxels along k with value = position (mm) of the voxel centre → 1 mm voxels.
        let v = ramp([2, 2, 10], [1.0, 1.0, 2.0], |_, _, c| (c as f32 + 0.5) * 2.0);
        let r = resample_to_spacing(&v, 1.0);
        assert_eq!(r.dims, [2, 2, 20]);
        assert_eq!(r.spacing, [1.0; 3]);
        // Interior samples lie on the same line: value = centre position in mm.
        for c in 1..19 {
            let want = c as f32 + 0.5;
            assert!(
                (r.data[r.index(0, 0, c)] - want).abs() < 1e-5,
                "k={c}: {} vs {want}",
                r.data[r.index(0, 0, c)]
            );
        }
        // Edges clamp to the first/last source voxel.
        assert_eq!(r.data[r.index(0, 0, 0)], 1.0);
    }

    #[test]
    fn padding_and_cropping_are_centred() {
        let v = ramp([4, 1, 1], [1.0; 3], |a, _, _| a as f32);
        let padded = crop_or_pad(&v, [8, 1, 1], AIR_HU);
        assert_eq!(padded.data, [AIR_HU, AIR_HU, 0.0, 1.0, 2.0, 3.0, AIR_HU, AIR_HU]);
        let cropped = crop_or_pad(&v, [2, 1, 1], AIR_HU);
        assert_eq!(cropped.data, [1.0, 2.0]);
        // Start (dim − fov) / 2 with floor division, as the official crop: −1.5 → −2, so the
        // extra padding voxel goes first.
        let odd = crop_or_pad(&v, [7, 1, 1], AIR_HU);
        assert_eq!(odd.data, [AIR_HU, AIR_HU, 0.0, 1.0, 2.0, 3.0, AIR_HU]);
    }

    #[test]
    fn flipped_and_permuted_affines_reorient_to_lps() {
        // Value = the patient coordinate along L (x), P (y), S (z) that the voxel sits at.
        let v = ramp([2, 3, 4], [1.0, 2.0, 3.0], |a, b, c| (100 * a + 10 * b + c) as f32);
        // RAS-stored volume (nibabel's canonical): axis 0 → R, 1 → A, 2 → S.
        let ras: Axes = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]];
        assert_eq!(orientation_code(&ras), "RAS");
        let lps = to_lps(&v, &ras);
        assert_eq!((lps.dims, lps.spacing), ([2, 3, 4], [1.0, 2.0, 3.0]));
        // LPS index (0, 0, 0) is the most right-anterior voxel: RAS index (1, 2, 0).
        assert_eq!(lps.data[lps.index(0, 0, 0)], 120.0);
        assert_eq!(lps.data[lps.index(1, 2, 3)], 3.0);
        // Axes permuted (stored as S, L, A): still lands in LPS.
        let perm: Axes = [[0.0, -1.0, 0.0], [0.0, 0.0, 2.0], [3.0, 0.0, 0.0]];
        assert_eq!(orientation_code(&perm), "SLA");
        let w = ramp([4, 2, 3], [3.0, 1.0, 2.0], |a, b, c| (100 * b + 10 * c + a) as f32);
        let lps2 = to_lps(&w, &perm);
        assert_eq!(lps2.dims, [2, 3, 4]);
        assert_eq!(lps2.spacing, [1.0, 2.0, 3.0]);
        // LPS (i, j, k): i = left-most first = source b ascending (source axis 1 runs left);
        // j posterior = source c descending (source axis 2 runs anterior); k = source a.
        assert_eq!(lps2.data[lps2.index(0, 0, 0)], (10 * 2) as f32);
        assert_eq!(lps2.data[lps2.index(1, 2, 3)], (100 + 3) as f32);
    }

    #[test]
    fn windowing_and_quantiles() {
        let mut v = ramp([1, 1, 5], [1.0; 3], |_, _, c| [-2000.0, -1000.0, 0.0, 500.0, 3000.0][c]);
        window_to_model(&mut v, -1000.0, 1000.0);
        for (got, want) in v.data.iter().zip([-1.0, -1.0, 0.0, 0.5, 1.0]) {
            assert!((got - want).abs() < 1e-6, "{:?}", v.data);
        }
        let x = [4.0f32, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&x, 0.0), 1.0);
        assert_eq!(quantile(&x, 1.0), 4.0);
        assert!((quantile(&x, 0.5) - 2.5).abs() < 1e-6);
        assert!((quantile(&x, 0.999) - 3.997).abs() < 1e-5);
    }

    #[test]
    fn pooling_and_resizing() {
        let v = ramp([4, 4, 4], [1.0; 3], |a, b, c| (a + b + c) as f32);
        let p = avg_pool(&v, 2);
        assert_eq!((p.dims, p.spacing), ([2, 2, 2], [2.0; 3]));
        assert_eq!(p.data[0], 1.5);
        let r = resize(&v, [2, 2, 2]);
        assert_eq!(r.data[0], 1.5, "a linear field resizes to the same block means");
    }
}
