//! Timing of the hot paths — a training step of each stage, the no-grad forward (one
//! sampling step's network call) and a full predictor–corrector step — shared by
//! `prdit bench`, `prdit warmup` and `benches/`. Every timed iteration ends with a device
//! sync; the official PyTorch numbers measured on an H100 are embedded for the ratios.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use serde::Serialize;

use crate::config::{RunConfig, TrainSection};
use crate::diffusion::sampler::step;
use crate::diffusion::{Denoiser, NoiseSource, Sampler};
use crate::error::{Error, Result};
use crate::model::highres::{PrditSr, SrConfig};
use crate::model::network::Network;
use crate::model::{Prdit, PrditConfig};
use crate::sample::VolumeNoise;
use crate::train::step::{StepOutcome, Trainer};

/// `../shared/bench/pytorch_official_h100.json`: the authors' code on one H100.
pub const OFFICIAL_H100: &str = include_str!("../benches/reference/pytorch_official_h100.json");

/// Which cases `prdit bench` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum What {
    /// A training step of each stage.
    Train,
    /// A training step of stage 1 alone (the model's depth-0 sibling).
    TrainLocal,
    /// A training step of stage 2 alone (stage 1 frozen).
    TrainGlobal,
    /// A training step of the refinement (phase 3a: the model, frozen, at half the size as its
    /// base; the `[highres]` defaults), to `--size`.
    TrainHighres,
    /// The no-grad forward and a predictor–corrector step.
    Sample,
    /// Training steps of stages 1 and 2, the forward and a predictor–corrector step.
    #[default]
    All,
}

impl What {
    /// Whether the training cases run.
    pub fn train(self) -> bool {
        matches!(self, What::Train | What::All)
    }

    /// Whether the sampling cases run.
    pub fn sample(self) -> bool {
        matches!(self, What::Sample | What::All)
    }
}

/// How many iterations to run.
#[derive(Debug, Clone, Copy)]
pub struct Iterations {
    pub warmup: usize,
    pub timed: usize,
}

/// One benchmark case's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Named like the official file's keys (`train PRDiT-B/12/4 128^3 b16`, `fwd …`).
    pub case: String,
    pub device: String,
    /// The first iteration (kernel compilation and autotuning included).
    pub ms_first: f64,
    /// Seconds from `since` (process start for the CLI) to the end of the first iteration —
    /// kept only for the first case of a process ([`run_cases`]): a fresh process's cold start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_start_s: Option<f64>,
    /// Median of the timed iterations.
    pub ms_median: f64,
    pub ms_min: f64,
    pub volumes_per_s: f64,
    /// Most device memory the allocator held (backends that report it).
    pub peak_reserved_gib: Option<f64>,
    /// The kernels of the first iteration and of the last one (CubeCL devices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernels_first: Option<Kernels>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernels_last: Option<Kernels>,
    /// The official time for the same case, when the reference has it.
    pub official_ms: Option<f64>,
    pub official_peak_gib: Option<f64>,
    /// ms_median / official_ms.
    pub ratio: Option<f64>,
}

/// What one iteration launched on a CubeCL device (CUDA, wgpu): the numbers that set a cold
/// start and the launch overhead of a step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Kernels {
    /// Kernel launches, autotune's trial launches included.
    pub launches: usize,
    /// Distinct kernels launched.
    pub distinct: usize,
    /// Of those, launched for the first time in this process: each was compiled (or loaded
    /// from the kernel cache) during this iteration.
    pub new: usize,
    /// Autotune decisions taken, each after timing its candidates (where recorded: `prdit
    /// bench` and `prdit warmup` record them; a decision found in the kernel cache is none).
    pub autotuned: Option<usize>,
    /// Launches per kernel (short type name, so variants of one kernel add up), most first.
    pub by_kernel: Vec<(String, usize)>,
    /// The launches of each phase of a training step, in order, where the iteration marked its
    /// phases ([`phase`]; `prdit bench --phases`); the last is what followed the last mark.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseLaunches>,
}

/// The launches of one marked phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PhaseLaunches {
    pub phase: String,
    pub launches: usize,
    /// Launches per kernel in this phase, most first.
    pub by_kernel: Vec<(String, usize)>,
}

impl Kernels {
    /// The `n` most launched kernels, `Name ×count, …`.
    pub fn top(&self, n: usize) -> String {
        top(&self.by_kernel, n)
    }
}

/// The `n` most launched of `by_kernel` (most first), `Name ×count, …`.
fn top(by_kernel: &[(String, usize)], n: usize) -> String {
    let parts: Vec<String> = by_kernel.iter().take(n).map(|(k, c)| format!("{k} ×{c}")).collect();
    parts.join(", ")
}

impl std::fmt::Display for PhaseLaunches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} launches ({})", self.phase, self.launches, top(&self.by_kernel, 5))
    }
}

static PHASES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns phase marks on for the rest of the process (`prdit bench --phases`): each [`phase`]
/// then syncs the device, so the launches of a phase (fusion queues them until a sync) are
/// counted in it. The syncs cut fusion at the marks, so a marked step may launch a few more
/// kernels than an unmarked one.
pub fn mark_phases(on: bool) {
    PHASES.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Marks the end of phase `name` of the iteration being counted on `device`; a no-op unless
/// [`mark_phases`] turned marks on and kernels are being counted.
pub fn phase(name: &'static str, device: &Device) {
    if !PHASES.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    watch::mark(name, device);
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    let _ = (name, device);
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} launches, {} distinct kernels ({} new)", self.launches, self.distinct, self.new)?;
        match self.autotuned {
            Some(n) => write!(f, ", {n} autotune decisions"),
            None => Ok(()),
        }
    }
}

/// Counting kernels while an iteration runs.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod watch {
    use std::collections::{HashMap, HashSet};
    use std::hash::{DefaultHasher, Hash, Hasher};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use cubecl::launched::LaunchedKernels;
    use cubecl::logging::{LaunchObservation, LaunchObserver};

    use super::{Kernels, PhaseLaunches};

    #[derive(Default)]
    struct Count {
        total: AtomicUsize,
        by_kernel: Mutex<HashMap<&'static str, usize>>,
        /// (phase, launches per kernel counted when it ended).
        marks: Mutex<Vec<(&'static str, HashMap<&'static str, usize>)>>,
    }

    /// The count of the iteration being watched, for [`mark`].
    fn active() -> &'static Mutex<Option<Arc<Count>>> {
        static ACTIVE: OnceLock<Mutex<Option<Arc<Count>>>> = OnceLock::new();
        ACTIVE.get_or_init(Default::default)
    }

    /// Ends phase `name`: syncs `device` (flushing what fusion queued) and notes the count.
    pub fn mark(name: &'static str, device: &burn::tensor::Device) {
        let Some(count) = active().lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        // A failed sync shows again at the iteration's own sync, which reports it.
        let _ = device.sync();
        let so_far = count.by_kernel.lock().unwrap_or_else(|e| e.into_inner()).clone();
        count.marks.lock().unwrap_or_else(|e| e.into_inner()).push((name, so_far));
    }

    impl LaunchObserver for Count {
        fn launched(&self, kernel: &'static str) {
            self.total.fetch_add(1, Ordering::Relaxed);
            *self.by_kernel.lock().unwrap_or_else(|e| e.into_inner()).entry(kernel).or_default() += 1;
        }
    }

    /// Every kernel this process has launched (hashes of CubeCL's stable kernel hashes).
    fn seen() -> &'static Mutex<HashSet<u64>> {
        static SEEN: OnceLock<Mutex<HashSet<u64>>> = OnceLock::new();
        SEEN.get_or_init(Default::default)
    }

    /// Autotune decisions recorded so far.
    fn decisions() -> Option<usize> {
        let path = crate::device::autotune_log()?;
        Some(std::fs::read_to_string(path).map_or(0, |t| t.lines().count()))
    }

    /// Installed for one iteration; everything launched meanwhile, on any device, counts.
    pub struct Watch {
        count: Arc<Count>,
        _observation: LaunchObservation,
        kernels: LaunchedKernels,
        decisions: Option<usize>,
    }

    pub fn start() -> Watch {
        let count = Arc::new(Count::default());
        *active().lock().unwrap_or_else(|e| e.into_inner()) = Some(count.clone());
        Watch {
            _observation: LaunchObservation::new(count.clone()),
            count,
            kernels: LaunchedKernels::new(),
            decisions: decisions(),
        }
    }

    impl Watch {
        pub fn finish(self) -> Kernels {
            *active().lock().unwrap_or_else(|e| e.into_inner()) = None;
            let launched = self.kernels.finish();
            let mut seen = seen().lock().unwrap_or_else(|e| e.into_inner());
            let new = launched
                .iter()
                .filter(|k| {
                    let mut h = DefaultHasher::new();
                    k.hash(&mut h);
                    seen.insert(h.finish())
                })
                .count();
            let now = self.count.by_kernel.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut phases = Vec::new();
            let marks = std::mem::take(&mut *self.count.marks.lock().unwrap_or_else(|e| e.into_inner()));
            if !marks.is_empty() {
                let mut before = HashMap::new();
                for (name, at) in marks.into_iter().chain([("rest", now.clone())]) {
                    let delta = at.iter().map(|(k, c)| (*k, c - before.get(k).copied().unwrap_or(0)));
                    let by_kernel = short_names(delta);
                    phases.push(PhaseLaunches {
                        phase: name.to_string(),
                        launches: by_kernel.iter().map(|(_, c)| c).sum(),
                        by_kernel,
                    });
                    before = at;
                }
            }
            let total = self.count.total.load(Ordering::Relaxed);
            Kernels {
                launches: total,
                phases,
                distinct: launched.len(),
                new,
                autotuned: decisions().zip(self.decisions).map(|(now, before)| now - before),
                by_kernel: short_names(now.into_iter()),
            }
        }
    }

    /// Launch counts by CubeCL's short kernel name (variants of one kernel add up), most first,
    /// zeros left out.
    fn short_names(counts: impl Iterator<Item = (&'static str, usize)>) -> Vec<(String, usize)> {
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (k, c) in counts.filter(|(_, c)| *c > 0) {
            let name = cubecl::config::type_name_format(k, cubecl::config::TypeNameFormatLevel::Short);
            *by_name.entry(name).or_default() += c;
        }
        let mut v: Vec<(String, usize)> = by_name.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

/// `f()`, with the kernels it launched when `device` is a CubeCL device.
fn counting<R>(device: &Device, f: impl FnOnce() -> R) -> (R, Option<Kernels>) {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if crate::device::is_gpu(device) {
        let w = watch::start();
        let r = f();
        return (r, Some(w.finish()));
    }
    let _ = device;
    (f(), None)
}

/// (ms, peak GiB) of an official case.
pub fn official(case: &str) -> Option<(f64, f64)> {
    let v: serde_json::Value = serde_json::from_str(OFFICIAL_H100).ok()?;
    let c = v.get(case)?;
    let ms = c.get("ms_per_step").or_else(|| c.get("ms_per_forward"))?.as_f64()?;
    Some((ms, c.get("peak_gib")?.as_f64()?))
}

/// A timed case, or why it could not run.
pub type Timed = Result<CaseResult>;

/// Where and how a benchmark runs.
pub struct Bench {
    pub device: Device,
    /// How the device is named in the results (`cuda:0`, `cpu`).
    pub device_name: String,
    pub iterations: Iterations,
    /// The cold-start clock's origin (process start for the CLI).
    pub since: Instant,
}

/// `key` from the environment, parsed, else `default`.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl Bench {
    /// The `cargo bench` setup: device `PRDIT_BENCH_DEVICE` (cpu), `PRDIT_BENCH_ITERS` timed
    /// iterations (default `iters`) after `PRDIT_BENCH_WARMUP` (1), with the host allocator
    /// tuned as the command line tunes it.
    pub fn from_env(iters: usize) -> Self {
        crate::device::tune_host_allocator();
        let spec: crate::device::DeviceSpec = env_or("PRDIT_BENCH_DEVICE", crate::device::DeviceSpec::Cpu);
        let selected = crate::device::select(spec).unwrap_or_else(|e| panic!("{e}"));
        Bench {
            device: selected.device,
            device_name: selected.name,
            iterations: Iterations {
                warmup: env_or("PRDIT_BENCH_WARMUP", 1),
                timed: env_or("PRDIT_BENCH_ITERS", iters),
            },
            since: Instant::now(),
        }
    }

    /// Runs `f` once, `warmup` times untimed and `timed` times timed, syncing after each.
    pub fn time<R>(&self, case: String, volumes: usize, mut f: impl FnMut() -> R) -> Result<CaseResult> {
        self.try_time(case, volumes, || Ok(f()))
    }

    /// [`time`](Self::time) for work that can fail: the first error ends the case. A panic
    /// inside the backend (CubeCL panics on an allocation the device refuses) becomes an error
    /// naming the case too.
    pub fn try_time<R>(
        &self,
        case: String,
        volumes: usize,
        mut f: impl FnMut() -> Result<R>,
    ) -> Result<CaseResult> {
        // Pages the allocator still holds from earlier cases are returned first, so that the
        // peak reserved below is this case's (CubeCL's pool keeps what it reserved otherwise).
        self.device.memory_cleanup();
        let mut peak = 0u64;
        let mut once = || -> Result<(f64, Option<Kernels>)> {
            let t = Instant::now();
            let (r, kernels) = counting(&self.device, || -> Result<()> {
                let r = catch_backend_panic(&case, &mut f)?;
                self.device
                    .sync()
                    .map_err(|e| Error::failed(format!("{case}: the device sync"), format!("{e:?}")))?;
                drop(r);
                Ok(())
            });
            r?;
            if let Some(u) = self.device.memory_pool_usage() {
                peak = peak.max(u.bytes_reserved);
            }
            Ok((t.elapsed().as_secs_f64() * 1e3, kernels))
        };
        let (ms_first, kernels_first) = once()?;
        let cold_start_s = Some(self.since.elapsed().as_secs_f64());
        let mut kernels_last = None;
        for _ in 0..self.iterations.warmup {
            kernels_last = once()?.1;
        }
        let mut times = Vec::new();
        for _ in 0..self.iterations.timed {
            let (ms, k) = once()?;
            times.push(ms);
            kernels_last = k;
        }
        times.sort_by(f64::total_cmp);
        let (ms_median, ms_min) =
            if times.is_empty() { (ms_first, ms_first) } else { (times[times.len() / 2], times[0]) };
        let reference = official(&case);
        Ok(CaseResult {
            device: self.device_name.clone(),
            ms_first,
            cold_start_s,
            ms_median,
            ms_min,
            volumes_per_s: volumes as f64 / (ms_median / 1e3),
            peak_reserved_gib: (peak > 0).then(|| peak as f64 / (1u64 << 30) as f64),
            kernels_first,
            kernels_last,
            official_ms: reference.map(|r| r.0),
            official_peak_gib: reference.map(|r| r.1),
            ratio: reference.map(|r| ms_median / r.0),
            case,
        })
    }

    /// One training step (loss, backward, clipping, AdamW, EMA) of stage 1 (`cfg.depth == 0`)
    /// or stage 2 (stage 1 frozen), batch `batch` in micro-batches of `micro`.
    pub fn train(&self, cfg: &PrditConfig, batch: usize, micro: usize) -> Result<CaseResult> {
        let ad = self.device.clone().autodiff();
        let model = if cfg.depth == 0 {
            Prdit::init(cfg, 0, &ad)?
        } else {
            Prdit::init_with_gain(cfg, 0, 0.1, &ad)?.freeze_stage1()
        };
        self.train_network(model, batch, micro)
    }

    /// One training step of `model` (on this device's autodiff twin, its stage already set:
    /// what trains, what is frozen), batch `batch` in micro-batches of `micro`.
    pub fn train_network<N: Network>(&self, model: N, batch: usize, micro: usize) -> Result<CaseResult> {
        let ad = self.device.clone().autodiff();
        let (name, s) = (N::name(model.config()), N::volume_size(model.config()));
        // The official recipe's optimizer, clipping and EMA (the `[train]` defaults).
        let recipe = TrainSection { batch_size: batch, micro_batch: Some(micro), ..TrainSection::default() };
        let mut trainer = Trainer::start(model, &recipe);
        let shape = [batch, 1, s, s, s];
        let x0 = Tensor::<5>::random(shape, Distribution::Uniform(-1.0, 1.0), &ad);
        let process = N::process(trainer.model.config());
        let noise = Tensor::<5>::random(shape, Distribution::Normal(0.0, process.noise_std()), &ad);
        let scale = match process {
            crate::diffusion::Process::Ian => 1.0,
            crate::diffusion::Process::Flow => 1e-3,
        };
        let t: Vec<f32> = (0..batch).map(|i| ((137 + 311 * i) % 1000) as f32 * scale).collect();
        let case = format!("train {name} {s}^3 b{batch}");
        let what = case.clone();
        self.try_time(case, batch, || match trainer.step(x0.clone(), &t, noise.clone(), 1e-4)? {
            StepOutcome::Done { .. } => Ok(()),
            StepOutcome::Skipped { loss } => {
                Err(Error::failed(what.clone(), format!("the step was skipped (loss {loss})")))
            }
        })
    }

    /// One no-grad forward of the whole model (the network call of a sampling step).
    pub fn forward(&self, model: &impl Denoiser, name: &str, size: usize, batch: usize) -> Timed {
        let x =
            Tensor::<5>::random([batch, 1, size, size, size], Distribution::Normal(0.0, 0.5), &self.device);
        let t = vec![500.0f32; batch];
        self.time(format!("fwd {name} {size}^3 b{batch}"), batch, || model.predict(x.clone(), &t))
    }

    /// One predictor–corrector step (network call, update, per-volume host noise).
    pub fn sample_step(&self, model: &impl Denoiser, name: &str, size: usize, batch: usize) -> Timed {
        let mut noise = VolumeNoise::new(0, (0..batch as u64).collect());
        let x = noise.draw([batch, 1, size, size, size], &self.device)?;
        self.try_time(format!("pc-step {name} {size}^3 b{batch}"), batch, || {
            Ok(step(model, x.clone(), (999, 998), Sampler::default(), &mut noise)?.0)
        })
    }
}

/// `f()`, with a panic inside it (the backend's way of reporting some device failures, such as
/// an allocation the device refuses) turned into an error naming `case`.
fn catch_backend_panic<R>(case: &str, f: &mut impl FnMut() -> Result<R>) -> Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let reason = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the backend panicked".into());
        Err(Error::failed(case, reason))
    })
}

/// Seconds per volume for a 1000-step run from a sampling-step case.
pub fn seconds_per_volume_1000(c: &CaseResult) -> f64 {
    1000.0 / c.volumes_per_s
}

impl CaseResult {
    /// One aligned line of `prdit bench`'s table.
    pub fn line(&self) -> String {
        let opt =
            |x: Option<f64>, digits: usize| x.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"));
        format!(
            "{:<36} {:>10.1} {:>10.2} {:>8.2} {:>9} {:>12} {:>6}",
            self.case.replace("^3", "³"),
            self.ms_first,
            self.ms_median,
            self.volumes_per_s,
            opt(self.peak_reserved_gib, 2),
            opt(self.official_ms, 1),
            opt(self.ratio, 2)
        )
    }

    /// The column titles of [`line`](Self::line), and what `-` means.
    pub fn header() -> [String; 2] {
        [
            format!(
                "{:<36} {:>10} {:>10} {:>8} {:>9} {:>12} {:>6}",
                "case", "first ms", "warm ms", "vol/s", "peak GiB", "official ms", "ratio"
            ),
            "(first: the case's first iteration, compilation included; warm: median after warm-up; \
             official: the official code on an H100, ratio = warm / official; - : not reported by \
             this backend, or no official number for this case)"
                .into(),
        ]
    }
}

/// `prdit bench`: for the stage-2 network `stage2` (its depth-0 sibling is stage 1), a training
/// step of each stage at batch `batch` (default 16, the official per-GPU batch) and the
/// forward and a predictor–corrector step at `batch` (default 8); each case is handed to
/// `report` as soon as it is timed.
pub fn run_cases(
    bench: &Bench,
    stage2: &PrditConfig,
    what: What,
    batch: Option<usize>,
    report: &mut dyn FnMut(&CaseResult),
) -> crate::Result<Vec<CaseResult>> {
    if stage2.depth == 0 {
        return Err(crate::Error::invalid(
            "model",
            "name the stage-2 model (depth > 0); its depth-0 sibling is timed as stage 1",
        ));
    }
    let stage1 = PrditConfig { depth: 0, ..stage2.clone() };
    let mut results: Vec<CaseResult> = Vec::new();
    let mut keep = |mut r: CaseResult| {
        if !results.is_empty() {
            r.cold_start_s = None; // a later case's clock includes the earlier cases
        }
        report(&r);
        results.push(r);
    };
    let b = batch.unwrap_or(16);
    if what.train() || what == What::TrainLocal {
        keep(bench.train(&stage1, b, b)?);
    }
    if what.train() || what == What::TrainGlobal {
        keep(bench.train(stage2, b, b)?);
    }
    if what == What::TrainHighres {
        let base = PrditConfig { input_size: stage2.input_size / 2, ..stage2.clone() };
        let sr = SrConfig::with_defaults(base, stage2.input_size)?;
        let ad = bench.device.clone().autodiff();
        let model = PrditSr::on_base(&sr, Prdit::init(&sr.base, 0, &ad)?, 0, &ad)?.freeze_base();
        keep(bench.train_network(model, b, b)?);
    }
    if what.sample() {
        let b = batch.unwrap_or(8);
        let model = Prdit::init(stage2, 0, &bench.device)?;
        keep(bench.forward(&model, &stage2.name(), stage2.input_size, b)?);
        keep(bench.sample_step(&model, &stage2.name(), stage2.input_size, b)?);
    }
    Ok(results)
}

/// The JSON document of a benchmark run.
pub fn report_json(device: &str, cases: &[CaseResult]) -> serde_json::Value {
    serde_json::json!({"device": device, "prdit": env!("CARGO_PKG_VERSION"), "burn": "0.22.1", "cases": cases})
}

/// `prdit warmup`: one training step (at the run's micro-batch, else the one training would
/// choose on this device) and one
/// sampling step of the network the run trains — the stage-1 or stage-2 PRDiT, or for a
/// `[highres]` run the refinement on its base (phase 3a: base frozen; 3b: base fine-tuned) —
/// which compiles and tunes their kernels into the persistent cache.
pub fn warmup(bench: &Bench, cfg: &RunConfig) -> Result<[CaseResult; 2]> {
    let net = cfg.model_config()?;
    // The micro-batch training would choose on this device (`train::micro`).
    let micro = match cfg.train.micro_batch {
        Some(m) => m,
        None => {
            use crate::train::{Stage, Trainable};
            let stage = if net.depth == 0 { Stage::Local } else { Stage::Global };
            let sr = cfg.highres.as_ref().map(|_| cfg.highres_config()).transpose()?;
            let peak = |m| match &sr {
                None => Prdit::predicted_peak(cfg, &net, stage, m),
                Some(sr) => PrditSr::predicted_peak(cfg, sr, Stage::Highres, m),
            };
            let memory = crate::device::memory_to_plan(&bench.device)?;
            let memory = memory.as_ref().map(|(bytes, what)| (*bytes, what.as_str()));
            crate::train::micro::choose(cfg.train.batch_size, peak, memory).micro
        }
    };
    match &cfg.highres {
        None => {
            let step = bench.train(&net, micro, micro)?;
            let model = Prdit::init(&net, 0, &bench.device)?;
            let pc = bench.sample_step(&model, &net.name(), net.input_size, 1)?;
            Ok([step, pc])
        }
        Some(h) => {
            let sr = cfg.highres_config()?;
            let ad = bench.device.clone().autodiff();
            let trained = PrditSr::on_base(&sr, Prdit::init(&net, 0, &ad)?, 0, &ad)?;
            let trained = if h.finetune_base { trained.finetune_base() } else { trained.freeze_base() };
            let step = bench.train_network(trained, micro, micro)?;
            let model = PrditSr::on_base(&sr, Prdit::init(&net, 0, &bench.device)?, 0, &bench.device)?;
            let pc = bench.sample_step(&model, &sr.name(), sr.target_size, 1)?;
            Ok([step, pc])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_cases_are_found_by_our_case_names() {
        let cfg = PrditConfig::from_name("PRDiT-B/12/4", 128).unwrap();
        let train = format!("train {} {}^3 b{}", cfg.name(), 128, 16);
        let (ms, gib) = official(&train).unwrap();
        assert!((ms - 147.22).abs() < 0.01 && (gib - 19.14).abs() < 0.01);
        assert!((official("fwd PRDiT-B/12/4 128^3 b8").unwrap().0 - 25.24).abs() < 0.01);
        assert!(official("train PRDiT-B/12/4 32^3 b2").is_none());
    }

    fn cpu_bench(warmup: usize, timed: usize) -> Bench {
        Bench {
            device: Device::flex(),
            device_name: "cpu".into(),
            iterations: Iterations { warmup, timed },
            since: Instant::now(),
        }
    }

    #[test]
    fn timing_reports_the_median_and_the_ratio() {
        let bench = cpu_bench(1, 3);
        let mut n = 0u64;
        let r = bench
            .time("fwd PRDiT-B/12/4 128^3 b8".into(), 8, || {
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            })
            .unwrap();
        assert_eq!(n, 5, "first + warm-up + timed");
        assert!(r.ms_median >= 2.0 && r.ms_min <= r.ms_median);
        // The official forward took 25.24 ms; a 2 ms sleep is at least 2/25.25 of it.
        assert!((r.official_ms.unwrap() - 25.24).abs() < 0.01, "{:?}", r.official_ms);
        assert!(r.ratio.unwrap() >= 2.0 / 25.25, "{:?}", r.ratio);
    }

    #[test]
    fn failures_and_backend_panics_become_errors_naming_the_case() {
        let bench = cpu_bench(0, 1);
        let e = bench
            .try_time::<()>("case A".into(), 1, || Err(Error::failed("x", "out of memory")))
            .unwrap_err();
        assert!(e.to_string().contains("out of memory"), "{e}");
        let e =
            bench.try_time::<()>("case B".into(), 1, || panic!("allocation of 80 GiB refused")).unwrap_err();
        assert!(
            matches!(&e, Error::Failed { what, reason } if what == "case B" && reason.contains("80 GiB")),
            "{e}"
        );
        assert_eq!(e.exit_code(), 1);
    }
}
