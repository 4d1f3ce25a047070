//! `prdit restore`: a measurement (given, or simulated from a known volume), K reconstructions
//! with TF-PRDiT's guided sampler or a few-step solver with data consistency, NIfTI outputs,
//! a preview, the measurement residual, metrics against the known volume and a manifest.
//! Re-running a job into its folder keeps the reconstructions already written.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::xray::{FIELD_MM, Geometry, Projector};
use super::{Consistent, Guidance, Operator, guided};
use crate::data::nifti::{read_volume, write_volume_oriented};
use crate::data::preview::{Preview, shown, write_preview};
use crate::data::volume::{Orientation, ValueRange, Volume, Window};
use crate::device::to_host;
use crate::diffusion::sampler::{Field, Grid, Sampler, Solver};
use crate::diffusion::{NoiseSource, sample};
use crate::error::{Error, Result};
use crate::fsio::{FolderLock, write_atomic};
use crate::model::Prdit;
use crate::resolve::{Pick, Weights, resolve_model};
use crate::sample::{VolumeNoise, sha256_file};
use crate::train::DataInfo;
use crate::weights::checkpoint;

/// Which restoration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Super-resolution: trilinear downsampling by `--factor` (all axes, or `--axis z`: thick
    /// slices to thin).
    Sr,
    /// Infilling: the voxels outside a box (default TF-PRDiT's centre cube of half the edge)
    /// or outside a mask file are measured.
    Infill,
    /// Deblurring: a normalised 3D Gaussian (`--kernel` taps, `--sigma`), zero padding.
    Deblur,
    /// Sparse-view X-rays: DRRs of `--views` views (TF-PRDiT's angles) or `--angles`, in TF-PRDiT's
    /// geometry (700 mm source to isocentre, 820 mm to the panel, 256 mm field and panel).
    Xray,
}

/// How a restoration is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RestoreSampler {
    /// TF-PRDiT's guided predictor–corrector sampler (its settings per task; 1000 steps).
    Guided,
    /// UniPC on the log-SNR grid, the image prediction made consistent with the measurement.
    Unipc,
    /// DPM-Solver++(2M), likewise.
    Dpm2m,
    /// DDIM, likewise.
    Ddim,
}

/// Everything a job does, recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreOptions {
    pub task: Task,
    pub sampler: RestoreSampler,
    pub steps: usize,
    pub num: usize,
    pub seed: u64,
    /// Super-resolution factor and whether only the first axis (z) is downsampled.
    pub factor: usize,
    pub z_only: bool,
    /// Infilling: the unmeasured box `[d0, h0, w0, d1, h1, w1)` (absent: the centre cube of half
    /// the edge, or `mask`).
    pub box_: Option<[usize; 6]>,
    /// Infilling: a volume whose nonzero voxels are the measured ones.
    pub mask: Option<PathBuf>,
    pub kernel: usize,
    pub sigma: f64,
    /// Conjugate-gradient steps of the data consistency of the blur and the X-rays.
    pub cg_steps: usize,
    /// X-rays: TF-PRDiT's set of this many views (unless `angles`).
    #[serde(default = "two_views")]
    pub views: usize,
    /// X-rays: gantry angles in degrees instead of TF-PRDiT's set.
    #[serde(default)]
    pub angles: Option<Vec<f64>>,
    /// The guided sampler's scale ρ instead of the task's TF-PRDiT default. Its step on x is
    /// ρ·w·Aᵀr/‖r‖, whatever the volume's size, so the defaults (tuned at 128³) are too strong
    /// on smaller volumes for the X-rays (`docs/restore.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
}

fn two_views() -> usize {
    2
}

/// Where a job reads and writes.
#[derive(Debug, Clone)]
pub struct RestoreJob {
    /// A run directory (its newest checkpoint), a checkpoint folder or a prdit model file.
    pub model: PathBuf,
    /// The measurement, as `A` produces it (exclusive with `simulate`).
    pub input: Option<PathBuf>,
    /// A known volume (model space) to simulate the measurement from and to score against.
    pub simulate: Option<PathBuf>,
    pub out: PathBuf,
    pub options: RestoreOptions,
}

/// Scores of a reconstruction against the known volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scores {
    /// PSNR over the model-space range (peak-to-peak 2 for [−1, 1], 1 for [0, 1]).
    pub psnr_db: f64,
    /// SSIM as TF-PRDiT reports it ([`crate::eval::ssim::tf_prdit`]) on both volumes mapped
    /// from the model-space range to [0, 1] and clipped there.
    #[serde(default)]
    pub ssim: Option<f64>,
    /// Mean absolute error in HU per tissue band of the known volume (TF-PRDiT's bands: air
    /// [−1024, −900), lung [−900, −500), fat [−150, −50), soft tissue [−50, 100), bone
    /// [300, 1500)); absent without an HU window or where the band is empty.
    pub mae_hu: Vec<(String, Option<f64>)>,
}

/// One reconstruction in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoredRecord {
    pub index: usize,
    pub file: String,
    /// `‖A·x − y‖ / ‖y‖`.
    pub residual: f64,
    pub seconds: f64,
    pub scores: Option<Scores>,
}

/// `manifest.json` of a restoration folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreManifest {
    pub model: PathBuf,
    pub model_sha256: String,
    pub options: RestoreOptions,
    pub network_calls: usize,
    pub measurement: String,
    pub volumes: Vec<RestoredRecord>,
    /// With K > 1: the voxelwise mean's scores, and the Spearman correlation of the voxelwise
    /// standard deviation with the mean's absolute error (with a known volume).
    pub mean_scores: Option<Scores>,
    pub spearman_std_error: Option<f64>,
}

/// Back-projection steps of super-resolution's data consistency with the few-step solvers (the
/// exact projection changes only the voxels the operator reads and measured 1.9 dB worse on the
/// demo's model: `docs/restore.md`).
pub const SR_BACK_PROJECTIONS: usize = 10;

const BANDS: [(&str, f32, f32); 5] = [
    ("air", -1024.0, -900.0),
    ("lung", -900.0, -500.0),
    ("fat", -150.0, -50.0),
    ("soft tissue", -50.0, 100.0),
    ("bone", 300.0, 1500.0),
];

impl RestoreOptions {
    /// The measurement operator for volumes of edge `size`.
    pub fn operator(&self, size: usize, device: &Device) -> Result<(Operator, Guidance)> {
        Ok(match self.task {
            Task::Sr => {
                let axes = if self.z_only { [true, false, false] } else { [true; 3] };
                let op = Operator::Downsample { factor: self.factor, axes };
                op.measured_dims([1, 1, size, size, size])?;
                (op, Guidance::SR)
            }
            Task::Infill => {
                let keep: Vec<f32> = match (&self.mask, self.box_) {
                    (Some(path), None) => {
                        let m = read_volume(path)?;
                        if m.dims != [size; 3] {
                            return Err(Error::data(
                                path,
                                format!("the mask is {:?}, the model's volumes {size}³", m.dims),
                            ));
                        }
                        m.data.iter().map(|&v| if v != 0.0 { 1.0 } else { 0.0 }).collect()
                    }
                    (None, b) => {
                        let [d0, h0, w0, d1, h1, w1] = b.unwrap_or({
                            let (lo, hi) = ((size - size / 2) / 2, (size - size / 2) / 2 + size / 2);
                            [lo, lo, lo, hi, hi, hi]
                        });
                        if !(d0 < d1 && h0 < h1 && w0 < w1 && d1 <= size && h1 <= size && w1 <= size) {
                            return Err(Error::invalid(
                                "box",
                                format!("{:?} is not a box inside {size}³", [d0, h0, w0, d1, h1, w1]),
                            ));
                        }
                        let mut keep = vec![1.0f32; size * size * size];
                        for d in d0..d1 {
                            for h in h0..h1 {
                                for w in w0..w1 {
                                    keep[(d * size + h) * size + w] = 0.0;
                                }
                            }
                        }
                        keep
                    }
                    (Some(_), Some(_)) => {
                        return Err(Error::invalid("mask", "give a mask file or a box, not both"));
                    }
                };
                let keep = Tensor::from_data(TensorData::new(keep, [1, 1, size, size, size]), device);
                (Operator::Mask { keep: Box::new(keep) }, Guidance::INFILL)
            }
            Task::Deblur => (
                Operator::Blur { taps: super::ops::gaussian_taps(self.kernel, self.sigma)? },
                Guidance::DEBLUR,
            ),
            Task::Xray => {
                let geometry = match &self.angles {
                    Some(a) => Geometry::with_angles(a, size)?,
                    None => Geometry::official(self.views, size)?,
                };
                (Operator::Xray(Box::new(Projector::new(geometry, device)?)), Guidance::XRAY)
            }
        })
    }

    /// Network calls per reconstruction.
    pub fn network_calls(&self) -> Result<usize> {
        match self.sampler {
            RestoreSampler::Guided => Ok(crate::diffusion::time_grid(self.steps)?.len()),
            _ => crate::diffusion::sampler::network_calls(self.ode(), self.steps),
        }
    }

    fn ode(&self) -> Sampler {
        let solver = match self.sampler {
            RestoreSampler::Unipc | RestoreSampler::Guided => Solver::UniPc,
            RestoreSampler::Dpm2m => Solver::DpmPp2m,
            RestoreSampler::Ddim => Solver::Ddim,
        };
        Sampler::Ode { solver, grid: Grid::LogSnr, field: Field::Official }
    }
}

fn name(i: usize) -> String {
    format!("restored-{i:05}.nii.gz")
}

fn scores(x: &[f32], truth: &[f32], size: usize, range: ValueRange, window: Option<Window>) -> Scores {
    let [lo, hi] = range.bounds();
    let unit =
        |v: &[f32]| -> Vec<f32> { v.iter().map(|&a| ((a - lo) / (hi - lo)).clamp(0.0, 1.0)).collect() };
    let ssim = Some(crate::eval::ssim::tf_prdit(&unit(x), &unit(truth), [size; 3])).filter(|v| v.is_finite());
    let mse = x.iter().zip(truth).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / x.len() as f64;
    let peak = (hi - lo) as f64;
    let psnr_db = 10.0 * (peak * peak / mse.max(1e-30)).log10();
    let mae_hu = BANDS
        .iter()
        .map(|&(band, a, b)| {
            let value = window.and_then(|w| {
                let (sum, n) = x.iter().zip(truth).fold((0.0f64, 0usize), |(s, n), (&p, &t)| {
                    let th = w.to_hu_from(t, range);
                    if th >= a && th < b {
                        (s + (w.to_hu_from(p, range) - th).abs() as f64, n + 1)
                    } else {
                        (s, n)
                    }
                });
                (n > 0).then(|| sum / n as f64)
            });
            (band.to_string(), value)
        })
        .collect();
    Scores { psnr_db, ssim, mae_hu }
}

/// Spearman's rank correlation of two equally long series (average ranks for ties).
pub fn spearman(a: &[f32], b: &[f32]) -> f64 {
    fn ranks(v: &[f32]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut k = 0;
        while k < idx.len() {
            let mut e = k;
            while e + 1 < idx.len() && v[idx[e + 1]] == v[idx[k]] {
                e += 1;
            }
            for &i in &idx[k..=e] {
                r[i] = (k + e) as f64 / 2.0;
            }
            k = e + 1;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt().max(1e-300)
}

/// Runs a job; `progress(done, total)` counts reconstructions.
pub fn restore(
    job: &RestoreJob,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RestoreManifest> {
    let o = &job.options;
    if o.num == 0 {
        return Err(Error::invalid("num", "at least one reconstruction"));
    }
    let model_ref = resolve_model(&job.model, Weights::Ema, Pick::Newest)?;
    if !model_ref.is_prdit() {
        return Err(Error::invalid("model", "restore takes a prdit run or model file"));
    }
    let file = model_ref.file().to_path_buf();
    let model = checkpoint::load::<Prdit>(&file, device)?;
    let size = model.config().input_size;
    let info = model_ref.run_dir().map(|r| DataInfo::load(&r)).transpose()?;
    let range = info.as_ref().map_or(ValueRange::default(), |i| i.value_range);
    let window = info.as_ref().and_then(|i| i.window_hu).map(Window::from);
    let orientation = info.as_ref().map_or(Orientation::default(), |i| i.orientation);
    let spacing = info.as_ref().map_or([1.0; 3], |i| i.spacing_mm);
    let (op, mut guidance) = o.operator(size, device)?;
    if let Some(rho) = o.rho {
        if !(rho >= 0.0 && rho.is_finite()) {
            return Err(Error::invalid("rho", format!("the guidance scale must be ≥ 0, given {rho}")));
        }
        guidance.rho = rho;
    }
    let calls = o.network_calls()?;
    let full = [1, 1, size, size, size];
    let to_tensor = |v: &Volume, path: &Path, dims: [usize; 5]| -> Result<Tensor<5>> {
        if v.dims != [dims[2], dims[3], dims[4]] {
            return Err(Error::data(
                path,
                format!(
                    "is {:?}, this task's measurement of the model's {size}³ volumes is {:?}",
                    v.dims,
                    &dims[2..]
                ),
            ));
        }
        Ok(Tensor::from_data(TensorData::new(v.data.clone(), dims), device))
    };
    let (y, truth, measured_from) = match (&job.input, &job.simulate) {
        (Some(input), None) => {
            let v = read_volume(input)?;
            (to_tensor(&v, input, op.measured_dims(full)?)?, None, format!("{}", input.display()))
        }
        (None, Some(known)) => {
            let v = read_volume(known)?;
            let x = to_tensor(&v, known, full)?;
            (op.apply(x), Some(v.data), format!("simulated from {}", known.display()))
        }
        _ => {
            return Err(Error::invalid(
                "input",
                "give the measurement (--input) or a known volume (--simulate)",
            ));
        }
    };
    let _lock = FolderLock::acquire(&job.out)?;
    std::fs::create_dir_all(&job.out).map_err(|e| Error::io(&job.out, e))?;
    let manifest_path = job.out.join("manifest.json");
    let model_sha256 = sha256_file(&file)?;
    let mut manifest = RestoreManifest {
        model: file.clone(),
        model_sha256,
        options: o.clone(),
        network_calls: calls,
        measurement: measured_from,
        volumes: Vec::new(),
        mean_scores: None,
        spearman_std_error: None,
    };
    if manifest_path.is_file() {
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
        let old: RestoreManifest = serde_json::from_str(&text)
            .map_err(|e| Error::data(&manifest_path, format!("unreadable manifest: {e}")))?;
        if old.model_sha256 != manifest.model_sha256
            || old.options != manifest.options
            || old.measurement != manifest.measurement
        {
            return Err(Error::data(
                &manifest_path,
                "this folder holds a restoration of another model, measurement or settings: choose another output folder",
            ));
        }
        manifest.volumes = old.volumes.into_iter().filter(|r| job.out.join(&r.file).is_file()).collect();
    }
    let y_dims = y.dims();
    let write = |path: &Path, data: Vec<f32>, dims: [usize; 3], what: &str| -> Result<Volume> {
        let spacing = if dims == [size; 3] {
            spacing
        } else if o.task == Task::Xray {
            // Views × panel rows × panel columns (the panel's pitch).
            let pitch = (FIELD_MM / size as f64) as f32;
            [1.0, pitch, pitch]
        } else {
            std::array::from_fn(|k| spacing[k] * (size / dims[k]) as f32)
        };
        let v = Volume { dims, spacing, data };
        write_volume_oriented(path, &v, what, orientation)?;
        Ok(v)
    };
    let measurement = write(
        &job.out.join("measurement.nii.gz"),
        to_host(y.clone(), "the measurement")?,
        [y_dims[2], y_dims[3], y_dims[4]],
        "prdit restore: measurement",
    )?;
    let y_norm = y.clone().square().sum().sqrt().into_scalar::<f64>().max(1e-30);
    let mut results: Vec<Vec<f32>> = Vec::new();
    for i in 0..o.num {
        let path = job.out.join(name(i));
        if manifest.volumes.iter().any(|r| r.index == i) {
            results.push(read_volume(&path)?.data);
            progress(i + 1, o.num);
            continue;
        }
        let started = Instant::now();
        let mut noise = VolumeNoise::new(o.seed, vec![i as u64]);
        let start = noise.draw(full, device)?;
        let x = match o.sampler {
            RestoreSampler::Guided => {
                guided(&model, (&op, &y), start, o.steps, guidance, &mut noise, &mut |_, _| {})?
            }
            _ => {
                let back_projections = if o.task == Task::Sr { SR_BACK_PROJECTIONS } else { 0 };
                let consistent =
                    Consistent { model: &model, op: &op, y: &y, cg_steps: o.cg_steps, back_projections };
                sample(&consistent, start, o.steps, o.ode(), &mut noise, &mut |_, _| {})?.x
            }
        };
        let residual = (op.apply(x.clone()) - y.clone()).square().sum().sqrt().into_scalar::<f64>() / y_norm;
        let data = to_host(x, "a reconstruction")?;
        if let Some(bad) = crate::weights::non_finite(&data) {
            return Err(Error::data(&path, format!("not written: the reconstruction {bad}")));
        }
        write(&path, data.clone(), [size; 3], "prdit restore")?;
        let scores = truth.as_ref().map(|t| scores(&data, t, size, range, window));
        manifest.volumes.retain(|r| r.index != i);
        manifest.volumes.push(RestoredRecord {
            index: i,
            file: name(i),
            residual,
            seconds: started.elapsed().as_secs_f64(),
            scores,
        });
        manifest.volumes.sort_by_key(|r| r.index);
        write_atomic(
            &manifest_path,
            serde_json::to_string_pretty(&manifest).expect("serialises").as_bytes(),
        )?;
        results.push(data);
        progress(i + 1, o.num);
    }
    // The measurement residual of the first reconstruction, `A·x − y`, in the measurement's shape.
    let first = Tensor::<5>::from_data(TensorData::new(results[0].clone(), full), device);
    write(
        &job.out.join("residual.nii.gz"),
        to_host(op.apply(first) - y.clone(), "the residual")?,
        [y_dims[2], y_dims[3], y_dims[4]],
        "prdit restore: A·x − y of restored-00000",
    )?;
    let voxels = size * size * size;
    let mean: Vec<f32> =
        (0..voxels).map(|v| results.iter().map(|r| r[v]).sum::<f32>() / o.num as f32).collect();
    let mut rows = vec![
        ("measurement".to_string(), measurement),
        ("reconstruction 1".to_string(), Volume { dims: [size; 3], spacing, data: results[0].clone() }),
    ];
    if o.num > 1 {
        let std: Vec<f32> = (0..voxels)
            .map(|v| {
                (results.iter().map(|r| (r[v] - mean[v]).powi(2)).sum::<f32>() / (o.num - 1) as f32).sqrt()
            })
            .collect();
        write(&job.out.join("mean.nii.gz"), mean.clone(), [size; 3], "prdit restore: voxelwise mean")?;
        write(
            &job.out.join("std.nii.gz"),
            std.clone(),
            [size; 3],
            "prdit restore: voxelwise standard deviation",
        )?;
        if let Some(t) = &truth {
            let err: Vec<f32> = mean.iter().zip(t).map(|(m, t)| (m - t).abs()).collect();
            manifest.mean_scores = Some(scores(&mean, t, size, range, window));
            manifest.spearman_std_error = Some(spearman(&std, &err));
        }
        rows.push(("voxelwise mean".to_string(), Volume { dims: [size; 3], spacing, data: mean }));
    }
    if let Some(t) = &truth {
        rows.push(("known volume".to_string(), Volume { dims: [size; 3], spacing, data: t.clone() }));
    }
    write_atomic(&manifest_path, serde_json::to_string_pretty(&manifest).expect("serialises").as_bytes())?;
    // The preview: the measurement at the volume's size (nearest, for super-resolution; for the
    // X-rays each ray's mean value spread back along it, the mean over rays per voxel).
    if let Operator::Xray(p) = &op {
        let chord = p.apply(Tensor::<5>::ones(full, device)).clamp_min(1e-6);
        let hits = p.adjoint(Tensor::<5>::ones(y.dims(), device)).clamp_min(1e-6);
        let mean_along = p.adjoint(y.clone() / chord) / hits;
        rows[0] = (
            "X-rays, back-projected".to_string(),
            Volume { dims: [size; 3], spacing, data: to_host(mean_along, "the preview")? },
        );
    } else if rows[0].1.dims != [size; 3] {
        let m = &rows[0].1;
        let t = Tensor::<5>::from_data(
            TensorData::new(m.data.clone(), [1, 1, m.dims[0], m.dims[1], m.dims[2]]),
            device,
        );
        rows[0].1 = Volume {
            dims: [size; 3],
            spacing,
            data: to_host(crate::model::resample::nearest(t, [size; 3]), "the preview")?,
        };
    }
    let volumes: Vec<Volume> = rows.iter().map(|r| r.1.clone()).collect();
    let (win, label, volumes) = shown(&volumes, window, range);
    let cli =
        |v: Option<clap::builder::PossibleValue>| v.map(|p| p.get_name().to_string()).unwrap_or_default();
    let title = format!(
        "prdit restore · {} · {}, {} steps ({} network calls) · {}",
        cli(clap::ValueEnum::to_possible_value(&o.task)),
        cli(clap::ValueEnum::to_possible_value(&o.sampler)),
        o.steps,
        calls,
        model.config().name()
    );
    let rows = rows.iter().zip(&volumes).map(|((l, _), v)| (l.clone(), v)).collect();
    write_preview(
        &job.out.join("preview.png"),
        &Preview { title, rows, window: win, window_label: label, orientation },
    )?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_known_series() {
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Ties get average ranks: x = [1, 2, 2, 3] → ranks [0, 1.5, 1.5, 3].
        let r = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!((r - 0.9486832980505138).abs() < 1e-12, "{r}");
    }
}
