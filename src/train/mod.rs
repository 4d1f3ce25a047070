//! The training loop of both stages (spec §10): AdamW, global-norm clipping, EMA, skipped
//! bad steps, logging, evaluation with previews, atomic checkpoints and exact resume.

pub mod ema;
pub mod optim;
pub mod report;
pub mod run;
pub mod stage2;
pub mod step;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::data::dataset::{Dataset, list_volumes, split};
use crate::data::loader::{BatchPlan, Loader};
use crate::data::preview::write_preview;
use crate::data::volume::Volume;
use crate::diffusion::noise::{Purpose, normal_noise};
use crate::diffusion::{NOISE_STD, q_sample};
use crate::error::{Error, Result};
use crate::model::highres::{PrditSr, SrConfig};
use crate::model::network::Network;
use crate::model::{Prdit, PrditConfig};
use crate::weights::checkpoint::{load_expecting, save_model};
use optim::{AdamW, AdamWConfig, trainable_keys};
use report::Reporter;
pub use run::{Checkpoint, RunDir, Stage, TrainState};
use step::{StepOutcome, Trainer};

/// The diffusion time of the official validation (image-prediction MSE at t = 100).
pub const VAL_T: usize = 100;
/// How to run a training job (besides its configuration).
pub struct TrainOptions {
    pub stage: Stage,
    pub run_dir: PathBuf,
    pub resume: bool,
    /// The compute device (autodiff is added here).
    pub device: Device,
    /// Stage 2: the stage-1 source (overrides `[global] local`).
    pub local: Option<PathBuf>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Set (by Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
}

/// What a finished (or interrupted) run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub step: u64,
    pub total_steps: u64,
    pub last_loss: Option<f64>,
    pub best: Option<(u64, f64)>,
    pub skipped: u64,
    pub interrupted: bool,
    pub checkpoint: Option<PathBuf>,
}

/// What a run records about its data for sampling: the volume size, the voxel spacing of
/// its first training volume, and the HU window of the dataset (from the `dataset.json`
/// that `prdit prepare` and `prdit phantom` write next to the volumes), if known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub size: usize,
    pub spacing_mm: [f32; 3],
    pub window_hu: Option<[f32; 2]>,
    pub first_volume: PathBuf,
}

impl DataInfo {
    /// Reads it from the first training file and its folder's `dataset.json`.
    pub fn of(first: &Path, size: usize) -> Result<Self> {
        let vol = crate::data::nifti::read_volume(first)?;
        let manifest = first.parent().map(|d| d.join("dataset.json"));
        let window_hu = manifest
            .filter(|m| m.is_file())
            .and_then(|m| std::fs::read_to_string(m).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                let w = v.get("window_hu")?.as_array()?.clone();
                Some([w.first()?.as_f64()? as f32, w.get(1)?.as_f64()? as f32])
            });
        Ok(DataInfo { size, spacing_mm: vol.spacing, window_hu, first_volume: first.to_path_buf() })
    }

    /// Reads `data.json` of a run directory.
    pub fn load(run: &Path) -> Result<Self> {
        let path = run.join("data.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::data(&path, format!("unreadable: {e}")))
    }
}

/// The training and validation files of a run, fixed at its start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<PathBuf>,
    pub val: Vec<PathBuf>,
}

fn make_split(cfg: &RunConfig) -> Result<Split> {
    let files = list_volumes(&cfg.data.train)?;
    if let Some(v) = &cfg.data.val {
        return Ok(Split { train: files, val: list_volumes(v)? });
    }
    let (train, val) = split(files.len(), cfg.data.val_count, cfg.train.seed)?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| files[i].clone()).collect();
    Ok(Split { train: pick(&train), val: pick(&val) })
}

fn lr_at(cfg: &RunConfig, step: u64) -> f64 {
    let t = &cfg.train;
    if t.warmup_steps == 0 { t.lr } else { t.lr * ((step + 1) as f64 / t.warmup_steps as f64).min(1.0) }
}

fn check_stage(stage: Stage, cfg: &RunConfig) -> Result<()> {
    let depth = cfg.model_config()?.depth;
    match (stage, depth, cfg.highres.is_some()) {
        (Stage::Highres, _, true) => Ok(()),
        (Stage::Highres, _, false) => Err(Error::invalid(
            "highres",
            "train-highres needs a [highres] section (target_size, base = the lower-resolution run)",
        )),
        (_, _, true) => Err(Error::invalid("highres", "a [highres] section belongs to train-highres")),
        (Stage::Local, 0, _) | (Stage::Global, 1.., _) => Ok(()),
        (Stage::Local, d, _) => Err(Error::invalid(
            "model",
            format!(
                "train-local trains the stage-1 model (depth 0), this config has depth {d}: use train-global"
            ),
        )),
        (Stage::Global, _, _) => Err(Error::invalid(
            "model",
            "train-global trains the transformer on top of stage 1, this config has depth 0: use train-local",
        )),
    }
}

/// How each kind of network enters training.
pub trait Trainable: Network + Sized {
    /// The network a run configuration describes.
    fn from_run(cfg: &RunConfig) -> Result<Self::Config>;
    /// A fresh model for step 0 on `device` (autodiff), with a description of its origin.
    fn fresh(
        cfg: &RunConfig,
        net: &Self::Config,
        opts: &TrainOptions,
        device: &Device,
    ) -> Result<(Self, String)>;
    /// What trains in this stage (freezing the rest); applied to fresh and resumed models.
    fn for_stage(self, cfg: &RunConfig, stage: Stage) -> Self;
    /// Parameters trained in this stage.
    fn trained(cfg: &RunConfig, net: &Self::Config, stage: Stage) -> usize;
}

impl Trainable for Prdit {
    fn from_run(cfg: &RunConfig) -> Result<PrditConfig> {
        cfg.model_config()
    }

    fn fresh(
        cfg: &RunConfig,
        net: &PrditConfig,
        opts: &TrainOptions,
        device: &Device,
    ) -> Result<(Self, String)> {
        let seed = cfg.train.seed;
        if opts.stage == Stage::Local {
            return Ok((Prdit::init(net, seed, device)?, format!("initialised from seed {seed}")));
        }
        let source =
            opts.local.clone().or_else(|| cfg.global.as_ref().and_then(|g| g.local.clone())).ok_or_else(
                || {
                    Error::invalid(
                        "global.local",
                        "train-global needs the stage-1 weights: set it or pass --local",
                    )
                },
            )?;
        let gain = cfg.global.as_ref().map_or(0.1, |g| g.init_gain);
        let (sd, what) = stage2::stage1_weights(&source, net)?;
        let m = stage2::build_stage2(net, &sd, seed, gain, device)?;
        Ok((m, format!("stage 1 from {what} (raw weights, frozen); stage 2 initialised with gain {gain}")))
    }

    fn for_stage(self, _cfg: &RunConfig, stage: Stage) -> Self {
        if stage == Stage::Global { self.freeze_stage1() } else { self }
    }

    fn trained(_cfg: &RunConfig, net: &PrditConfig, stage: Stage) -> usize {
        let c = net.param_counts();
        if stage == Stage::Local { c.stage1 } else { c.stage2_trainable }
    }
}

impl Trainable for PrditSr {
    fn from_run(cfg: &RunConfig) -> Result<SrConfig> {
        cfg.highres_config()
    }

    fn fresh(
        cfg: &RunConfig,
        net: &SrConfig,
        _opts: &TrainOptions,
        device: &Device,
    ) -> Result<(Self, String)> {
        let h = cfg.highres.as_ref().expect("checked by from_run");
        if let Some(init) = &h.init {
            let file = run::model_file(init, true)?;
            let m = load_expecting::<PrditSr>(&file, net, device)?;
            return Ok((m, format!("the whole refinement model from {} (raw weights)", file.display())));
        }
        let source = h.base.as_ref().ok_or_else(|| {
            Error::invalid(
                "highres.base",
                "the lower-resolution model to refine (a stage-2 run or model file) is missing",
            )
        })?;
        let (base, what) = stage2::full_weights(source, &net.base, device)?;
        let m = PrditSr::on_base(net, base, cfg.train.seed, device)?;
        Ok((
            m,
            format!(
                "base {} from {what} (raw weights); refinement initialised from seed {}",
                net.base.name(),
                cfg.train.seed
            ),
        ))
    }

    fn for_stage(self, cfg: &RunConfig, _stage: Stage) -> Self {
        if cfg.highres.as_ref().is_some_and(|h| h.finetune_base) {
            self.finetune_base()
        } else {
            self.freeze_base()
        }
    }

    fn trained(cfg: &RunConfig, net: &SrConfig, _stage: Stage) -> usize {
        let finetune = cfg.highres.as_ref().is_some_and(|h| h.finetune_base);
        net.sr_params() + if finetune { net.base.param_counts().stage2_trainable } else { 0 }
    }
}

/// Validation: mean over `val` of the image-prediction MSE at t = 100 with fixed noise, and
/// the first volume's (x₀, x_t, x̂₀) for the preview.
fn evaluate<N: Network>(
    ema: &N,
    val: &Dataset,
    batch: usize,
    seed: u64,
    device: &Device,
) -> (f64, [Volume; 3]) {
    let s = val.size();
    let voxels = s * s * s;
    let mut total = 0.0;
    let mut preview = None;
    let indices: Vec<usize> = (0..val.len()).collect();
    for (n, chunk) in indices.chunks(batch).enumerate() {
        let b = chunk.len();
        let mut x0 = Vec::with_capacity(b * voxels);
        for &i in chunk {
            val.extend_f32(i, &mut x0);
        }
        let noise = normal_noise(seed, Purpose::ValNoise, n as u64, b * voxels, NOISE_STD);
        let x0 = Tensor::<5>::from_data(TensorData::new(x0, [b, 1, s, s, s]), device);
        let noise = Tensor::<5>::from_data(TensorData::new(noise, [b, 1, s, s, s]), device);
        let t = vec![VAL_T; b];
        let xt = q_sample(x0.clone(), &t, noise);
        let (_, x0_hat) = ema.predict(xt.clone(), &vec![VAL_T as f32; b]);
        let err: Vec<f32> = (x0_hat.clone() - x0.clone())
            .square()
            .mean_dims(&[1, 2, 3, 4])
            .into_data()
            .try_into_vec_as()
            .unwrap_or_default();
        total += err.iter().map(|&e| e as f64).sum::<f64>();
        if preview.is_none() {
            let first = |t: Tensor<5>| Volume {
                dims: [s; 3],
                spacing: [1.0; 3],
                data: t.narrow(0, 0, 1).into_data().try_into_vec_as().unwrap_or_default(),
            };
            preview = Some([first(x0), first(xt), first(x0_hat)]);
        }
    }
    (total / val.len().max(1) as f64, preview.expect("validation set is not empty"))
}

/// Runs (or resumes) a training job to `cfg.train.total_steps`.
pub fn train(cfg: RunConfig, opts: &TrainOptions) -> Result<Summary> {
    check_stage(opts.stage, &cfg)?;
    match opts.stage {
        Stage::Local | Stage::Global => train_network::<Prdit>(cfg, opts),
        Stage::Highres => train_network::<PrditSr>(cfg, opts),
    }
}

fn train_network<N: Trainable>(cfg: RunConfig, opts: &TrainOptions) -> Result<Summary> {
    // Configuration and run directory, before anything expensive can fail.
    let net = N::from_run(&cfg)?;
    let run = RunDir::create(&opts.run_dir)?;
    let resume_from = if opts.resume {
        for name in run.clean_partial()? {
            tracing::warn!("removed {name}: an interrupted checkpoint write");
        }
        let latest = run.latest()?;
        if latest.is_none() {
            tracing::warn!(
                "{}: no complete checkpoint to resume from; starting at step 0",
                run.root.display()
            );
        }
        latest
    } else {
        if let Some(c) = run.latest()? {
            return Err(Error::invalid(
                "--out",
                format!(
                    "{} already holds a run (checkpoint at step {}): pass --resume to continue it, or choose another --out",
                    run.root.display(),
                    c.step
                ),
            ));
        }
        None
    };
    let resumed_state = match &resume_from {
        Some(c) => {
            let state = c.read_state()?;
            if state.stage != opts.stage {
                return Err(Error::invalid(
                    "--resume",
                    format!("the run in {} is a {:?} run", run.root.display(), state.stage),
                ));
            }
            let changed = state.config.incompatible_keys(&cfg.resolved()?);
            if !changed.is_empty() {
                return Err(Error::invalid(
                    "--resume",
                    format!("the configuration differs from the run's in: {}", changed.join(", ")),
                ));
            }
            Some(state)
        }
        None => None,
    };
    let cfg = cfg.resolved()?;
    run::write_atomic(&run.config(), cfg.to_toml().as_bytes())?;

    // Data.
    let split = match (&resumed_state, run.split().is_file()) {
        (Some(_), true) => {
            let text = std::fs::read_to_string(run.split()).map_err(|e| Error::io(run.split(), e))?;
            serde_json::from_str(&text).map_err(|e| Error::data(run.split(), format!("unreadable: {e}")))?
        }
        _ => {
            let s = make_split(&cfg)?;
            run::write_atomic(
                &run.split(),
                serde_json::to_string_pretty(&s).expect("serialises").as_bytes(),
            )?;
            s
        }
    };
    let size = N::volume_size(&net);
    let started = Instant::now();
    let train_ds = Arc::new(Dataset::load(&split.train, size, cfg.data.storage)?);
    let val_ds =
        if split.val.is_empty() { None } else { Some(Dataset::load(&split.val, size, cfg.data.storage)?) };
    tracing::info!(
        "data: {} training and {} validation volumes of {size}³ ({:.1} MiB in memory, loaded in {:.1} s)",
        train_ds.len(),
        val_ds.as_ref().map_or(0, |v| v.len()),
        (train_ds.bytes() + val_ds.as_ref().map_or(0, |v| v.bytes())) as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    if val_ds.is_none() {
        tracing::warn!("no validation volumes: evaluation and best-checkpoint tracking are off");
    }
    let info = DataInfo::of(&split.train[0], size)?;
    run::write_atomic(
        &run.root.join("data.json"),
        serde_json::to_string_pretty(&info).expect("serialises").as_bytes(),
    )?;
    let t = &cfg.train;
    let plan = BatchPlan::new((0..train_ds.len()).collect(), t.batch_size, t.seed)?;

    // Model, EMA copy, optimizer.
    let base = opts.device.clone();
    let ad = base.clone().autodiff();
    let adam = AdamWConfig { beta1: t.betas[0], beta2: t.betas[1], eps: t.eps, weight_decay: t.weight_decay };
    let (model, ema, optim, mut state) = match (&resume_from, resumed_state) {
        (Some(c), Some(state)) => {
            let model = load_expecting::<N>(&c.model(), &net, &ad)?.for_stage(&cfg, opts.stage);
            let ema = load_expecting::<N>(&c.ema(), &net, &base)?;
            let optim = AdamW::load(adam, &c.optim(), &trainable_keys(&model), &base)?;
            if optim.steps() != state.step {
                return Err(Error::weights(
                    c.optim(),
                    format!("holds {} steps, the run is at {}", optim.steps(), state.step),
                ));
            }
            tracing::info!("resuming {} at step {}", run.root.display(), state.step);
            (model, ema, optim, state)
        }
        _ => {
            let (model, what) = N::fresh(&cfg, &net, opts, &ad)?;
            let model = model.for_stage(&cfg, opts.stage);
            tracing::info!("{what}");
            let ema = model.valid();
            let state = TrainState {
                format: run::STATE_FORMAT.into(),
                stage: opts.stage,
                step: 0,
                draws: 0,
                skipped: 0,
                epoch: 0,
                batch_in_epoch: 0,
                seed: t.seed,
                best: None,
                elapsed_s: 0.0,
                prdit_version: env!("CARGO_PKG_VERSION").into(),
                config: cfg.clone(),
            };
            (model, ema, AdamW::new(adam), state)
        }
    };
    state.config = cfg.clone();
    let mut trainer = Trainer {
        model,
        ema,
        optim,
        micro_batch: t.micro_batch.unwrap_or(t.batch_size),
        grad_clip: t.grad_clip,
        ema_decay: t.ema_decay,
    };
    tracing::info!(
        "{} at {size}³: {} parameters, {} trained; batch {}, {} steps",
        N::name(&net),
        trainer.model.num_params(),
        N::trained(&cfg, &net, opts.stage),
        t.batch_size,
        t.total_steps
    );

    let mut report = Reporter::open(&run.metrics(), state.step, opts.progress, t.total_steps)?;
    let loader =
        Loader::spawn(train_ds.clone(), plan.clone(), state.draws, u64::MAX >> 24, cfg.data.prefetch);
    let shape = [t.batch_size, 1, size, size, size];
    let mut consecutive_bad = 0u64;
    let mut last_loss = None;
    let mut last_ckpt = None;
    let mut interrupted = false;
    let clock = Instant::now();
    let elapsed_before = state.elapsed_s;

    let save = |model: &N, ema: &N, optim: &AdamW, state: &TrainState| -> Result<Checkpoint> {
        let ckpt = run.write_checkpoint(state.step, |dir| {
            save_model(&model.valid(), &dir.join("model.bpk"))?;
            run::fault("abort-in-checkpoint", state.step);
            save_model(ema, &dir.join("ema.bpk"))?;
            optim.save(&dir.join("optim.bpk"))?;
            let json = serde_json::to_string_pretty(state).expect("serialises");
            run::write_atomic(&dir.join("state.json"), json.as_bytes())
        })?;
        run.prune(t.keep_last, state.best.map(|b| b.0))?;
        Ok(ckpt)
    };

    while state.step < t.total_steps {
        if opts.stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let batch = loader.next().expect("the loader produces batches until dropped");
        state.draws = batch.draw + 1;
        (state.epoch, state.batch_in_epoch) = plan.position(state.draws);
        let x0 = Tensor::<5>::from_data(TensorData::new(batch.x0, shape), &ad);
        let noise = Tensor::<5>::from_data(TensorData::new(batch.noise, shape), &ad);
        let lr = lr_at(&cfg, state.step);
        let (loss, image, noise_l, norm) = match trainer.step(x0, &batch.t, noise, lr) {
            StepOutcome::Done { loss, image, noise, grad_norm } => (loss, image, noise, grad_norm),
            StepOutcome::Skipped { loss } => {
                state.skipped += 1;
                consecutive_bad += 1;
                report.line(&format!(
                    "step {}: loss {loss} is {}; step skipped ({} skipped so far)",
                    state.step + 1,
                    if loss.is_finite() { "above 1e5" } else { "not finite" },
                    state.skipped
                ));
                report.skipped(state.step, loss, state.skipped)?;
                if consecutive_bad >= t.max_bad_steps {
                    let ckpt = last_ckpt
                        .as_ref()
                        .map_or("none written in this process".to_string(), |c: &Checkpoint| {
                            c.dir.display().to_string()
                        });
                    return Err(Error::invalid(
                        "train",
                        format!(
                            "{consecutive_bad} consecutive steps with a non-finite or huge loss at step {}: the run \
                             diverged (last checkpoint: {ckpt}); lower train.lr or check the data",
                            state.step
                        ),
                    ));
                }
                continue;
            }
        };
        consecutive_bad = 0;
        state.step += 1;
        last_loss = Some(loss);
        report.accumulate(loss, image, noise_l);
        state.elapsed_s = elapsed_before + clock.elapsed().as_secs_f64();
        let step = state.step;
        let last = step == t.total_steps;

        if step.is_multiple_of(t.log_every) || last {
            let norm = norm.map(|n| n.into_scalar::<f32>() as f64);
            let mem = base.memory_pool_usage().map(|u| u.bytes_reserved);
            report.log(step, lr, norm, t.batch_size, mem, state.skipped)?;
        }
        if let (Some(val), true) = (&val_ds, step.is_multiple_of(t.eval_every) || last) {
            let (mse, views) = evaluate(&trainer.ema, val, trainer.micro_batch, t.seed, &base);
            let better = state.best.is_none_or(|(_, b)| mse < b);
            if better {
                state.best = Some((step, mse));
            }
            let png = run.previews().join(format!("step-{step:09}.png"));
            write_preview(&png, &[&views[0], &views[1], &views[2]], -1.0, 1.0)?;
            report.eval(step, mse, better)?;
        }
        run::fault("abort-after-step", step);
        let stop = opts.stop.load(Ordering::Relaxed);
        if step.is_multiple_of(t.ckpt_every) || last || stop {
            let c = save(&trainer.model, &trainer.ema, &trainer.optim, &state)?;
            report.line(&format!("checkpoint {}", c.dir.display()));
            last_ckpt = Some(c);
        }
        if stop {
            interrupted = true;
            break;
        }
    }
    drop(loader);
    if interrupted && last_ckpt.as_ref().map(|c| c.step) != Some(state.step) && state.step > 0 {
        let c = save(&trainer.model, &trainer.ema, &trainer.optim, &state)?;
        last_ckpt = Some(c);
    }
    report.finish();
    Ok(Summary {
        run_dir: run.root.clone(),
        step: state.step,
        total_steps: t.total_steps,
        last_loss,
        best: state.best,
        skipped: state.skipped,
        interrupted,
        checkpoint: last_ckpt.map(|c| c.dir).or_else(|| run.latest().ok().flatten().map(|c| c.dir)),
    })
}

/// The checkpoint folder a run directory or path points to (a run directory gives its newest).
pub fn resolve_checkpoint(path: &Path) -> Result<Checkpoint> {
    if path.join("state.json").is_file() {
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        return Ok(Checkpoint { dir: path.to_path_buf(), step });
    }
    RunDir { root: path.to_path_buf() }.latest()?.ok_or_else(|| {
        Error::weights(path, "neither a checkpoint folder nor a run directory with checkpoints")
    })
}
