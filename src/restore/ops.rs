//! Linear measurement operators of TF-PRDiT's restoration tasks, on Burn tensors (every
//! backend), each with its exact adjoint: super-resolution (trilinear downsampling with
//! `align_corners=False` by an integer factor, on all axes or along z only), infilling (a mask
//! of measured voxels) and deblurring (a normalised 3D Gaussian, zero padding).
//!
//! Python (TF-PRDiT): `diffusion/super_resolution.py` (`F.interpolate(..., mode="trilinear",
//! align_corners=False)` to S/4), `diffusion/inpainting.py` (centre cube of half the edge),
//! `diffusion/deblurring.py` (5 taps, σ 2, `conv3d` with zero padding 2). The X-ray projector is
//! in [`super::xray`].

use burn::tensor::Tensor;

use crate::error::{Error, Result};

/// A linear measurement `y = A·x` of volumes `[batch, 1, D, H, W]`.
#[derive(Debug, Clone)]
pub enum Operator {
    /// Trilinear downsampling (`align_corners=False`) by `factor` along the axes marked true
    /// (D, H, W): each measured voxel is the mean of the middle one (odd factor) or two (even)
    /// voxels of its block along each such axis.
    Downsample { factor: usize, axes: [bool; 3] },
    /// The voxels where `keep` is 1 are measured (`y = keep·x`, same shape).
    Mask { keep: Box<Tensor<5>> },
    /// Convolution with the outer product of the normalised 1D kernel `taps`, zero padding
    /// (same shape).
    Blur { taps: Vec<f32> },
    /// Sparse-view X-rays ([`super::xray`]): `[batch, 1, S, S, S]` → `[batch, 1, views, S, S]`.
    Xray(Box<super::xray::Projector>),
}

/// The normalised Gaussian of `size` taps (odd) and standard deviation `sigma` in voxels.
pub fn gaussian_taps(size: usize, sigma: f64) -> Result<Vec<f32>> {
    if size.is_multiple_of(2) || !(sigma > 0.0 && sigma.is_finite()) {
        return Err(Error::invalid(
            "kernel",
            format!("needs an odd size and a positive sigma, given {size} and {sigma}"),
        ));
    }
    let c = (size / 2) as f64;
    let w: Vec<f64> = (0..size).map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f64 = w.iter().sum();
    Ok(w.iter().map(|v| (v / sum) as f32).collect())
}

impl Operator {
    /// The dims of `A·x` for `x` of `dims`; an error when the operator does not fit them.
    pub fn measured_dims(&self, dims: [usize; 5]) -> Result<[usize; 5]> {
        match self {
            Operator::Downsample { factor, axes } => {
                let mut out = dims;
                for (k, &on) in axes.iter().enumerate() {
                    if on {
                        if *factor == 0 || !dims[k + 2].is_multiple_of(*factor) {
                            return Err(Error::invalid(
                                "factor",
                                format!("{factor} does not divide the volume's edge {}", dims[k + 2]),
                            ));
                        }
                        out[k + 2] = dims[k + 2] / factor;
                    }
                }
                Ok(out)
            }
            Operator::Mask { keep } => {
                let m = keep.dims();
                if m[2..] != dims[2..] {
                    return Err(Error::invalid(
                        "mask",
                        format!("is {:?}, the volume {:?}", &m[2..], &dims[2..]),
                    ));
                }
                Ok(dims)
            }
            Operator::Blur { .. } => Ok(dims),
            Operator::Xray(p) => {
                let s = p.geometry.edge;
                if dims[2..] != [s; 3] {
                    return Err(Error::invalid(
                        "views",
                        format!("the projector is set up for {s}³ volumes, given {:?}", &dims[2..]),
                    ));
                }
                Ok([dims[0], dims[1], p.views(), s, s])
            }
        }
    }

    /// `A·x`.
    pub fn apply(&self, x: Tensor<5>) -> Tensor<5> {
        match self {
            Operator::Downsample { factor, axes } => {
                let mut x = x;
                for (k, &on) in axes.iter().enumerate() {
                    if on {
                        x = down_axis(x, k + 2, *factor);
                    }
                }
                x
            }
            Operator::Mask { keep } => x * (**keep).clone(),
            Operator::Blur { taps } => blur(x, taps),
            Operator::Xray(p) => p.apply(x),
        }
    }

    /// `Aᵀ·y`, exactly (the zero-padded symmetric blur and the mask are self-adjoint).
    pub fn adjoint(&self, y: Tensor<5>) -> Tensor<5> {
        match self {
            Operator::Downsample { factor, axes } => {
                let mut y = y;
                for (k, &on) in axes.iter().enumerate().rev() {
                    if on {
                        y = up_axis(y, k + 2, *factor);
                    }
                }
                y
            }
            Operator::Mask { keep } => y * (**keep).clone(),
            Operator::Blur { taps } => blur(y, taps),
            Operator::Xray(p) => p.adjoint(y),
        }
    }

    /// The constant c with `A·Aᵀ = c·I`, where there is one (downsampling: ½ per axis of even
    /// factor; a 0/1 mask: 1 on the measured voxels); `None` for the blur.
    pub fn gram_scale(&self) -> Option<f64> {
        match self {
            Operator::Downsample { factor, axes } => {
                Some(axes.iter().filter(|&&on| on && factor.is_multiple_of(2)).fold(1.0, |c, _| c * 0.5))
            }
            Operator::Mask { .. } => Some(1.0),
            Operator::Blur { .. } | Operator::Xray(_) => None,
        }
    }

    /// Data consistency of an image estimate with `y`: the nearest volume with `A·x = y` where
    /// `A·Aᵀ` is a multiple of the identity (`x + Aᵀ(y − A·x)/c`: downsampling; for the mask
    /// the measured voxels replaced by `y`), else `cg_steps` conjugate-gradient steps on
    /// `‖A·x − y‖²` started at `x` (DDS's early-stopped solve: the blur).
    pub fn consistent(&self, x: Tensor<5>, y: &Tensor<5>, cg_steps: usize) -> Tensor<5> {
        if let Some(c) = self.gram_scale() {
            let r = y.clone() - self.apply(x.clone());
            return x + self.adjoint(r) / c;
        }
        conjugate_gradient(self, x, y, cg_steps)
    }
}

impl Operator {
    /// Iterative back-projection towards `A·x = y` for downsampling: `x ← x + B(y − A·x)`,
    /// `iterations` times, with B the trilinear upsampling to the volume's size. Unlike the
    /// exact projection, which changes only the voxels A reads (the middle ones of each block),
    /// it spreads each correction smoothly over its neighbourhood; A·B is close to the identity
    /// (×4: eigenvalues in [0.42, 1]), so the residual falls geometrically; the exact
    /// projection then removes what is left. Other operators: [`Operator::consistent`].
    pub fn back_project(&self, x: Tensor<5>, y: &Tensor<5>, iterations: usize, cg_steps: usize) -> Tensor<5> {
        if !matches!(self, Operator::Downsample { .. }) {
            return self.consistent(x, y, cg_steps);
        }
        let d = x.dims();
        let mut x = x;
        for _ in 0..iterations {
            let r = y.clone() - self.apply(x.clone());
            x = x + crate::model::resample::trilinear(r, [d[2], d[3], d[4]]);
        }
        // What is left, by the exact projection: the result meets y exactly.
        self.consistent(x, y, cg_steps)
    }
}

/// Mean of the middle one or two voxels of each block of `factor` along `axis`.
fn down_axis(x: Tensor<5>, axis: usize, factor: usize) -> Tensor<5> {
    let dims = x.dims();
    let n = dims[axis] / factor;
    let mut split = [0usize; 6];
    split[..axis].copy_from_slice(&dims[..axis]);
    split[axis] = n;
    split[axis + 1] = factor;
    split[axis + 2..].copy_from_slice(&dims[axis + 1..]);
    let blocks: Tensor<6> = x.reshape(split);
    let mut out = dims;
    out[axis] = n;
    let picked = if factor.is_multiple_of(2) {
        blocks.narrow(axis + 1, factor / 2 - 1, 2).mean_dim(axis + 1)
    } else {
        blocks.narrow(axis + 1, factor / 2, 1)
    };
    picked.reshape(out)
}

/// The adjoint of [`down_axis`]: each value back to the voxels it averaged, with their weights.
fn up_axis(y: Tensor<5>, axis: usize, factor: usize) -> Tensor<5> {
    let dims = y.dims();
    let mut split = [0usize; 6];
    split[..axis].copy_from_slice(&dims[..axis]);
    split[axis] = dims[axis];
    split[axis + 1] = 1;
    split[axis + 2..].copy_from_slice(&dims[axis + 1..]);
    let device = y.device();
    let y: Tensor<6> = y.reshape(split);
    let zeros = |k: usize| {
        let mut s = split;
        s[axis + 1] = k;
        Tensor::<6>::zeros(s, &device)
    };
    let (parts, before) = if factor.is_multiple_of(2) {
        (vec![y.clone() * 0.5, y * 0.5], factor / 2 - 1)
    } else {
        (vec![y], factor / 2)
    };
    let after = factor - before - parts.len();
    let mut all = Vec::new();
    if before > 0 {
        all.push(zeros(before));
    }
    all.extend(parts);
    if after > 0 {
        all.push(zeros(after));
    }
    let mut out = dims;
    out[axis] = dims[axis] * factor;
    Tensor::cat(all, axis + 1).reshape(out)
}

/// The zero-padded 3D convolution with the outer product of `taps` (symmetric), as three 1D
/// passes (the same sums, 3k instead of k³ products per voxel). Not `conv3d`: on the wgpu
/// backend (lavapipe, fusion on), burn 0.22's `conv3d` of an elementwise result that reads
/// another `conv3d`'s output (`conv3d(conv3d(z) + 0.5·w)`) came out wrong, 2.6 relative to the
/// CPU backend; the GPU-path test of the CG data consistency caught it.
fn blur(x: Tensor<5>, taps: &[f32]) -> Tensor<5> {
    (2..5).fold(x, |x, axis| blur_axis(x, axis, taps))
}

/// One zero-padded 1D pass of `taps` along `axis`.
fn blur_axis(x: Tensor<5>, axis: usize, taps: &[f32]) -> Tensor<5> {
    let dims = x.dims();
    let (n, p) = (dims[axis], taps.len() / 2);
    let mut pad = dims;
    pad[axis] = p;
    let zeros = Tensor::<5>::zeros(pad, &x.device());
    let padded = Tensor::cat(vec![zeros.clone(), x, zeros], axis);
    taps.iter()
        .enumerate()
        .map(|(i, &t)| padded.clone().narrow(axis, i, n) * t)
        .reduce(|a, b| a + b)
        .expect("at least one tap")
}

/// `steps` conjugate-gradient steps on the normal equations `AᵀA·x = Aᵀy`, from `x`, for each
/// volume of the batch separately; a volume stops where its normal residual has fallen 10⁶-fold
/// (float32 cannot resolve more; further steps would amplify rounding).
fn conjugate_gradient(op: &Operator, x: Tensor<5>, y: &Tensor<5>, steps: usize) -> Tensor<5> {
    let b = x.dims()[0];
    let dot = |a: &Tensor<5>, c: &Tensor<5>| -> Tensor<5> {
        let d = a.dims();
        (a.clone() * c.clone()).reshape([b, d[1] * d[2] * d[3] * d[4]]).sum_dim(1).reshape([b, 1, 1, 1, 1])
    };
    let mut x = x;
    let mut r = op.adjoint(y.clone() - op.apply(x.clone()));
    let mut p = r.clone();
    let mut rr = dot(&r, &r);
    let floor = rr.clone() * 1e-12;
    for _ in 0..steps {
        let active = rr.clone().greater(floor.clone()).float();
        if active.clone().sum().into_scalar::<f64>() == 0.0 {
            break;
        }
        let ap = op.adjoint(op.apply(p.clone()));
        let alpha = rr.clone() / dot(&p, &ap).clamp_min(1e-30) * active.clone();
        x = x + p.clone() * alpha.clone();
        r = r - ap * alpha;
        let next = dot(&r, &r);
        p = r.clone() + p * (next.clone() / rr.clamp_min(1e-30) * active);
        rr = next;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// Seeded standard normal values (the tests do not depend on the backend's RNG).
    fn normal(dims: [usize; 5], seed: u64, device: &Device) -> Tensor<5> {
        use crate::diffusion::{NoiseSource, SeededNoise};
        SeededNoise::new(seed, 1.0).draw(dims, device).unwrap()
    }

    fn ops(device: &Device) -> Vec<(&'static str, Operator)> {
        let keep = normal([1, 1, 8, 8, 8], 7, device).greater_elem(0.25).float();
        vec![
            ("sr ×4", Operator::Downsample { factor: 4, axes: [true; 3] }),
            ("sr ×2 along z", Operator::Downsample { factor: 2, axes: [true, false, false] }),
            ("sr ×3", Operator::Downsample { factor: 3, axes: [true, true, false] }),
            ("infill", Operator::Mask { keep: Box::new(keep) }),
            ("deblur", Operator::Blur { taps: gaussian_taps(5, 2.0).unwrap() }),
        ]
    }

    #[test]
    fn adjoints_satisfy_the_identity() {
        let device = Device::flex();
        for (name, op) in ops(&device) {
            let edge = if name == "sr ×3" { 9 } else { 8 };
            let dims = [2, 1, edge, edge, 8];
            let op = match op {
                Operator::Mask { .. } if edge != 8 => continue,
                op => op,
            };
            let x = normal(dims, 1, &device);
            let y = normal(op.measured_dims(dims).unwrap(), 2, &device);
            let lhs = (op.apply(x.clone()) * y.clone()).sum().into_scalar::<f64>();
            let rhs = (x * op.adjoint(y)).sum().into_scalar::<f64>();
            assert!(
                (lhs - rhs).abs() <= 1e-5 * lhs.abs().max(1.0),
                "{name}: ⟨Ax, y⟩ {lhs} vs ⟨x, Aᵀy⟩ {rhs}"
            );
        }
    }

    #[test]
    fn downsampling_is_pytorchs_trilinear_and_blur_has_tf_prdits_taps() {
        let device = Device::flex();
        let x = normal([1, 1, 16, 16, 8], 3, &device);
        for (factor, size) in [(4, [4, 4, 2]), (2, [8, 8, 4])] {
            let ours = Operator::Downsample { factor, axes: [true; 3] }.apply(x.clone());
            let theirs = crate::model::resample::trilinear(x.clone(), size);
            let err = (ours - theirs).abs().max().into_scalar::<f32>();
            assert!(err < 1e-6, "×{factor}: {err}");
        }
        // TF-PRDiT's deblurring kernel: 5 taps, σ 2 (`diffusion/deblurring.py`).
        let taps = gaussian_taps(5, 2.0).unwrap();
        for (a, b) in taps.iter().zip([0.152469, 0.221841, 0.251379, 0.221841, 0.152469]) {
            assert!((a - b).abs() < 1e-6, "{taps:?}");
        }
        assert!(gaussian_taps(4, 2.0).is_err() && gaussian_taps(5, 0.0).is_err());
    }

    #[test]
    fn back_projection_converges_to_the_measurement() {
        let device = Device::flex();
        let truth = normal([1, 1, 16, 16, 16], 8, &device);
        let guess = normal([1, 1, 16, 16, 16], 9, &device);
        let op = Operator::Downsample { factor: 4, axes: [true; 3] };
        let y = op.apply(truth);
        let residual = |x: Tensor<5>| (op.apply(x) - y.clone()).square().sum().sqrt().into_scalar::<f64>();
        let start = residual(guess.clone());
        let r10 = residual(op.back_project(guess.clone(), &y, 10, 0));
        eprintln!("back-projection ×4, 10 steps and the projection: residual {start:.3e} → {r10:.3e}");
        assert!(r10 < 1e-5 * start, "{start} {r10}");
        // The steps alone: geometric decrease (A·B's eigenvalues lie in [0.42, 1]).
        let d = guess.dims();
        let mut x = guess;
        let mut last = start;
        for k in 0..10 {
            x = x.clone() + crate::model::resample::trilinear(y.clone() - op.apply(x), [d[2], d[3], d[4]]);
            let r = residual(x.clone());
            assert!(r < 0.6 * last, "step {k}: {last} → {r}");
            last = r;
        }
    }

    #[test]
    fn consistency_meets_the_measurement() {
        let device = Device::flex();
        let truth = normal([1, 1, 8, 8, 8], 4, &device);
        let guess = normal([1, 1, 8, 8, 8], 5, &device);
        for (name, op) in ops(&device).into_iter().filter(|(name, _)| *name != "sr ×3") {
            let y = op.apply(truth.clone());
            let before = (op.apply(guess.clone()) - y.clone()).square().sum().into_scalar::<f64>();
            let x = op.consistent(guess.clone(), &y, 20);
            let after = (op.apply(x) - y).square().sum().into_scalar::<f64>();
            // The blur is ill-conditioned: 20 CG steps reduce the residual 440× here.
            let bound = if op.gram_scale().is_some() { 1e-9 } else { 1e-2 };
            eprintln!("{name}: ‖Ax − y‖² {before:.3e} → {after:.3e}");
            assert!(after <= bound * before, "{name}: ‖Ax − y‖² {before} → {after}");
        }
    }
}
