//! The training loop of every stage (spec §10): AdamW, global-norm clipping, EMA, skipped
//! bad steps, logging, evaluation with previews, atomic checkpoints and exact resume.
//!
//! A run is put together in order: [`open_run`] (the run folder, what to resume from, the
//! resolved configuration), [`RunData::load`] (split, volumes, batch plan), [`setup`] (model,
//! EMA, optimizer and loop state, fresh or resumed), then [`Session::run`] (the loop).

pub mod data;
pub mod ema;
pub mod evaluate;
pub mod micro;
pub mod optim;
pub mod plot;
pub mod report;
pub mod run;
pub mod stage2;
pub mod step;
pub mod trainable;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::config::RunConfig;
use crate::data::Window;
use crate::data::loader::Loader;
use crate::data::preview::{Preview, shown, write_preview};
use crate::error::{Error, Result};
use crate::fsio::FolderLock;
use crate::model::Prdit;
use crate::model::highres::PrditSr;
use crate::weights::checkpoint::{load_expecting, save_model};
pub use data::{DataInfo, RunData, Split};
pub use evaluate::{VAL_T, evaluate};
use optim::{AdamW, AdamWConfig, trainable_keys};
use report::Reporter;
pub use run::{Checkpoint, RunDir, Stage, TrainState};
use step::{StepOutcome, Trainer};
pub use trainable::Trainable;

/// How to run a training job (besides its configuration).
#[derive(Clone)]
pub struct TrainOptions {
    pub stage: Stage,
    pub run_dir: PathBuf,
    pub resume: bool,
    /// The compute device (autodiff is added here); `[train] devices`, when it lists any,
    /// takes its place.
    pub device: Device,
    /// Stage 2: the stage-1 source (overrides `[global] local`).
    pub local: Option<PathBuf>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Set (by Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
}

/// The run folder of a run file when none is given: `runs/<file name without extension>`
/// (relative to the working directory).
pub fn default_run_dir(config: &Path) -> PathBuf {
    let name = config.file_stem().and_then(|s| s.to_str()).unwrap_or("run");
    PathBuf::from("runs").join(name)
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

/// The learning rate of optimizer step `step` (0-based): `train.lr`, after a linear warm-up
/// over `train.warmup_steps` when set.
pub fn lr_at(cfg: &RunConfig, step: u64) -> f64 {
    let t = &cfg.train;
    if t.warmup_steps == 0 { t.lr } else { t.lr * ((step + 1) as f64 / t.warmup_steps as f64).min(1.0) }
}

/// Whether `cfg` describes a run of `stage` (stage 1 has depth 0, stage 2 a transformer, the
/// refinement a `[highres]` section).
pub fn check_stage(stage: Stage, cfg: &RunConfig) -> Result<()> {
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
            "model.depth",
            format!(
                "train-local trains the stage-1 model (depth 0), this config has depth {d}: use train-global"
            ),
        )),
        (Stage::Global, _, _) => Err(Error::invalid(
            "model.depth",
            "train-global trains the transformer on top of stage 1, this config has depth 0: use train-local",
        )),
    }
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
    let net = N::from_run(&cfg)?;
    // `[train] devices` (resolved before anything is written): the first holds the model.
    let workers = worker_devices(&cfg.train.devices)?;
    let opts = &match workers.first() {
        Some(d) => TrainOptions { device: d.clone(), ..opts.clone() },
        None => opts.clone(),
    };
    // What the default micro-batch is planned for, read before anything is written.
    let memory =
        if cfg.train.micro_batch.is_none() { crate::device::memory_to_plan(&opts.device)? } else { None };
    let _lock = FolderLock::acquire(&opts.run_dir)?;
    let OpenRun { run, resume, cfg } = open_run(cfg, opts)?;
    let data = RunData::load(&cfg, &run, resume.is_some(), N::volume_size(&net))?;
    let (trainer, state) = setup::<N>(&cfg, &net, opts, resume)?;
    let mut trainer = if workers.len() > 1 {
        tracing::info!(
            "data parallel over {} devices ({}), {} volumes each",
            workers.len(),
            cfg.train.devices.join(", "),
            cfg.train.batch_size / workers.len()
        );
        trainer.with_replicas(workers.into_iter().map(|d| d.autodiff()).collect())
    } else {
        trainer
    };
    if cfg.train.micro_batch.is_none() {
        let share = cfg.train.batch_size / trainer.workers();
        let choice = micro::choose(
            share,
            |m| N::predicted_peak(&cfg, &net, opts.stage, m),
            memory.as_ref().map(|(bytes, what)| (*bytes, what.as_str())),
        );
        if choice.too_big {
            tracing::warn!("{}", choice.reason);
        } else {
            tracing::info!("{}", choice.reason);
        }
        trainer.micro_batch = choice.micro;
    }
    tracing::info!(
        "{} ({}) at {}³: {} parameters, {} trained; batch {}, {} steps",
        N::name(&net),
        N::process(&net).describe(),
        N::volume_size(&net),
        trainer.model.num_params(),
        N::trained(&cfg, &net, opts.stage),
        cfg.train.batch_size,
        cfg.train.total_steps
    );
    Session { cfg: &cfg, opts, run: &run, data: &data, trainer, state, last_ckpt: None }.run()
}

/// The worker devices of `[train] devices`, in order (the first holds the model: rank 0);
/// `all` is every CUDA GPU. None listed: none.
pub fn worker_devices(specs: &[String]) -> Result<Vec<Device>> {
    let specs: Vec<String> = match specs {
        [one] if one == "all" => {
            let n = crate::device::cuda_count();
            if n == 0 {
                return Err(Error::invalid(
                    "train.devices",
                    "`all` means every CUDA GPU, and none was found",
                ));
            }
            (0..n).map(|i| format!("cuda:{i}")).collect()
        }
        _ => specs.to_vec(),
    };
    specs.iter().map(|spec| Ok(crate::device::select(spec.parse()?)?.device)).collect()
}

/// A run folder opened for training.
pub struct OpenRun {
    pub run: RunDir,
    /// The checkpoint to resume from and its state.
    pub resume: Option<(Checkpoint, TrainState)>,
    /// The resolved configuration (as written to the run folder).
    pub cfg: RunConfig,
}

/// Opens the run folder (the caller holds its [`FolderLock`]): refuses one that holds a run unless resuming; when resuming, the
/// newest complete checkpoint (interrupted writes removed) and its state, checked against
/// the stage and configuration. Writes the resolved configuration; returns it.
pub fn open_run(mut cfg: RunConfig, opts: &TrainOptions) -> Result<OpenRun> {
    // Paths still relative (given on the command line) are relative to the working directory;
    // the run records them absolute.
    cfg.resolve_paths(Path::new("."));
    let run = RunDir::create(&opts.run_dir)?;
    for name in run.clean_partial()? {
        tracing::warn!("{}: removed {name}, left by an interrupted process", run.root.display());
    }
    let latest = run.latest()?;
    let resume = match (opts.resume, latest) {
        (false, Some(c)) => return Err(Error::RunExists { dir: run.root.clone(), step: c.step }),
        (false, None) => None,
        (true, latest) => match latest {
            Some(c) => {
                let state = c.read_state()?;
                if state.stage != opts.stage {
                    return Err(Error::invalid(
                        "resume",
                        format!("the run in {} is a {:?} run", run.root.display(), state.stage),
                    ));
                }
                let changed = state.config.incompatible_keys(&cfg.resolved()?);
                if !changed.is_empty() {
                    return Err(Error::invalid(
                        "resume",
                        format!("the configuration differs from the run's in: {}", changed.join(", ")),
                    ));
                }
                Some((c, state))
            }
            None => {
                tracing::warn!(
                    "{}: no complete checkpoint to resume from; starting at step 0",
                    run.root.display()
                );
                None
            }
        },
    };
    let cfg = cfg.resolved()?;
    crate::fsio::write_atomic(&run.config(), cfg.to_toml().as_bytes())?;
    Ok(OpenRun { run, resume, cfg })
}

/// The trainer and loop state at the start: from the checkpoint when resuming (model, EMA and
/// optimizer strictly, their step counts agreeing), else a fresh model for the stage.
pub fn setup<N: Trainable>(
    cfg: &RunConfig,
    net: &N::Config,
    opts: &TrainOptions,
    resume: Option<(Checkpoint, TrainState)>,
) -> Result<(Trainer<N>, TrainState)> {
    let base = opts.device.clone();
    let ad = base.clone().autodiff();
    let t = &cfg.train;
    let (trainer, mut state) = match resume {
        Some((c, state)) => {
            let model = load_expecting::<N>(&c.model(), net, &ad)?.for_stage(cfg, opts.stage);
            let ema = load_expecting::<N>(&c.ema(), net, &base)?;
            let optim = AdamW::load(AdamWConfig::from_train(t), &c.optim(), &trainable_keys(&model), &base)?;
            if optim.steps() != state.step {
                return Err(Error::weights(
                    c.optim(),
                    format!("holds {} steps, the run is at {}", optim.steps(), state.step),
                ));
            }
            tracing::info!("resuming {} at step {}", opts.run_dir.display(), state.step);
            (Trainer::new(model, ema, optim, t), state)
        }
        None => {
            let (model, what) = N::fresh(cfg, net, opts, &ad)?;
            let model = model.for_stage(cfg, opts.stage);
            tracing::info!("{what}");
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
            (Trainer::start(model, t), state)
        }
    };
    state.config = cfg.clone();
    Ok((trainer, state))
}

/// A run in progress: the loop and what it writes.
struct Session<'a, N: Trainable> {
    cfg: &'a RunConfig,
    opts: &'a TrainOptions,
    run: &'a RunDir,
    data: &'a RunData,
    trainer: Trainer<N>,
    state: TrainState,
    last_ckpt: Option<Checkpoint>,
}

impl<N: Trainable> Session<'_, N> {
    fn run(mut self) -> Result<Summary> {
        let t = &self.cfg.train;
        let size = self.data.train.size();
        let mut report =
            Reporter::open(&self.run.metrics(), self.state.step, self.opts.progress, t.total_steps)?;
        report.process = self.cfg.diffusion.process;
        let loader = Loader::spawn(
            self.data.train.clone(),
            self.data.plan.clone(),
            self.state.draws,
            u64::MAX >> 24,
            self.cfg.data.prefetch,
        );
        let ad = self.opts.device.clone().autodiff();
        let shape = [t.batch_size, 1, size, size, size];
        let mut consecutive_bad = 0u64;
        let mut last_loss = None;
        let mut interrupted = false;
        let clock = Instant::now();
        let elapsed_before = self.state.elapsed_s;

        while self.state.step < t.total_steps {
            if self.opts.stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            let batch = loader.next().expect("the loader produces batches until dropped");
            self.state.draws = batch.draw + 1;
            (self.state.epoch, self.state.batch_in_epoch) = self.data.plan.position(self.state.draws);
            let x0 = Tensor::<5>::from_data(TensorData::new(batch.x0, shape), &ad);
            let noise = Tensor::<5>::from_data(TensorData::new(batch.noise, shape), &ad);
            let lr = lr_at(self.cfg, self.state.step);
            // Fault injection counts batches drawn (a skipped step draws the next one).
            let drawn = self.state.draws;
            let (loss, image, noise_l, norm) = match self.trainer.step_at(x0, &batch.t, noise, lr, drawn)? {
                StepOutcome::Done { loss, image, noise, grad_norm } => (loss, image, noise, grad_norm),
                StepOutcome::Skipped { loss } => {
                    self.state.skipped += 1;
                    consecutive_bad += 1;
                    report.line(&format!(
                        "step {}: loss {loss} is {}; step skipped ({} skipped so far)",
                        self.state.step + 1,
                        if loss.is_finite() { "above 1e5" } else { "not finite" },
                        self.state.skipped
                    ))?;
                    report.skipped(self.state.step, loss, self.state.skipped)?;
                    if consecutive_bad >= t.max_bad_steps {
                        return Err(Error::Diverged {
                            step: self.state.step,
                            bad_steps: consecutive_bad,
                            checkpoint: self.last_ckpt.as_ref().map(|c| c.dir.clone()),
                        });
                    }
                    continue;
                }
            };
            consecutive_bad = 0;
            self.state.step += 1;
            last_loss = Some(loss);
            report.accumulate(loss, image, noise_l);
            self.state.elapsed_s = elapsed_before + clock.elapsed().as_secs_f64();
            let step = self.state.step;
            let last = step == t.total_steps;

            if step.is_multiple_of(t.log_every) || last {
                let norm = norm.map(|n| n.into_scalar::<f32>() as f64);
                let mem = self.opts.device.memory_pool_usage().map(|u| u.bytes_reserved);
                report.log(step, lr, norm, t.batch_size, mem, self.state.skipped)?;
            }
            if step.is_multiple_of(t.eval_every) || last {
                self.evaluate(&mut report)?;
            }
            run::fault("abort-after-step", step);
            let stop = self.opts.stop.load(Ordering::Relaxed);
            if step.is_multiple_of(t.ckpt_every) || last || stop {
                let c = self.save()?;
                report.line(&format!("checkpoint {}", c.dir.display()))?;
            }
            if stop {
                interrupted = true;
                break;
            }
        }
        drop(loader);
        if interrupted
            && self.last_ckpt.as_ref().map(|c| c.step) != Some(self.state.step)
            && self.state.step > 0
        {
            self.save()?;
        }
        report.finish(self.state.step);
        let checkpoint = match self.last_ckpt {
            Some(c) => Some(c.dir),
            None => self.run.latest()?.map(|c| c.dir),
        };
        Ok(Summary {
            run_dir: self.run.root.clone(),
            step: self.state.step,
            total_steps: t.total_steps,
            last_loss,
            best: self.state.best,
            skipped: self.state.skipped,
            interrupted,
            checkpoint,
        })
    }

    /// Validation with the EMA model, the best step so far, and a preview image.
    fn evaluate(&mut self, report: &mut Reporter) -> Result<()> {
        let Some(val) = &self.data.val else {
            return Ok(());
        };
        let step = self.state.step;
        let (mse, views) = evaluate(
            &self.trainer.ema,
            val,
            self.trainer.micro_batch,
            self.cfg.train.seed,
            &self.opts.device,
        )?;
        let better = self.state.best.is_none_or(|(_, b)| mse < b);
        if better {
            self.state.best = Some((step, mse));
        }
        let png = self.run.previews().join(format!("step-{step:09}.png"));
        let info = &self.data.info;
        let (window, window_label, views) = shown(&views, info.window_hu.map(Window::from), info.value_range);
        let run_name =
            self.run.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let at = evaluate::val_time(N::process(self.trainer.ema.config()));
        let preview = Preview {
            title: format!("{run_name} · step {step} · validation volume 1, EMA weights, {at}"),
            rows: vec![
                ("data".into(), &views[0]),
                (format!("noisy input ({at})"), &views[1]),
                ("reconstruction".into(), &views[2]),
            ],
            window,
            window_label,
            orientation: info.orientation,
        };
        write_preview(&png, &preview)?;
        report.eval(step, mse, better)
    }

    /// A checkpoint of the current step (then older ones pruned, never the best).
    fn save(&mut self) -> Result<Checkpoint> {
        let (trainer, state) = (&self.trainer, &self.state);
        let ckpt = self.run.write_checkpoint(state.step, |dir| {
            save_model(&trainer.model.valid(), &dir.join("model.bpk"))?;
            run::fault("abort-in-checkpoint", state.step);
            save_model(&trainer.ema, &dir.join("ema.bpk"))?;
            trainer.optim.save(&dir.join("optim.bpk"))?;
            let json = serde_json::to_string_pretty(state).expect("serialises");
            crate::fsio::write_atomic(&dir.join("state.json"), json.as_bytes())
        })?;
        self.run.prune(self.cfg.train.keep_last, state.best.map(|b| b.0))?;
        self.last_ckpt = Some(ckpt.clone());
        Ok(ckpt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str, name: &str) -> RunConfig {
        RunConfig::parse(&format!(
            "[model]\nname = \"{name}\"\ninput_size = 64\n[data]\ntrain = \"d\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn learning_rate_is_constant_or_warms_up_linearly() {
        let c = cfg("[train]\nlr = 1e-3\n", "PRDiT-B/12/0");
        assert_eq!([lr_at(&c, 0), lr_at(&c, 10_000)], [1e-3, 1e-3]);
        let c = cfg("[train]\nlr = 1e-3\nwarmup_steps = 4\n", "PRDiT-B/12/0");
        let lrs: Vec<f64> = (0..6).map(|s| lr_at(&c, s)).collect();
        assert_eq!(lrs, [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]);
    }

    #[test]
    fn each_command_takes_only_its_stage() {
        let local = cfg("", "PRDiT-B/12/0");
        let global = cfg("[global]\nlocal = \"runs/l\"\n", "PRDiT-B/12/2");
        let highres = cfg("[highres]\nbase = \"runs/g\"\ntarget_size = 128\n", "PRDiT-B/12/2");
        assert!(check_stage(Stage::Local, &local).is_ok());
        assert!(check_stage(Stage::Global, &global).is_ok());
        assert!(check_stage(Stage::Highres, &highres).is_ok());
        let e = check_stage(Stage::Global, &local).unwrap_err().to_string();
        assert!(e.contains("model.depth") && e.contains("train-local"), "{e}");
        let e = check_stage(Stage::Local, &global).unwrap_err().to_string();
        assert!(e.contains("depth 2") && e.contains("train-global"), "{e}");
        let e = check_stage(Stage::Highres, &global).unwrap_err().to_string();
        assert!(e.contains("[highres]"), "{e}");
        assert!(check_stage(Stage::Global, &highres).is_err());
    }
}
