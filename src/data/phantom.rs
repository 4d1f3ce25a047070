//! A procedural chest CT ("phantom"): a supine patient on a table — body outline with
//! subcutaneous fat over muscle, two lungs near −850 HU with branching vessels and airways,
//! trachea and bronchi, heart and aorta in the mediastinum, spine, ribs and sternum — plus
//! scanner noise. Random per seed, at any size; geometry lives in normalised coordinates so
//! sizes agree across resolutions. Used by tests, the demo and smoke runs: nothing in CI
//! needs real CT.
//!
//! Axes follow the NIfTI/official convention of the data pipeline: i = left→right,
//! j = anterior→posterior (the table is at large j), k = inferior→superior.

use std::path::Path;

use chacha20::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::nifti::write_volume;
use super::volume::{Volume, Window};
use crate::error::{Error, Result};
use crate::prepare::Manifest;

/// Field of view of the phantom in mm (its spacing is `FOV_MM / size`).
pub const FOV_MM: f32 = 360.0;

const AIR: f32 = -1000.0;
const FAT: f32 = -100.0;
const MUSCLE: f32 = 40.0;
const LUNG: f32 = -850.0;
const BLOOD: f32 = 40.0;
const MYOCARDIUM: f32 = 55.0;
const CORTICAL: f32 = 800.0;
const CANCELLOUS: f32 = 250.0;
const DISC: f32 = 80.0;
const CSF: f32 = 15.0;
const TABLE: f32 = 150.0;
const PAD: f32 = -900.0;

/// A tube segment from `a` to `b` of radius `r` (normalised coordinates) with value `hu`.
struct Tube {
    a: [f32; 3],
    b: [f32; 3],
    r: f32,
    hu: f32,
}

struct Lung {
    c: [f32; 3],
    r: [f32; 3],
    /// Height of the diaphragm dome above the lung's lower end.
    dome: f32,
}

impl Lung {
    fn contains(&self, p: [f32; 3]) -> bool {
        let q =
            [(p[0] - self.c[0]) / self.r[0], (p[1] - self.c[1]) / self.r[1], (p[2] - self.c[2]) / self.r[2]];
        let e = q[0] * q[0] + q[1] * q[1] + q[2] * q[2];
        // The diaphragm pushes the base up in the middle: a paraboloid floor.
        let floor = self.c[2] - self.r[2] + self.dome * (1.0 - (q[0] * q[0] + q[1] * q[1]).min(1.0));
        e < 1.0 && p[2] > floor
    }
}

fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    rng.random_range(lo..hi)
}

/// A chest CT phantom of `size`³ voxels in Hounsfield units.
pub fn chest_phantom(size: usize, seed: u64) -> Volume {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let u = |rng: &mut ChaCha8Rng, lo: f32, hi: f32| uniform(rng, lo, hi);

    // Body outline (elliptic cylinder) and fat layer.
    let body_c = u(&mut rng, -0.08, 0.0);
    let body_r = [u(&mut rng, 0.88, 0.96), u(&mut rng, 0.62, 0.72)];
    let fat = u(&mut rng, 0.08, 0.16);
    let table_y = body_c + body_r[1] + u(&mut rng, 0.03, 0.06);

    // Lungs.
    let lungs: Vec<Lung> = [-1.0f32, 1.0]
        .iter()
        .map(|&side| Lung {
            c: [side * u(&mut rng, 0.36, 0.42), body_c + u(&mut rng, -0.04, 0.04), u(&mut rng, 0.05, 0.2)],
            r: [u(&mut rng, 0.24, 0.30), u(&mut rng, 0.36, 0.44), u(&mut rng, 0.85, 1.0)],
            dome: u(&mut rng, 0.25, 0.4),
        })
        .collect();

    // Heart (left of centre, anterior, low) and aorta.
    let heart_c = [u(&mut rng, 0.05, 0.15), body_c - u(&mut rng, 0.12, 0.2), u(&mut rng, -0.45, -0.25)];
    let heart_r = [u(&mut rng, 0.24, 0.3), u(&mut rng, 0.22, 0.28), u(&mut rng, 0.3, 0.36)];
    let spine_c = [0.0, body_c + body_r[1] - u(&mut rng, 0.2, 0.24)];
    let aorta = [u(&mut rng, 0.06, 0.12), spine_c[1] - 0.16, u(&mut rng, 0.055, 0.07)];

    // Airways and vessels, as tubes.
    let mut tubes = Vec::new();
    let carina = [0.0, body_c - 0.02, lungs[0].c[2] + 0.3];
    tubes.push(Tube { a: [0.0, body_c - 0.05, 1.2], b: carina, r: 0.065, hu: MUSCLE });
    tubes.push(Tube { a: [0.0, body_c - 0.05, 1.2], b: carina, r: 0.05, hu: AIR });
    for lung in &lungs {
        let side = lung.c[0].signum();
        let hilum = [side * 0.16, lung.c[1], carina[2] - 0.1];
        tubes.push(Tube { a: carina, b: hilum, r: 0.05, hu: MUSCLE });
        tubes.push(Tube { a: carina, b: hilum, r: 0.037, hu: AIR });
        let dir = normalise([side, 0.0, -0.6]);
        grow(&mut rng, &mut tubes, lung, hilum, dir, 0.22, 0.028, 5, Kind::Airway);
        // Pulmonary vessels: trees fanning out from the hilum in every direction but medial.
        for n in 0..10 {
            let up = -0.9 + 1.8 * n as f32 / 9.0;
            let ap = uniform(&mut rng, -0.7, 0.7);
            let root = [hilum[0], hilum[1] + 0.05 * ap, hilum[2] + 0.1 * up];
            let dir = normalise([side * uniform(&mut rng, 0.3, 1.0), ap, up]);
            grow(&mut rng, &mut tubes, lung, root, dir, 0.17, 0.026, 7, Kind::Vessel);
        }
    }

    // Ribs: elliptic arcs inside the body wall, sloping down anteriorly.
    let rib_spacing = u(&mut rng, 0.13, 0.16);
    let rib_phase = u(&mut rng, 0.0, rib_spacing);
    let rib_r = [body_r[0] - fat - 0.05, body_r[1] - fat - 0.04];

    let n = size;
    let coord = |i: usize| (i as f32 + 0.5) / n as f32 * 2.0 - 1.0;
    let mut vol = Volume::filled([n, n, n], AIR);
    vol.spacing = [FOV_MM / n as f32; 3];
    for a in 0..n {
        let x = coord(a);
        for b in 0..n {
            let y = coord(b);
            for c in 0..n {
                let z = coord(c);
                let p = [x, y, z];
                let mut hu = AIR;
                if (y - table_y).abs() < 0.03 && x.abs() < 0.95 {
                    hu = TABLE;
                } else if y > table_y - 0.03 - 0.05 && y < table_y - 0.03 && x.abs() < 0.9 {
                    hu = PAD;
                }
                let e = (x / body_r[0]).powi(2) + ((y - body_c) / body_r[1]).powi(2);
                if e < 1.0 {
                    let inner = (x / (body_r[0] - fat)).powi(2) + ((y - body_c) / (body_r[1] - fat)).powi(2);
                    hu = if inner < 1.0 { MUSCLE } else { FAT };
                    if lungs.iter().any(|l| l.contains(p)) {
                        hu = LUNG;
                    }
                    let h = ((x - heart_c[0]) / heart_r[0]).powi(2)
                        + ((y - heart_c[1]) / heart_r[1]).powi(2)
                        + ((z - heart_c[2]) / heart_r[2]).powi(2);
                    if h < 1.45 && hu == MUSCLE {
                        hu = FAT; // pericardial and mediastinal fat
                    }
                    if h < 1.0 {
                        hu = if h > 0.6 { MYOCARDIUM } else { BLOOD };
                    }
                    if (x - aorta[0]).powi(2) + (y - aorta[1]).powi(2) < aorta[2].powi(2) && z > heart_c[2] {
                        hu = BLOOD;
                    }
                    hu = bone(x, y, z, spine_c, rib_r, body_c, rib_spacing, rib_phase).unwrap_or(hu);
                }
                let i = vol.index(a, b, c);
                vol.data[i] = hu;
            }
        }
    }
    for tube in &tubes {
        draw(&mut vol, tube, &lungs);
    }
    // Partial-volume blur (the scanner's point spread), then texture and noise.
    blur(&mut vol);
    for v in vol.data.iter_mut() {
        let z: f32 = StandardNormal.sample(&mut rng);
        let sigma = if (*v - LUNG).abs() < 60.0 { 30.0 } else { 15.0 };
        *v += sigma * z;
    }
    vol
}

/// Spine (vertebral bodies with discs, canal, posterior arch), ribs and sternum.
#[allow(clippy::too_many_arguments)]
fn bone(
    x: f32,
    y: f32,
    z: f32,
    spine: [f32; 2],
    rib_r: [f32; 2],
    body_c: f32,
    spacing: f32,
    phase: f32,
) -> Option<f32> {
    let (dx, dy) = (x - spine[0], y - spine[1]);
    let d = (dx * dx + dy * dy).sqrt();
    let level = ((z + 1.0 - phase) / spacing).fract();
    if d < 0.11 {
        return Some(if level < 0.18 {
            DISC
        } else if d > 0.09 {
            CORTICAL
        } else {
            CANCELLOUS
        });
    }
    let (cy, cd) = (y - (spine[1] + 0.17), (x * x + (y - (spine[1] + 0.17)).powi(2)).sqrt());
    if cd < 0.045 {
        return Some(CSF);
    }
    if cd < 0.08 && cy > -0.04 {
        return Some(CORTICAL);
    }
    // Ribs: the arc through this point's angle, its height dropping towards the front.
    let theta = (y - body_c).atan2(x);
    let (px, py) = (rib_r[0] * theta.cos(), body_c + rib_r[1] * theta.sin());
    let radial = ((x - px).powi(2) + (y - py).powi(2)).sqrt();
    let front = (-theta.sin()).max(0.0); // 1 at the anterior midline
    if radial < 0.038 && !(front > 0.85 && x.abs() < 0.12) {
        let zr = z + 0.12 * front; // ribs descend anteriorly
        let dz = (((zr + 1.0 - phase) / spacing).fract() - 0.5) * spacing;
        if (radial * radial + dz * dz).sqrt() < 0.036 {
            return Some(if radial < 0.015 && dz.abs() < 0.015 { CANCELLOUS } else { CORTICAL });
        }
    }
    // Scapulae: curved plates behind the upper ribs.
    let sx = x.abs();
    let scap_y = spine[1] - 0.02 + 0.25 * (sx - 0.55).powi(2);
    if (0.35..0.78).contains(&sx) && (y - scap_y).abs() < 0.025 && z > 0.1 && z < 0.75 + 0.2 * (0.78 - sx) {
        return Some(CORTICAL);
    }
    // Sternum.
    let sy = body_c - rib_r[1];
    if x.abs() < 0.06 && (y - sy).abs() < 0.025 && z > -0.5 {
        return Some(CANCELLOUS);
    }
    None
}

/// A [¼, ½, ¼] filter along each axis (edges replicated).
fn blur(vol: &mut Volume) {
    let [x, y, z] = vol.dims;
    let strides = [y * z, z, 1];
    let lens = [x, y, z];
    for axis in 0..3 {
        let (st, len) = (strides[axis], lens[axis]);
        let src = vol.data.clone();
        for (i, out) in vol.data.iter_mut().enumerate() {
            let pos = (i / st) % len;
            let prev = if pos > 0 { src[i - st] } else { src[i] };
            let next = if pos + 1 < len { src[i + st] } else { src[i] };
            *out = 0.25 * prev + 0.5 * src[i] + 0.25 * next;
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Airway,
    Vessel,
}

fn normalise(v: [f32; 3]) -> [f32; 3] {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-6);
    [v[0] / n, v[1] / n, v[2] / n]
}

/// Grows a branching tree from `start` along `dir` inside `lung`: each branch splits in two,
/// shorter and thinner, turned by a random angle, until `depth` runs out or it leaves the lung.
#[allow(clippy::too_many_arguments)]
fn grow(
    rng: &mut ChaCha8Rng,
    tubes: &mut Vec<Tube>,
    lung: &Lung,
    start: [f32; 3],
    dir: [f32; 3],
    length: f32,
    radius: f32,
    depth: usize,
    kind: Kind,
) {
    if depth == 0 {
        return;
    }
    let end = [start[0] + dir[0] * length, start[1] + dir[1] * length, start[2] + dir[2] * length];
    if !lung.contains(end) && depth < 5 {
        return;
    }
    match kind {
        Kind::Vessel => tubes.push(Tube { a: start, b: end, r: radius, hu: BLOOD }),
        Kind::Airway => {
            tubes.push(Tube { a: start, b: end, r: radius, hu: MUSCLE });
            tubes.push(Tube { a: start, b: end, r: radius * 0.65, hu: AIR });
        }
    }
    for _ in 0..2 {
        let jitter: [f32; 3] = [uniform(rng, -0.6, 0.6), uniform(rng, -0.6, 0.6), uniform(rng, -0.6, 0.6)];
        let d = normalise([dir[0] + jitter[0], dir[1] + jitter[1], dir[2] + jitter[2]]);
        let f = uniform(rng, 0.7, 0.9);
        grow(rng, tubes, lung, end, d, length * f, radius * 0.75, depth - 1, kind);
    }
}

/// Rasterises a tube, inside the lungs only for vessels and lung airways (the trachea and
/// main bronchi are drawn wherever they run).
fn draw(vol: &mut Volume, t: &Tube, lungs: &[Lung]) {
    let n = vol.dims[0];
    let to_index = |v: f32| ((v + 1.0) * 0.5 * n as f32 - 0.5).round() as isize;
    let lo = |k: usize| to_index(t.a[k].min(t.b[k]) - t.r).max(0) as usize;
    let hi = |k: usize| (to_index(t.a[k].max(t.b[k]) + t.r) + 1).clamp(0, n as isize) as usize;
    let ab = [t.b[0] - t.a[0], t.b[1] - t.a[1], t.b[2] - t.a[2]];
    let len2 = (ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2]).max(1e-12);
    let central = t.r >= 0.036; // trachea and main bronchi
    let coord = |i: usize| (i as f32 + 0.5) / n as f32 * 2.0 - 1.0;
    for a in lo(0)..hi(0) {
        for b in lo(1)..hi(1) {
            for c in lo(2)..hi(2) {
                let p = [coord(a), coord(b), coord(c)];
                let ap = [p[0] - t.a[0], p[1] - t.a[1], p[2] - t.a[2]];
                let s = ((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / len2).clamp(0.0, 1.0);
                let q = [ap[0] - s * ab[0], ap[1] - s * ab[1], ap[2] - s * ab[2]];
                if q[0] * q[0] + q[1] * q[1] + q[2] * q[2] < t.r * t.r
                    && (central || lungs.iter().any(|l| l.contains(p)))
                {
                    let i = vol.index(a, b, c);
                    vol.data[i] = t.hu;
                }
            }
        }
    }
}

/// The HU window phantom datasets are written with (model space [−1, 1] ↔ HU).
pub const WINDOW: Window = Window { min_hu: -1000.0, max_hu: 1000.0 };

/// One volume of a phantom dataset, in its `dataset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhantomRecord {
    /// The model-space volume, at the top of the folder.
    pub file: String,
    /// Its HU copy (`hu/…`).
    pub hu_file: String,
    pub seed: u64,
    pub shape: [usize; 3],
    pub spacing_mm: [f32; 3],
}

/// Writes a phantom dataset into `out`: `num` chest phantoms of `size`³ with seeds `seed`,
/// `seed + 1`, … — model-space volumes (through [`WINDOW`]) at the top, their HU copies under
/// `hu/` — and its `dataset.json` (keys sorted, as it has always been written). Returns the
/// manifest.
pub fn write_dataset(out: &Path, num: usize, size: usize, seed: u64) -> Result<Manifest<PhantomRecord>> {
    if num == 0 {
        return Err(Error::invalid("num", "a phantom dataset needs at least 1 volume"));
    }
    if size < 8 {
        return Err(Error::invalid(
            "size",
            format!("phantoms need an edge of at least 8 voxels, not {size}"),
        ));
    }
    let hu_dir = out.join("hu");
    std::fs::create_dir_all(&hu_dir).map_err(|e| Error::io(&hu_dir, e))?;
    let mut volumes = Vec::with_capacity(num);
    for seed in seed..seed + num as u64 {
        let hu = chest_phantom(size, seed);
        let name = format!("phantom-{seed:05}.nii.gz");
        write_volume(&hu_dir.join(&name), &hu, &format!("prdit phantom seed {seed}, HU"))?;
        let mut model = hu.clone();
        model.data.iter_mut().for_each(|v| *v = WINDOW.to_model(*v));
        write_volume(&out.join(&name), &model, &format!("prdit phantom seed {seed}, model space"))?;
        volumes.push(PhantomRecord {
            hu_file: format!("hu/{name}"),
            file: name,
            seed,
            shape: hu.dims,
            spacing_mm: hu.spacing,
        });
    }
    let manifest = Manifest {
        source: Some("prdit phantom".into()),
        recipe: None,
        options: None,
        orientation: None,
        value_range: None,
        size: Some(size),
        window_hu: [WINDOW.min_hu, WINDOW.max_hu],
        volumes,
        failed: None,
    };
    let value = serde_json::to_value(&manifest).expect("a manifest serialises");
    let json = serde_json::to_string_pretty(&value).expect("a JSON value serialises");
    crate::fsio::write_atomic(&out.join("dataset.json"), json.as_bytes())?;
    Ok(manifest)
}

/// What a chest volume is made of, by HU class: air (< −950), lung (−950 to −500), soft tissue
/// (−500 to 200, fat to blood) and bone (≥ 200), as fractions of the volume, and the lung
/// volume in mL. A number to tell generated anatomy from texture: samples of a model that
/// learned the phantom have the training phantoms' mix.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct TissueMix {
    pub air: f64,
    pub lung: f64,
    pub soft: f64,
    pub bone: f64,
    pub lung_ml: f64,
}

impl TissueMix {
    /// The mix of a volume in HU.
    pub fn of_hu(v: &Volume) -> Self {
        let mut n = [0usize; 4];
        for &x in &v.data {
            let class = match x {
                x if x < -950.0 => 0,
                x if x < -500.0 => 1,
                x if x < 200.0 => 2,
                _ => 3,
            };
            n[class] += 1;
        }
        let total = v.data.len().max(1) as f64;
        let voxel_ml = v.spacing.iter().map(|&s| s as f64).product::<f64>() / 1000.0;
        TissueMix {
            air: n[0] as f64 / total,
            lung: n[1] as f64 / total,
            soft: n[2] as f64 / total,
            bone: n[3] as f64 / total,
            lung_ml: n[1] as f64 * voxel_ml,
        }
    }

    /// The mean mix of several volumes.
    pub fn mean(mixes: &[TissueMix]) -> Self {
        let k = mixes.len().max(1) as f64;
        let sum = |f: fn(&TissueMix) -> f64| mixes.iter().map(f).sum::<f64>() / k;
        TissueMix {
            air: sum(|m| m.air),
            lung: sum(|m| m.lung),
            soft: sum(|m| m.soft),
            bone: sum(|m| m.bone),
            lung_ml: sum(|m| m.lung_ml),
        }
    }
}

impl std::fmt::Display for TissueMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "air {:.1}%, lung {:.1}%, soft tissue {:.1}%, bone {:.1}%; lung volume {:.0} mL",
            100.0 * self.air,
            100.0 * self.lung,
            100.0 * self.soft,
            100.0 * self.bone,
            self.lung_ml
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fraction(v: &Volume, lo: f32, hi: f32) -> f64 {
        v.data.iter().filter(|&&x| x >= lo && x < hi).count() as f64 / v.data.len() as f64
    }

    #[test]
    fn anatomy_is_plausible_and_seeded() {
        let v = chest_phantom(48, 1);
        assert_eq!(v.dims, [48, 48, 48]);
        assert_eq!(v, chest_phantom(48, 1), "same seed, same volume");
        assert_ne!(v.data, chest_phantom(48, 2).data);
        // Air outside, lungs, soft tissue and bone all present in sensible amounts.
        let lung = fraction(&v, -950.0, -700.0);
        let soft = fraction(&v, -200.0, 150.0);
        let bone = fraction(&v, 200.0, 2000.0);
        assert!(lung > 0.08 && lung < 0.4, "lung fraction {lung}");
        assert!(soft > 0.15, "soft tissue fraction {soft}");
        assert!(bone > 0.005 && bone < 0.1, "bone fraction {bone}");
        // The left and right lungs: mid-axial slice, lung voxels on both sides of the midline.
        let k = 30;
        let side = |range: std::ops::Range<usize>| {
            range
                .flat_map(|a| (0..48).map(move |b| (a, b)))
                .filter(|&(a, b)| {
                    let x = v.data[v.index(a, b, k)];
                    (-950.0..-700.0).contains(&x)
                })
                .count()
        };
        assert!(side(0..20) > 50 && side(28..48) > 50);
    }

    #[test]
    fn datasets_are_written_with_their_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("set");
        let m = write_dataset(&out, 2, 8, 7).unwrap();
        assert_eq!(m.volumes.len(), 2);
        let hu = crate::data::nifti::read_volume(&out.join("hu/phantom-00008.nii.gz")).unwrap();
        assert_eq!(hu.data, chest_phantom(8, 8).data);
        let model = crate::data::nifti::read_volume(&out.join("phantom-00008.nii.gz")).unwrap();
        assert!(model.data.iter().all(|x| (-1.0..=1.0).contains(x)));
        // Every key it has always had, in the order it has always had (sorted).
        let text = std::fs::read_to_string(out.join("dataset.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["size", "source", "volumes", "window_hu"]);
        assert_eq!(v["source"], "prdit phantom");
        assert_eq!(v["window_hu"], serde_json::json!([-1000.0, 1000.0]));
        let r = &v["volumes"][1];
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["file", "hu_file", "seed", "shape", "spacing_mm"]);
        assert_eq!(
            (r["file"].as_str(), r["hu_file"].as_str(), r["seed"].as_u64()),
            (Some("phantom-00008.nii.gz"), Some("hu/phantom-00008.nii.gz"), Some(8))
        );
        let pos = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
        assert!(
            pos("size") < pos("source")
                && pos("source") < pos("volumes")
                && pos("volumes") < pos("window_hu")
        );
        // It reads back as the shared manifest type.
        let back: Manifest<PhantomRecord> = serde_json::from_str(&text).unwrap();
        assert_eq!(back.volumes, m.volumes);
        assert!(back.failures().is_empty() && back.recipe.is_none());

        assert!(write_dataset(&out, 0, 8, 0).unwrap_err().to_string().contains("`num`"));
        assert!(write_dataset(&out, 1, 4, 0).unwrap_err().to_string().contains("`size`"));
    }
}
