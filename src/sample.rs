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

use crate::data::nifti::{read_volume, write_volume_oriented};
use crate::data::preview::{Preview, shown, write_preview};
use crate::data::volume::{Orientation, ValueRange, Volume, Window};
use crate::device::to_host;
use crate::diffusion::fit;
use crate::diffusion::flow::{self, FlowSolver};
use crate::diffusion::noise::{Purpose, normal_noise};
use crate::diffusion::sampler::{Grid, integrate};
use crate::diffusion::{NOISE_STD, NoiseSource, Process, Sampler, sample};
use crate::error::{Error, Result};
use crate::fsio::{FolderLock, write_atomic};
use crate::model::highres::PrditSr;
use crate::model::network::Network;
use crate::model::{Prdit, PrditConfig};
use crate::resolve::{ModelRef, Pick, Weights, resolve_model};
use crate::train::DataInfo;
use crate::weights::{self, Entry, checkpoint};

/// Draws per volume are numbered 0 (initial state), 1, 2, … (corrector steps); at most this
/// many per volume.
const DRAWS_PER_VOLUME: u64 = 2048;

/// Per-volume noise streams: draw `d` of volume `i` comes from stream (seed, i·2048 + d), so a
/// volume's noise does not depend on the other volumes of its batch.
pub struct VolumeNoise {
    seed: u64,
    volumes: Vec<u64>,
    draws: u64,
    std: f64,
}

impl VolumeNoise {
    /// Noise of the diffusion (std 0.5) for the volumes with these global indices.
    pub fn new(seed: u64, volumes: Vec<u64>) -> Self {
        Self::with_std(seed, volumes, NOISE_STD)
    }

    /// The same streams scaled to standard deviation `std` (1 for a flow's initial state).
    pub fn with_std(seed: u64, volumes: Vec<u64>, std: f64) -> Self {
        VolumeNoise { seed, volumes, draws: 0, std }
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
                self.std,
            ));
        }
        self.draws += 1;
        Ok(Tensor::from_data(burn::tensor::TensorData::new(data, shape), device))
    }
}

/// The sampler of a job, as users name it (and manifests record it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// The "hot" predictor–corrector of the paper (jump `k`; official grid).
    #[default]
    #[serde(alias = "pc")]
    Hot,
    /// The official deterministic sampler: explicit Euler steps of the probability-flow ODE.
    Deterministic,
    /// DDIM: the exact rotation to the next angle with the predicted image and noise.
    Ddim,
    /// DPM-Solver++(2M): second-order multistep (the few-step choice: 20–50 steps).
    Dpm2m,
    /// DPM-Solver++(3M): third-order multistep.
    Dpm3m,
    /// UniPC: the DPM-Solver++(2M) predictor with the UniC corrector (third order, no extra
    /// network call).
    Unipc,
    /// Heun's second-order method on EDM's ODE (2 network calls per step but the last: 2N − 1);
    /// for a flow-matching model, PRDiT-FM's Heun on its uniform grid (2N calls).
    Heun,
    /// Flow matching only: PRDiT-FM's Euler on the uniform grid k/N (its default, 100 steps).
    Euler,
}

/// What a job runs: a sampler of the diffusion's time axis (the official ones, or an ODE
/// solver; a flow model runs these through [`crate::diffusion::flow::time_change`]), or one of
/// PRDiT-FM's solvers on the flow's own time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Diffusion(Sampler),
    Flow(FlowSolver),
}

impl Plan {
    /// Network calls per volume of `steps` steps.
    pub fn network_calls(self, steps: usize) -> Result<usize> {
        match self {
            Plan::Diffusion(s) => crate::diffusion::sampler::network_calls(s, steps),
            Plan::Flow(s) => {
                flow::check_steps(steps)?;
                Ok(flow::network_calls(s, steps))
            }
        }
    }
}

/// The time grid of the ODE solvers (the official samplers keep the official grid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GridKind {
    /// Uniform in t, as the official grid.
    Uniform,
    /// Uniform in log-SNR over EDM's noise range σ ∈ [0.002, 80] (the default of DDIM,
    /// DPM-Solver++ and UniPC).
    Logsnr,
    /// EDM's ρ = 7 spacing of the noise level over the same range (the default of Heun).
    Edm,
    /// Fitted to the model: a pilot batch (seeded, not among the volumes) is integrated once
    /// on 40 candidate times (2×steps above 20 steps; that many network calls per pilot
    /// volume, once per output folder), and the steps are the candidates with the least
    /// summed local error of the solver along it (ddim, dpm2m, dpm3m, unipc; at most 100
    /// steps; docs/samplers.md).
    Fitted,
}

/// Which ODE the few-step solvers integrate (the official samplers have their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// The official samplers' flow, driven by both heads: few steps give the official
    /// deterministic sampler's volumes.
    #[default]
    Official,
    /// The image head alone (its implied noise): another flow of the same model.
    Image,
}

impl FieldKind {
    /// The field of a manifest without a `field` entry: the image head.
    fn before_field() -> Self {
        FieldKind::Image
    }
}

impl SamplerKind {
    /// Whether this is one of the few-step ODE solvers of the diffusion's time axis (not an
    /// official sampler, nor PRDiT-FM's Euler).
    pub fn is_ode(self) -> bool {
        !matches!(self, SamplerKind::Hot | SamplerKind::Deterministic | SamplerKind::Euler)
    }

    /// The sampler a job takes when none is given: the paper's hot sampler for the diffusion,
    /// PRDiT-FM's Euler for flow matching.
    pub fn default_for(process: Process) -> Self {
        match process {
            Process::Ian => SamplerKind::Hot,
            Process::Flow => SamplerKind::Euler,
        }
    }

    /// What runs for a model of `process`. A flow model takes PRDiT-FM's `euler` and `heun`
    /// on its own grid, and the data-prediction solvers `ddim`, `dpm2m`, `dpm3m` and `unipc`
    /// (they need only the image prediction and the path's signal and noise scales, which the
    /// velocity gives exactly); the diffusion's official `hot` and `deterministic` samplers are
    /// refused for it, and `euler` for a diffusion model.
    pub fn plan(self, process: Process, k: usize, grid: Option<GridKind>, field: FieldKind) -> Result<Plan> {
        let uniform_only = |name: &str| {
            if grid.is_some_and(|g| g != GridKind::Uniform) {
                return Err(Error::invalid(
                    "grid",
                    format!("PRDiT-FM's {name} runs on the uniform grid k/N"),
                ));
            }
            Ok(())
        };
        match (process, self) {
            (Process::Flow, SamplerKind::Euler) => {
                uniform_only("euler")?;
                Ok(Plan::Flow(FlowSolver::Euler))
            }
            (Process::Flow, SamplerKind::Heun) => {
                uniform_only("heun")?;
                Ok(Plan::Flow(FlowSolver::Heun))
            }
            (Process::Flow, SamplerKind::Hot | SamplerKind::Deterministic) => Err(Error::invalid(
                "sampler",
                format!(
                    "{} is a sampler of the image-and-noise diffusion and this is a flow-matching model: \
                     use euler or heun (PRDiT-FM's), or ddim, dpm2m, dpm3m or unipc",
                    self.name()
                ),
            )),
            (Process::Ian, SamplerKind::Euler) => Err(Error::invalid(
                "sampler",
                "euler is flow matching's sampler (PRDiT-FM) and this is an image-and-noise diffusion model: \
                 its Euler sampler is `deterministic`",
            )),
            _ => self.sampler(k, grid, field).map(Plan::Diffusion),
        }
    }

    /// The name users type (`--sampler`), as the command line spells it.
    pub fn name(self) -> String {
        cli_name(&self)
    }

    /// `grid`, or this ODE solver's default when absent: edm for Heun, logsnr for the others.
    fn grid_or_default(self, grid: Option<GridKind>) -> GridKind {
        match grid {
            Some(g) => g,
            None if self == SamplerKind::Heun => GridKind::Edm,
            None => GridKind::Logsnr,
        }
    }

    /// The update rule with jump `k` (hot) on `grid` and `field` (ODE solvers; each has a
    /// default grid).
    fn sampler(self, k: usize, grid: Option<GridKind>, field: FieldKind) -> Result<Sampler> {
        use crate::diffusion::sampler::{Field, Grid, Solver};
        let solver = match self {
            SamplerKind::Hot | SamplerKind::Deterministic => {
                if grid.is_some_and(|g| g != GridKind::Uniform) {
                    return Err(Error::invalid(
                        "grid",
                        "the official samplers run on the official (uniform) grid",
                    ));
                }
                return Ok(if self == SamplerKind::Hot {
                    Sampler::PredictorCorrector { k }
                } else {
                    Sampler::Deterministic
                });
            }
            SamplerKind::Euler => unreachable!("plan() takes euler before"),
            SamplerKind::Ddim => Solver::Ddim,
            SamplerKind::Dpm2m => Solver::DpmPp2m,
            SamplerKind::Dpm3m => Solver::DpmPp3m,
            SamplerKind::Unipc => Solver::UniPc,
            SamplerKind::Heun => Solver::Heun,
        };
        let grid = match self.grid_or_default(grid) {
            GridKind::Uniform => Grid::Uniform,
            GridKind::Logsnr => Grid::LogSnr,
            GridKind::Edm => Grid::Edm,
            GridKind::Fitted if solver == Solver::Heun => {
                return Err(Error::invalid(
                    "grid",
                    "a fitted grid is for ddim, dpm2m, dpm3m and unipc, not heun",
                ));
            }
            GridKind::Fitted => Grid::Fitted,
        };
        let field = match field {
            FieldKind::Official => Field::Official,
            FieldKind::Image => Field::Image,
        };
        Ok(Sampler::Ode { solver, grid, field })
    }
}

/// The hot sampler's jump when none is given (the official default).
pub const DEFAULT_K: usize = 2;

/// What a sampling job writes and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleOptions {
    pub out: PathBuf,
    pub num: usize,
    pub batch: usize,
    pub steps: usize,
    pub sampler: SamplerKind,
    /// The ODE solvers' grid (absent: the solver's default; the official samplers use theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<GridKind>,
    /// The ODE solvers' flow (a manifest without it is read as the image head's).
    #[serde(default = "FieldKind::before_field")]
    pub field: FieldKind,
    /// Predictor–corrector jump.
    pub k: usize,
    pub seed: u64,
    /// The process of the model that made the volumes (a manifest without it: the diffusion).
    #[serde(default)]
    pub process: Process,
    /// Write Hounsfield units with this window instead of model space.
    pub hu: Option<Window>,
    /// Also write the last image prediction (`x0/`).
    pub write_x0: bool,
    /// Voxel spacing written into the headers (mm).
    pub spacing_mm: [f32; 3],
    /// The orientation written into the headers: the training data's.
    #[serde(default)]
    pub orientation: Orientation,
    /// The value range of the training data, which the model generates in (and `hu` maps from).
    #[serde(default)]
    pub value_range: ValueRange,
    /// The HU window of the training data, for previews in HU (unknown for official weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_window_hu: Option<Window>,
}

impl SampleOptions {
    /// Writes the preview of volume `i` (`rows`: the volume, and the last image prediction
    /// when written), in HU over the data's window when it is known.
    fn write_preview(&self, png: &Path, i: usize, network: &str, rows: &[Volume]) -> Result<()> {
        let title = format!(
            "{} · seed {}, stream {i} · {}, {} steps · {network}",
            file_name(i).trim_end_matches(".nii.gz"),
            self.seed,
            self.sampler_label(),
            self.steps
        );
        let (window, window_label, volumes) = match (self.hu, self.data_window_hu) {
            // Written in HU already: shown over the window they were written with.
            (Some(w), _) => {
                ([w.min_hu, w.max_hu], format!("window [{:.0}, {:.0}] HU", w.min_hu, w.max_hu), rows.to_vec())
            }
            (None, Some(w)) => {
                let (window, label, volumes) = shown(rows, Some(w), self.value_range);
                (window, format!("{label} (the training data's)"), volumes)
            }
            (None, None) => shown(rows, None, self.value_range),
        };
        let labels = ["generated volume", "last image prediction"];
        let rows = volumes.iter().zip(labels).map(|(v, l)| (l.to_string(), v)).collect();
        write_preview(png, &Preview { title, rows, window, window_label, orientation: self.orientation })
    }

    /// "unipc sampler (logsnr grid, official field)"; the official samplers by name alone; a
    /// flow model's with "flow matching".
    fn sampler_label(&self) -> String {
        let name = self.sampler.name();
        let flow = if self.process == Process::Flow { ", flow matching" } else { "" };
        if !self.sampler.is_ode() || self.process == Process::Flow && self.sampler == SamplerKind::Heun {
            return format!("{name} sampler{flow}");
        }
        if self.process == Process::Flow {
            let grid = cli_name(&self.sampler.grid_or_default(self.grid));
            return format!("{name} sampler ({grid} grid{flow})");
        }
        let grid = cli_name(&self.sampler.grid_or_default(self.grid));
        format!("{name} sampler ({grid} grid, {} field)", cli_name(&self.field))
    }

    fn plan(&self) -> Result<Plan> {
        self.sampler.plan(self.process, self.k, self.grid, self.field)
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
    /// Generation time per volume; `null` for a volume recorded after an interrupted job.
    pub seconds: Option<f64>,
}

/// `manifest.json` of an output folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub source: ModelSource,
    pub options: SampleOptions,
    pub network_calls_per_volume: usize,
    /// The times of a fitted grid (`--grid fitted`), fitted once and reused on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitted_times: Option<Vec<f64>>,
    pub volumes: Vec<VolumeRecord>,
}

/// Progress of a job: (volumes done, volumes total, step in the current batch, its steps).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, usize, usize);

/// How the command line spells a value of one of its enums.
fn cli_name(value: &impl clap::ValueEnum) -> String {
    value.to_possible_value().expect("no value is hidden").get_name().to_string()
}

impl Manifest {
    /// Reads a `manifest.json`; an unreadable one is an error naming it.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::data(path, format!("unreadable manifest: {e}")))
    }
}

/// Writes `manifest` to `path` atomically.
fn write_manifest(path: &Path, manifest: &Manifest) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(manifest).expect("serialises").as_bytes())
}

fn file_name(i: usize) -> String {
    format!("sample-{i:05}.nii.gz")
}

fn preview_name(i: usize) -> String {
    format!("sample-{i:05}.png")
}

/// The manifest entry of volume `i`; `seconds` is unknown for one recovered after a kill.
fn record(i: usize, opts: &SampleOptions, seconds: Option<f64>) -> VolumeRecord {
    let name = file_name(i);
    VolumeRecord {
        index: i,
        file: format!("xs/{name}"),
        x0_file: opts.write_x0.then(|| format!("x0/{name}")),
        seed: opts.seed,
        seconds,
    }
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
    // A flow model's image and noise come from one velocity: the field means nothing there.
    let process = N::process(model.config());
    let field = if process == Process::Flow { FieldKind::Official } else { opts.field };
    let opts = &SampleOptions { process, field, ..opts.clone() };
    let plan = opts.plan()?;
    if opts.num == 0 {
        return Err(Error::invalid("num", "the number of volumes must be at least 1"));
    }
    if opts.batch == 0 {
        return Err(Error::invalid("batch", "the volumes generated together must be at least 1"));
    }
    let calls = plan.network_calls(opts.steps)?;
    if let Plan::Diffusion(sampler) = plan {
        crate::diffusion::sampler::jump(sampler)?;
    }
    let size = N::volume_size(model.config());
    let xs = opts.out.join("xs");
    let x0_dir = opts.out.join("x0");
    let previews = opts.out.join("previews");
    let _lock = FolderLock::acquire(&opts.out)?;
    for d in [&xs, &previews].into_iter().chain(opts.write_x0.then_some(&x0_dir)) {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    // What a killed job left: scratch files of an interrupted write.
    for d in [&opts.out, &xs, &x0_dir, &previews] {
        for path in crate::fsio::remove_scratch(d)? {
            tracing::warn!("removed {}, left by an interrupted write", path.display());
        }
    }
    let manifest_path = opts.out.join("manifest.json");
    let mut manifest = Manifest {
        source,
        options: opts.clone(),
        network_calls_per_volume: calls,
        fitted_times: None,
        volumes: Vec::new(),
    };
    if manifest_path.is_file() {
        let old = Manifest::read(&manifest_path)?;
        let (o, n) = (&old.options, opts);
        let differ: Vec<&str> = [
            ("checkpoint", old.source.sha256 != manifest.source.sha256),
            ("process", o.process != n.process),
            ("step count", o.steps != n.steps),
            ("sampler", o.sampler != n.sampler),
            ("grid", o.grid != n.grid),
            ("field", o.field != n.field && n.sampler.is_ode()),
            ("k", o.k != n.k && n.sampler == SamplerKind::Hot),
            ("seed", o.seed != n.seed),
            ("intensity scale", o.hu != n.hu),
        ]
        .into_iter()
        .filter_map(|(what, differs)| differs.then_some(what))
        .collect();
        if !differ.is_empty() {
            let process = if o.process != n.process {
                format!(" ({} there, {} here)", o.process.describe(), n.process.describe())
            } else {
                String::new()
            };
            return Err(Error::data(
                &manifest_path,
                format!(
                    "this folder holds volumes of another {}{process}: choose another output folder",
                    differ.join(", ")
                ),
            ));
        }
        manifest.volumes = old.volumes;
        manifest.fitted_times = old.fitted_times;
    } else if std::fs::read_dir(&xs).map_err(|e| Error::io(&xs, e))?.next().is_some() {
        return Err(Error::data(
            &xs,
            "volumes without a manifest.json: this folder was not written by this job; choose another output folder",
        ));
    }
    let complete =
        |i: usize| xs.join(file_name(i)).is_file() && (!opts.write_x0 || x0_dir.join(file_name(i)).is_file());
    // The manifest is checked against the files: records of volumes that are gone are dropped,
    // volumes written just before a kill (before their manifest entry) are recorded.
    let window = opts.hu;
    let network = manifest.source.network.clone();
    let before = manifest.volumes.len();
    manifest.volumes.retain(|r| xs.join(file_name(r.index)).is_file());
    let mut changed = manifest.volumes.len() != before;
    if changed {
        tracing::warn!(
            "{}: {} record(s) of missing volumes dropped",
            manifest_path.display(),
            before - manifest.volumes.len()
        );
    }
    for i in (0..opts.num).filter(|&i| complete(i)) {
        if !manifest.volumes.iter().any(|r| r.index == i) {
            tracing::warn!("{}: recorded in the manifest after an interrupted job", file_name(i));
            manifest.volumes.push(record(i, opts, None));
            changed = true;
        }
        let png = previews.join(preview_name(i));
        if !png.is_file() {
            let vol = read_volume(&xs.join(file_name(i)))?;
            opts.write_preview(&png, i, &network, &[vol])?;
        }
    }
    manifest.volumes.sort_by_key(|r| r.index);
    if changed || !manifest_path.is_file() {
        write_manifest(&manifest_path, &manifest)?;
    }
    let to_volume = |t: Tensor<5>, i: usize, file: &Path| -> Result<Volume> {
        let data = to_host(t.narrow(0, i, 1), "a generated volume")?;
        if let Some(bad) = crate::weights::non_finite(&data) {
            return Err(Error::data(
                file,
                format!(
                    "not written: the generated volume {bad}; the weights or the sampling diverged \
                     (the model file passed the finiteness check, so look at the steps and the sampler)"
                ),
            ));
        }
        let data = match window {
            Some(w) => data.into_iter().map(|x| w.to_hu_from(x, opts.value_range)).collect(),
            None => data,
        };
        Ok(Volume { dims: [size; 3], spacing: opts.spacing_mm, data })
    };
    let mut done = (0..opts.num).filter(|&i| complete(i)).count();
    // A fitted grid: fitted before the first volume, recorded in the manifest, reused after.
    let fitted = match plan {
        Plan::Diffusion(Sampler::Ode { solver, grid: Grid::Fitted, field }) if done < opts.num => {
            if manifest.fitted_times.is_none() {
                let pilot = opts.batch.min(opts.num);
                tracing::info!(
                    "fitting the time grid of {} to the model: {} network calls on {pilot} pilot volume(s)",
                    opts.sampler.name(),
                    fit::candidates_for(opts.steps)
                );
                let per = size * size * size;
                let data: Vec<f32> = (0..pilot as u64)
                    .flat_map(|j| normal_noise(opts.seed, Purpose::Pilot, j, per, NOISE_STD))
                    .collect();
                let x = Tensor::from_data(
                    burn::tensor::TensorData::new(data, [pilot, 1, size, size, size]),
                    device,
                );
                // Not on the volumes' progress bar, whose steps are the grid's.
                let fit = fit::fit_times(model, x, solver, field, opts.steps, &mut |s, n| {
                    tracing::debug!("pilot: {s}/{n} network calls")
                })?;
                tracing::info!(
                    "fitted times {:?}: summed local error {:.4} (the logsnr grid's: {:.4})",
                    fit.times.iter().map(|t| (t * 10.0).round() / 10.0).collect::<Vec<_>>(),
                    fit.local_error,
                    fit.logsnr_local_error
                );
                manifest.fitted_times = Some(fit.times);
                write_manifest(&manifest_path, &manifest)?;
            }
            manifest.fitted_times.clone().map(|t| (solver, field, t))
        }
        _ => None,
    };
    for first in (0..opts.num).step_by(opts.batch) {
        let indices: Vec<usize> = (first..(first + opts.batch).min(opts.num)).collect();
        if indices.iter().all(|&i| complete(i)) {
            continue;
        }
        let started = Instant::now();
        let volumes = indices.iter().map(|&i| i as u64).collect();
        let mut on_step = |s, n| progress(done, opts.num, s, n);
        let out = match plan {
            // The flow's own solvers start from unit noise at t = 0.
            Plan::Flow(solver) => {
                let mut noise = VolumeNoise::with_std(opts.seed, volumes, flow::FLOW_NOISE_STD);
                let start = noise.draw([indices.len(), 1, size, size, size], device)?;
                // PRDiT-FM writes its final state as the image too (`x0/` = `xs/`).
                let x = flow::sample(model, start, opts.steps, solver, &mut on_step)?;
                crate::diffusion::SampleOutput { x: x.clone(), x0: x }
            }
            Plan::Diffusion(sampler) => {
                let mut noise = VolumeNoise::new(opts.seed, volumes);
                let start = noise.draw([indices.len(), 1, size, size, size], device)?;
                match &fitted {
                    Some((solver, field, t)) => integrate(model, start, t, *solver, *field, &mut on_step)?,
                    None => sample(model, start, opts.steps, sampler, &mut noise, &mut on_step)?,
                }
            }
        };
        let seconds = started.elapsed().as_secs_f64() / indices.len() as f64;
        for (j, &i) in indices.iter().enumerate() {
            let name = file_name(i);
            let desc = format!("prdit sample {i}: seed {} stream {i}, {} steps", opts.seed, opts.steps);
            let vol = to_volume(out.x.clone(), j, &xs.join(&name))?;
            write_volume_oriented(&xs.join(&name), &vol, &desc, opts.orientation)?;
            let mut rows = vec![vol];
            if opts.write_x0 {
                let v = to_volume(out.x0.clone(), j, &x0_dir.join(&name))?;
                write_volume_oriented(
                    &x0_dir.join(&name),
                    &v,
                    &format!("{desc}, image prediction"),
                    opts.orientation,
                )?;
                rows.push(v);
            }
            opts.write_preview(&previews.join(preview_name(i)), i, &network, &rows)?;
            crate::train::run::fault("abort-before-manifest", i as u64);
            manifest.volumes.retain(|r| r.index != i);
            manifest.volumes.push(record(i, opts, Some(seconds)));
        }
        done = (0..opts.num).filter(|&i| complete(i)).count();
        manifest.volumes.sort_by_key(|r| r.index);
        write_manifest(&manifest_path, &manifest)?;
        progress(done, opts.num, 0, 0);
    }
    Ok(manifest)
}

/// The process of the model a job samples from: what a prdit model file records (which must
/// be the job's, when it names one); for an official weights file the job's, or else what its
/// heads' shapes say (logged).
fn model_process(model: &ModelRef, job: &SampleJob) -> Result<Process> {
    let file = model.file();
    let (found, what) = match model {
        ModelRef::Official { .. } => {
            let sd = crate::weights::StateDict::open(file, job.entry)?;
            match weights::heads_process(&sd) {
                Some(p) => (p, "its output heads are for"),
                // Heads of neither shape: the strict load names them.
                None => return Ok(job.process.unwrap_or_default()),
            }
        }
        _ => match checkpoint::model_format(file)?.as_str() {
            f if f == <PrditSr as Network>::FORMAT => {
                (checkpoint::read_config::<PrditSr>(file)?.base.process(), "it holds a model of")
            }
            f if f == <Prdit as Network>::FORMAT => {
                (checkpoint::read_config::<Prdit>(file)?.process(), "it holds a model of")
            }
            other => {
                return Err(Error::weights(
                    file,
                    format!("`{other}` is not a model file prdit can sample from"),
                ));
            }
        },
    };
    match job.process {
        Some(p) if p != found => Err(Error::weights(
            file,
            format!("{what} {}, not {} (`--process {}`)", found.describe(), p.describe(), p.key()),
        )),
        Some(_) => Ok(found),
        None => {
            if matches!(model, ModelRef::Official { .. }) {
                tracing::info!("{}: {what} {}", file.display(), found.describe());
            }
            Ok(found)
        }
    }
}

/// Which intensities a job writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Intensity {
    /// Model space, [−1, 1].
    Model,
    /// Hounsfield units, through the window recorded for the run's training data.
    RunHu,
    /// Hounsfield units, through this window.
    Hu(Window),
}

/// A sampling job from a model reference — what `prdit sample` does.
#[derive(Debug, Clone)]
pub struct SampleJob {
    /// A run directory (its newest checkpoint), a checkpoint folder, a prdit model file or an
    /// official weights file (see [`crate::resolve`]).
    pub model: PathBuf,
    /// Which weights of a checkpoint (sampling normally uses the EMA).
    pub weights: Weights,
    /// The network of an official weights file, which holds no configuration (prdit model
    /// files embed theirs: this is not used for them).
    pub network: Option<PrditConfig>,
    /// The entry of an official full checkpoint.
    pub entry: Entry,
    pub intensity: Intensity,
    pub out: PathBuf,
    pub num: usize,
    pub batch: usize,
    /// Steps (absent: 1000 for the diffusion, as the official sampler; 100 for flow matching,
    /// as PRDiT-FM's).
    pub steps: Option<usize>,
    /// The sampler (absent: [`SamplerKind::default_for`] the model's process).
    pub sampler: Option<SamplerKind>,
    /// The process the model must be for: checked against a prdit model file, which records
    /// it; for an official weights file it is read from its heads' shapes when absent.
    pub process: Option<Process>,
    /// The ODE solvers' grid (absent: the solver's default).
    pub grid: Option<GridKind>,
    /// The ODE solvers' flow.
    pub field: FieldKind,
    /// Jump of the hot predictor–corrector sampler (default [`DEFAULT_K`]); the other samplers
    /// have none, and refuse one.
    pub k: Option<usize>,
    pub seed: u64,
    /// Also write the last image prediction (`x0/`).
    pub write_x0: bool,
    /// Show a progress bar (see [`crate::progress`]).
    pub progress: bool,
    /// The training data's orientation and value range, for a model whose run does not record
    /// them (an official weights file: by default LAS and [−1, 1], the official LIDC data's).
    pub data: DataOverride,
}

/// What a job assumes of the training data when the model's run does not say (see
/// [`SampleJob::data`]); given for a run that records it, it must agree.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DataOverride {
    pub orientation: Option<Orientation>,
    pub value_range: Option<ValueRange>,
}

/// Runs a job: resolves the model file, reads what its run records about the training data
/// (voxel spacing, HU window), loads the network the file holds and generates with [`run`].
pub fn sample_job(job: &SampleJob, device: &Device) -> Result<Manifest> {
    let no_jump = |other: SamplerKind| {
        Err(Error::invalid(
            "k",
            format!("the jump of the hot sampler; the {} sampler has none", other.name()),
        ))
    };
    if let (Some(_), Some(other)) = (job.k, job.sampler)
        && other != SamplerKind::Hot
    {
        return no_jump(other);
    }
    let model = resolve_model(&job.model, job.weights, Pick::Newest)?;
    let process = model_process(&model, job)?;
    let sampler = job.sampler.unwrap_or(SamplerKind::default_for(process));
    let steps = job.steps.unwrap_or(match process {
        Process::Ian => crate::diffusion::NUM_TIMESTEPS,
        Process::Flow => flow::DEFAULT_STEPS,
    });
    let k = match (job.k, sampler) {
        (None, _) => DEFAULT_K,
        (Some(k), SamplerKind::Hot) => k,
        (Some(_), other) => return no_jump(other),
    };
    if model.is_prdit() && job.network.is_some() {
        return Err(Error::invalid(
            "model",
            format!(
                "{} is a prdit model file, which records its network: the network (and its size) is given only for an official weights file",
                model.file().display()
            ),
        ));
    }
    model.check_entry(job.entry)?;
    // A run that records its data must have a readable record: a corrupt `data.json` is an
    // error naming it, never volumes written with default spacing, orientation and range.
    let info = model.run_dir().map(|r| DataInfo::load(&r)).transpose()?;
    let hu = match job.intensity {
        Intensity::Model => None,
        Intensity::Hu(w) => Some(w),
        Intensity::RunHu => match info.as_ref().and_then(|i| i.window_hu) {
            Some(w) => Some(Window::from(w)),
            None => {
                return Err(Error::invalid(
                    "window",
                    "the run does not record the HU window of its training data (no dataset.json next to \
                     the data)",
                ));
            }
        },
    };
    // The data's orientation and range: the run's record, else what the job says, else (an
    // official weights file, trained on official LIDC arrays) LAS and [−1, 1].
    let official = matches!(model, ModelRef::Official { .. });
    let recorded = info.as_ref().map(|i| (i.orientation, i.value_range));
    if let Some((o, r)) = recorded {
        for (given, has, what) in [
            (job.data.orientation.map(|x| x.code()), o.code(), "orientation"),
            (job.data.value_range.map(|x| x.describe()), r.describe(), "value range"),
        ] {
            if let Some(g) = given.filter(|g| *g != has) {
                return Err(Error::invalid(
                    what,
                    format!("the model's run records its training data's {what} as {has}, not {g}"),
                ));
            }
        }
    }
    let orientation = recorded.map(|r| r.0).or(job.data.orientation).unwrap_or(if official {
        Orientation::Las
    } else {
        Orientation::Lps
    });
    let value_range = recorded.map(|r| r.1).or(job.data.value_range).unwrap_or_default();
    let opts = SampleOptions {
        out: job.out.clone(),
        num: job.num,
        batch: job.batch,
        steps,
        sampler,
        grid: job.grid,
        field: job.field,
        k,
        seed: job.seed,
        process,
        hu,
        write_x0: job.write_x0,
        spacing_mm: info.as_ref().map_or([1.0; 3], |i| i.spacing_mm),
        orientation,
        value_range,
        data_window_hu: info.as_ref().and_then(|i| i.window_hu).map(Window::from),
    };
    let file = model.file();
    let sha256 = sha256_file(file)?;
    let calls = sampler.plan(process, k, job.grid, job.field)?.network_calls(steps)?;
    let bar = crate::progress::bar((job.num * calls) as u64, "steps", job.progress);
    let mut progress = |done: usize, total: usize, step: usize, _n: usize| {
        if let Some(b) = &bar {
            b.set_message(format!("volumes {done}/{total}"));
            b.set_position((done * calls + step * job.batch.min(total - done.min(total))) as u64);
        }
    };
    let source = |weights: String, network: String| ModelSource {
        file: file.to_path_buf(),
        sha256: sha256.clone(),
        weights,
        network,
    };
    let manifest = match &model {
        ModelRef::Official { .. } => {
            let cfg = job.network.as_ref().ok_or_else(|| {
                Error::invalid(
                    "network",
                    format!("{} is an official weights file, which does not say its network", file.display()),
                )
            })?;
            let cfg = &PrditConfig { out_channels: process.out_channels(), ..cfg.clone() };
            let m = weights::load_official(file, job.entry, cfg, device)?;
            let source = source(format!("official ({:?} entry)", job.entry), cfg.name());
            run(&m, source, &opts, device, &mut progress)?
        }
        _ => {
            let weights = job.weights.name().to_string();
            match checkpoint::model_format(file)?.as_str() {
                f if f == <Prdit as Network>::FORMAT => {
                    let m = checkpoint::load::<Prdit>(file, device)?;
                    run(&m, source(weights, m.config().name()), &opts, device, &mut progress)?
                }
                f if f == <PrditSr as Network>::FORMAT => {
                    let m = checkpoint::load::<PrditSr>(file, device)?;
                    run(&m, source(weights, m.config().name()), &opts, device, &mut progress)?
                }
                other => {
                    return Err(Error::weights(
                        file,
                        format!("`{other}` is not a model file prdit can sample from"),
                    ));
                }
            }
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    Ok(manifest)
}
