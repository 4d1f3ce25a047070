//! `prdit demo`: the whole pipeline on built-in data — a phantom chest-CT dataset, a brief
//! stage-1 and stage-2 training of a tiny PRDiT (`configs/tiny-*.toml`, embedded) and two
//! sampled volumes. Re-running it continues what exists (runs resume, written volumes are kept).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::tensor::Device;

use crate::config::RunConfig;
use crate::data::phantom::{self, TissueMix};
use crate::diffusion::Process;
use crate::error::{Error, Result};
use crate::resolve::{Pick, Weights, resolve_model};
use crate::sample::{FieldKind, Intensity, Manifest, SampleJob, SamplerKind, sample_job, sha256_file};
use crate::train::{Stage, Summary, TrainOptions, train};
use crate::weights::Entry;

/// The demo's configurations, embedded so the binary needs no files.
const LOCAL: &str = include_str!("../configs/tiny-local.toml");
const GLOBAL: &str = include_str!("../configs/tiny-global.toml");

/// Phantom volumes the demo trains on.
pub const VOLUMES: usize = 24;
/// Volumes the demo samples, the sampler and its steps: UniPC at 20 steps on the image head's
/// flow ([`FIELD`]) draws the tiny model's anatomy cleanly with a tissue mix near the training
/// phantoms', where the official samplers take 1000 steps and leave noise texture
/// (`docs/samplers.md`).
pub const SAMPLES: usize = 2;
pub const SAMPLER: SamplerKind = SamplerKind::Unipc;
pub const SAMPLE_STEPS: usize = 20;
/// The image head's flow: on the demo's tiny model the official flow (both heads) leaves the
/// official samplers' noise texture in the air around the body (`docs/samplers.md`).
pub const FIELD: FieldKind = FieldKind::Image;

/// How to run the demo.
pub struct DemoOptions {
    /// Output folder (data, configurations, runs, samples).
    pub out: PathBuf,
    /// Training steps of each stage (default: the embedded configurations', 300 and 400).
    pub steps: Option<u64>,
    pub device: Device,
    /// Progress bars (on a terminal).
    pub progress: bool,
    /// Set by SIGINT/SIGTERM: the running stage stops with a checkpoint, the demo ends there.
    pub stop: Arc<AtomicBool>,
    /// The process the tiny model is trained for. Flow matching trains the same configurations
    /// with `[diffusion] process = "flow"` into `runs/local-flow`, `runs/global-flow` and samples
    /// with PRDiT-FM's Euler at [`FLOW_SAMPLE_STEPS`] steps into `samples-flow/`.
    pub process: Process,
}

/// Steps of the flow demo's Euler sampler.
pub const FLOW_SAMPLE_STEPS: usize = 30;

/// What the demo produced.
pub struct DemoOutcome {
    pub data: PathBuf,
    /// The stage-1 and (unless interrupted before) stage-2 runs.
    pub runs: Vec<Summary>,
    /// The sampled volumes' folder and manifest (absent when interrupted).
    pub samples: Option<(PathBuf, Manifest)>,
    /// The tissue mix of the training phantoms and of the samples (absent when interrupted).
    pub anatomy: Option<(TissueMix, TissueMix)>,
}

impl DemoOutcome {
    /// Whether a signal stopped it.
    pub fn interrupted(&self) -> bool {
        self.runs.iter().any(|r| r.interrupted)
    }
}

/// Runs the demo; `say` receives one line per stage.
pub fn run(opts: &DemoOptions, say: &mut dyn FnMut(&str)) -> Result<DemoOutcome> {
    if opts.steps == Some(0) {
        return Err(Error::invalid("steps", "each stage needs at least 1 training step"));
    }
    let data = crate::config::absolute(&opts.out.join("data"))?;
    let local = RunConfig::parse(LOCAL)?;
    let size = local.model.input_size;
    say(&format!("1/4 phantom dataset: {VOLUMES} chest phantoms of {size}³ in {}", data.display()));
    phantom::write_dataset(&data, VOLUMES, size, 0)?;
    let flow = opts.process == Process::Flow;
    let suffix = if flow { "-flow" } else { "" };
    let configure = |text: &str, name: &str| -> Result<RunConfig> {
        let mut cfg = RunConfig::parse(text)?;
        cfg.diffusion.process = opts.process;
        cfg.data.train = data.clone();
        if let Some(steps) = opts.steps {
            cfg.train.total_steps = steps;
        }
        crate::fsio::write_atomic(&opts.out.join(name), cfg.to_toml().as_bytes())?;
        Ok(cfg)
    };
    let local_cfg = configure(LOCAL, &format!("tiny-local{suffix}.toml"))?;
    let global_cfg = configure(GLOBAL, &format!("tiny-global{suffix}.toml"))?;
    let run1 = opts.out.join(format!("runs/local{suffix}"));
    let run2 = opts.out.join(format!("runs/global{suffix}"));
    let stage = |stage: Stage, run: &Path, local: Option<PathBuf>| TrainOptions {
        stage,
        run_dir: run.to_path_buf(),
        resume: run.join("checkpoints").is_dir(),
        device: opts.device.clone(),
        local,
        progress: opts.progress,
        stop: opts.stop.clone(),
    };
    let mut outcome = DemoOutcome { data: data.clone(), runs: Vec::new(), samples: None, anatomy: None };
    say(&format!(
        "2/4 stage 1 (local denoiser), {} steps of {} volumes → {}",
        local_cfg.train.total_steps,
        local_cfg.train.batch_size,
        run1.display()
    ));
    outcome.runs.push(train(local_cfg, &stage(Stage::Local, &run1, None))?);
    if outcome.interrupted() {
        return Ok(outcome);
    }
    say(&format!(
        "3/4 stage 2 (global residual DiT on the frozen stage 1), {} steps → {}",
        global_cfg.train.total_steps,
        run2.display()
    ));
    outcome.runs.push(train(global_cfg, &stage(Stage::Global, &run2, Some(run1.clone())))?);
    if outcome.interrupted() {
        return Ok(outcome);
    }
    let samples = opts.out.join(format!("samples{suffix}"));
    if let Some(note) = clear_stale_samples(&samples, &run2)? {
        say(&note);
    }
    let (sampler, steps) =
        if flow { (SamplerKind::Euler, FLOW_SAMPLE_STEPS) } else { (SAMPLER, SAMPLE_STEPS) };
    let how = if flow { "PRDiT-FM's flow matching" } else { "the image head's flow" };
    say(&format!(
        "4/4 sampling {SAMPLES} volumes ({} sampler, {steps} steps, {how}) → {}",
        sampler.name(),
        samples.display()
    ));
    let job = SampleJob {
        model: run2,
        weights: Weights::Ema,
        network: None,
        entry: Entry::Auto,
        intensity: Intensity::Model,
        out: samples.clone(),
        num: SAMPLES,
        batch: SAMPLES,
        steps: Some(steps),
        sampler: Some(sampler),
        process: Some(opts.process),
        grid: None,
        field: FIELD,
        k: None,
        seed: 0,
        write_x0: false,
        progress: opts.progress,
        data: Default::default(),
    };
    let manifest = sample_job(&job, &opts.device)?;
    outcome.anatomy = Some(anatomy(&data, &samples, &manifest)?);
    outcome.samples = Some((samples, manifest));
    Ok(outcome)
}

/// Removes the demo's `samples/` when they came from another checkpoint than the stage-2 run's
/// newest (an earlier, shorter demo), so that the demo re-runs in place; returns what it did.
/// Samples of the same checkpoint stay (a re-run keeps them).
fn clear_stale_samples(samples: &Path, run: &Path) -> Result<Option<String>> {
    if !samples.exists() {
        return Ok(None);
    }
    let model = resolve_model(run, Weights::Ema, Pick::Newest)?;
    let current = sha256_file(model.file())?;
    // An unreadable manifest counts as another checkpoint's: the folder is the demo's own.
    let recorded = Manifest::read(&samples.join("manifest.json")).ok().map(|m| m.source.sha256);
    if recorded.as_deref() == Some(current.as_str()) {
        return Ok(None);
    }
    std::fs::remove_dir_all(samples).map_err(|e| Error::io(samples, e))?;
    Ok(Some(format!(
        "   (removed {}: volumes of an earlier checkpoint; sampling the new one)",
        samples.display()
    )))
}

/// The newest preview image of a run (`previews/*.png`), if any.
pub fn latest_preview(run_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(run_dir.join("previews"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .max()
}

/// The mean tissue mix of the training phantoms (their HU copies) and of the samples (model
/// space through the phantom window).
fn anatomy(data: &Path, samples: &Path, manifest: &Manifest) -> Result<(TissueMix, TissueMix)> {
    let mut real = Vec::new();
    let hu = data.join("hu");
    for entry in std::fs::read_dir(&hu).map_err(|e| Error::io(&hu, e))? {
        let path = entry.map_err(|e| Error::io(data, e))?.path();
        if crate::data::nifti::is_nifti(&path) {
            real.push(TissueMix::of_hu(&crate::data::nifti::read_volume(&path)?));
        }
    }
    let mut fake = Vec::new();
    for r in &manifest.volumes {
        let mut v = crate::data::nifti::read_volume(&samples.join(&r.file))?;
        v.data.iter_mut().for_each(|x| *x = phantom::WINDOW.to_hu(*x));
        fake.push(TissueMix::of_hu(&v));
    }
    Ok((TissueMix::mean(&real), TissueMix::mean(&fake)))
}
