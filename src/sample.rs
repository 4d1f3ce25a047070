//! Generating volumes (spec §7): batches of volumes from seeded noise through either
//! sampler, written as NIfTI (`xs/` final states, optionally `x0/` last image predictions)
//! with previews and a `manifest.json`. A volume's noise depends only on (seed, its index),
//! so re-running a job skips what exists and regenerates a missing volume exactly (with the
//! same `--batch`, on the same backend).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::nifti::write_volume;
use crate::data::preview::write_preview;
use crate::data::volume::{Volume, Window};
use crate::diffusion::noise::{Purpose, normal_noise};
use crate::diffusion::{NOISE_STD, NoiseSource, Sampler, sample};
use crate::error::{Error, Result};
use crate::model::network::Network;
use crate::train::run::write_atomic;

/// Draws per volume are numbered 0 (initial state), 1, 2, … (corrector steps); at most this
/// many per volume.
const DRAWS_PER_VOLUME: u64 = 2048;

/// Per-volume noise streams: draw `d` of volume `i` comes from stream (seed, i·2048 + d), so a
/// volume's noise does not depend on the other volumes of its batch.
pub struct VolumeNoise {
    seed: u64,
    volumes: Vec<u64>,
    draws: u64,
}

impl VolumeNoise {
    /// Noise for the volumes with these global indices.
    pub fn new(seed: u64, volumes: Vec<u64>) -> Self {
        VolumeNoise { seed, volumes, draws: 0 }
    }
}

impl NoiseSource for VolumeNoise {
    fn draw(&mut self, shape: [usize; 5], device: &Device) -> Result<Tensor<5>> {
        if shape[0] != self.volumes.len() || self.draws >= DRAWS_PER_VOLUME {
            return Err(Error::invalid("noise", "the per-volume noise streams do not fit this draw"));
        }
        let per: usize = shape[1..].iter().product();
        let mut data = Vec::with_capacity(per * self.volumes.len());
        for &v in &self.volumes {
            data.extend(normal_noise(
                self.seed,
                Purpose::Sample,
                v * DRAWS_PER_VOLUME + self.draws,
                per,
                NOISE_STD,
            ));
        }
        self.draws += 1;
        Ok(Tensor::from_data(burn::tensor::TensorData::new(data, shape), device))
    }
}

/// What a sampling job writes and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleOptions {
    pub out: PathBuf,
    pub num: usize,
    pub batch: usize,
    pub steps: usize,
    /// `hot` (predictor–corrector) or `deterministic`.
    pub sampler: String,
    /// Predictor–corrector jump.
    pub k: usize,
    pub seed: u64,
    /// Write Hounsfield units with this window instead of model space.
    pub hu: Option<Window>,
    /// Also write the last image prediction (`x0/`).
    pub write_x0: bool,
    /// Voxel spacing written into the headers (mm).
    pub spacing_mm: [f32; 3],
}

impl SampleOptions {
    fn sampler(&self) -> Result<Sampler> {
        match self.sampler.as_str() {
            "hot" | "pc" => Ok(Sampler::PredictorCorrector { k: self.k }),
            "deterministic" | "ddim" => Ok(Sampler::Deterministic),
            other => Err(Error::invalid("sampler", format!("`{other}` is not hot or deterministic"))),
        }
    }
}

/// The checkpoint a job samples from, recorded in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSource {
    pub file: PathBuf,
    pub sha256: String,
    /// `ema` or `raw`.
    pub weights: String,
    pub network: String,
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// One written volume in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub index: usize,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x0_file: Option<String>,
    /// The noise of volume `index` is stream `index` of this seed.
    pub seed: u64,
    pub seconds: f64,
}

/// `manifest.json` of an output folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub source: ModelSource,
    pub options: SampleOptions,
    pub network_calls_per_volume: usize,
    pub volumes: Vec<VolumeRecord>,
}

/// Progress of a job: (volumes done, volumes total, step in the current batch, its steps).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, usize, usize);

fn file_name(i: usize) -> String {
    format!("sample-{i:05}.nii.gz")
}

/// Generates `opts.num` volumes with `model` (batched, constant memory in the number of
/// steps), skipping those already written; returns the manifest.
pub fn run<N: Network>(
    model: &N,
    source: ModelSource,
    opts: &SampleOptions,
    device: &Device,
    progress: Progress,
) -> Result<Manifest> {
    let sampler = opts.sampler()?;
    if opts.num == 0 || opts.batch == 0 {
        return Err(Error::invalid("--num/--batch", "must be at least 1"));
    }
    let calls = crate::diffusion::time_grid(opts.steps)?.len();
    let size = N::volume_size(model.config());
    let xs = opts.out.join("xs");
    let x0_dir = opts.out.join("x0");
    let previews = opts.out.join("previews");
    for d in [&xs, &previews].into_iter().chain(opts.write_x0.then_some(&x0_dir)) {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let manifest_path = opts.out.join("manifest.json");
    let mut manifest =
        Manifest { source, options: opts.clone(), network_calls_per_volume: calls, volumes: Vec::new() };
    if manifest_path.is_file() {
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
        let old: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::data(&manifest_path, format!("unreadable manifest: {e}")))?;
        let same = old.source.sha256 == manifest.source.sha256
            && old.options.steps == opts.steps
            && old.options.sampler == opts.sampler
            && old.options.k == opts.k
            && old.options.seed == opts.seed
            && old.options.hu == opts.hu;
        if !same {
            return Err(Error::data(
                &manifest_path,
                "this folder holds volumes from another checkpoint, sampler, step count, seed or \
                 intensity scale: choose another --out",
            ));
        }
        manifest.volumes = old.volumes;
    }
    let window = opts.hu;
    let to_volume = |t: Tensor<5>, i: usize| -> Volume {
        let data: Vec<f32> = t.narrow(0, i, 1).into_data().try_into_vec_as().unwrap_or_default();
        let data = match window {
            Some(w) => data.into_iter().map(|x| w.to_hu(x)).collect(),
            None => data,
        };
        Volume { dims: [size; 3], spacing: opts.spacing_mm, data }
    };
    let (lo, hi) = window.map_or((-1.0, 1.0), |w| (w.min_hu, w.max_hu));
    let mut done = (0..opts.num).filter(|&i| xs.join(file_name(i)).is_file()).count();
    for first in (0..opts.num).step_by(opts.batch) {
        let indices: Vec<usize> = (first..(first + opts.batch).min(opts.num)).collect();
        let complete = |i: &usize| {
            xs.join(file_name(*i)).is_file() && (!opts.write_x0 || x0_dir.join(file_name(*i)).is_file())
        };
        if indices.iter().all(complete) {
            continue;
        }
        let started = Instant::now();
        let mut noise = VolumeNoise::new(opts.seed, indices.iter().map(|&i| i as u64).collect());
        let start = noise.draw([indices.len(), 1, size, size, size], device)?;
        let out = sample(model, start, opts.steps, sampler, &mut noise, &mut |s, n| {
            progress(done, opts.num, s, n)
        })?;
        let seconds = started.elapsed().as_secs_f64() / indices.len() as f64;
        for (j, &i) in indices.iter().enumerate() {
            let name = file_name(i);
            let desc = format!("prdit sample {i}, seed {}, {} steps", opts.seed, opts.steps);
            let vol = to_volume(out.x.clone(), j);
            write_volume(&xs.join(&name), &vol, &desc)?;
            let mut rows = vec![vol];
            if opts.write_x0 {
                let v = to_volume(out.x0.clone(), j);
                write_volume(&x0_dir.join(&name), &v, &format!("{desc}, image prediction"))?;
                rows.push(v);
            }
            let refs: Vec<&Volume> = rows.iter().collect();
            write_preview(&previews.join(format!("sample-{i:05}.png")), &refs, lo, hi)?;
            manifest.volumes.retain(|r| r.index != i);
            manifest.volumes.push(VolumeRecord {
                index: i,
                file: format!("xs/{name}"),
                x0_file: opts.write_x0.then(|| format!("x0/{name}")),
                seed: opts.seed,
                seconds,
            });
        }
        done = (0..opts.num).filter(|&i| xs.join(file_name(i)).is_file()).count();
        manifest.volumes.sort_by_key(|r| r.index);
        let json = serde_json::to_string_pretty(&manifest).expect("serialises");
        write_atomic(&manifest_path, json.as_bytes())?;
        progress(done, opts.num, 0, 0);
    }
    Ok(manifest)
}
