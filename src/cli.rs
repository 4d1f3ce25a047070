//! Command-line arguments and dispatch. Nothing past this file sees clap types.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use prdit::config::RunConfig;
use prdit::data::{Window, nifti, phantom};
use prdit::device::{self, DeviceSpec};
use prdit::inspect;
use prdit::model::highres::PrditSr;
use prdit::model::network::Network;
use prdit::train::{Stage, Summary, TrainOptions};
use prdit::weights::{self, Entry, FileKind};
use prdit::{Prdit as PrditNet, PrditConfig};

/// PRDiT: generate 3D CT volumes at voxel level with a pixel-level residual diffusion transformer.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// Compute device: auto (first CUDA GPU, else CPU), cpu, cuda, cuda:N or wgpu.
    #[arg(long, global = true, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Print warnings and errors only (PRDIT_LOG=debug for more).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Folder of the persistent GPU kernel and autotune cache (default $PRDIT_KERNEL_CACHE,
    /// else ~/.cache/prdit/cubecl).
    #[arg(long, global = true)]
    pub kernel_cache: Option<PathBuf>,
    /// Compile and autotune GPU kernels afresh, without reading or writing the cache.
    #[arg(long, global = true)]
    pub no_kernel_cache: bool,
    #[command(subcommand)]
    pub command: Command,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse().map_err(|e: prdit::Error| e.to_string())
}

#[derive(Subcommand)]
pub enum Command {
    /// Train stage 1, the local MLP denoiser on overlapping patches.
    TrainLocal(TrainArgs),
    /// Train stage 2, the global residual DiT on top of a frozen stage 1.
    TrainGlobal(TrainGlobalArgs),
    /// Train stage 3, the high-resolution refinement (e.g. 128³ → 256³) on a frozen base model.
    TrainHighres(TrainArgs),
    /// Generate volumes from a trained model (NIfTI, previews, manifest.json).
    Sample(SampleArgs),
    /// 3D-FID and MMD of generated volumes against real ones, on MedicalNet ResNet features.
    EvalFid(EvalFidArgs),
    /// Diversity of generated volumes: mean MS-SSIM over all pairs (lower = more diverse).
    EvalDiversity(EvalDiversityArgs),
    /// Clinical CT (DICOM series, NIfTI) → training volumes in model space, with dataset.json.
    Prepare(PrepareArgs),
    /// Write the built-in synthetic chest-CT dataset (NIfTI, model space and HU).
    Phantom(PhantomArgs),
    /// The first thing to run: a phantom dataset, a brief stage-1 and stage-2 training of a
    /// tiny model, and previews — a few minutes on a laptop CPU.
    Demo(DemoArgs),
    /// Time the hot paths (training steps, forward, sampler step): cold start, warm median,
    /// peak memory, and the ratio to the official PyTorch numbers on an H100.
    Bench(BenchArgs),
    /// Compile (and autotune) the GPU kernels of a run's shapes into the persistent cache.
    Warmup(WarmupArgs),
    /// Sizes of a model: parameters per stage, token grid, activation memory per volume;
    /// with --weights, also load a weights file strictly and report what it holds.
    Inspect(InspectArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    /// The run configuration (TOML). Optional with --resume (the run's own config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run directory (default: runs/<config name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the run directory's newest complete checkpoint.
    #[arg(long)]
    resume: bool,
    /// Override `train.total_steps`.
    #[arg(long)]
    steps: Option<u64>,
    /// Override `data.train` (a folder of NIfTI volumes or a list file).
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Args)]
pub struct TrainGlobalArgs {
    #[command(flatten)]
    common: TrainArgs,
    /// Stage-1 weights: a stage-1 run directory, a prdit model file or an official
    /// .pt/.pth (overrides `[global] local`).
    #[arg(long)]
    local: Option<PathBuf>,
}

#[derive(Args)]
pub struct SampleArgs {
    /// A run directory: its newest checkpoint's EMA weights (or raw with --raw).
    #[arg(long, conflicts_with = "checkpoint")]
    run: Option<PathBuf>,
    /// A checkpoint folder, a prdit model file, or an official .pt/.pth/safetensors (with --model).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Output folder (xs/, x0/, previews/, manifest.json).
    #[arg(long)]
    out: PathBuf,
    /// Number of volumes.
    #[arg(long, default_value_t = 4)]
    num: usize,
    /// Volumes generated together on the device.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Sampling steps (the official grid: one network call per step when it divides 1000).
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// `hot` (predictor–corrector, the paper's) or `deterministic`.
    #[arg(long, default_value = "hot")]
    sampler: String,
    /// Jump of the predictor–corrector sampler.
    #[arg(long, default_value_t = 2)]
    k: usize,
    /// Seed; volume i uses noise stream i of it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write Hounsfield units, using the window recorded for the training data (or --window).
    #[arg(long)]
    hu: bool,
    /// HU window MIN,MAX for --hu when the run does not record one.
    #[arg(long, value_parser = parse_window)]
    window: Option<Window>,
    /// Also write the last image prediction (x0/), as the official sample.py does.
    #[arg(long)]
    x0: bool,
    /// Use the raw (non-EMA) weights.
    #[arg(long)]
    raw: bool,
    /// The network of an official .pt/.pth (an official name with --size, or a TOML file).
    #[arg(long)]
    model: Option<String>,
    /// Volume edge for --model.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Entry of an official full checkpoint.
    #[arg(long, value_enum, default_value_t = Entry::Auto)]
    entry: Entry,
}

fn parse_window(s: &str) -> Result<Window, String> {
    let parts: Vec<f32> =
        s.split(',').map(|p| p.trim().parse::<f32>()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    match parts[..] {
        [lo, hi] if lo < hi => Ok(Window { min_hu: lo, max_hu: hi }),
        _ => Err("expected MIN,MAX with MIN < MAX, e.g. -1000,1000".into()),
    }
}

#[derive(Args)]
pub struct EvalFidArgs {
    /// Real volumes: a folder of NIfTI files or a list file.
    #[arg(long)]
    real: PathBuf,
    /// Generated volumes: a folder (e.g. the xs/ of `prdit sample`) or a list file.
    #[arg(long)]
    fake: PathBuf,
    /// MedicalNet weights (resnet_50.pth, resnet_50_23dataset.pth, …).
    #[arg(long, required_unless_present = "test_formula_weights")]
    weights: Option<PathBuf>,
    /// Protocol: lidc, rad-chestct (128³, [-1, 1], 1000 volumes) or none (as given).
    #[arg(long, default_value = "lidc")]
    preset: String,
    /// Evaluate the first N volumes of each set instead of the preset's count.
    #[arg(long)]
    num: Option<usize>,
    /// Write the report (JSON) here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Volumes per forward pass of the feature network.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Where real-set features are cached (default ~/.cache/prdit/features).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Do not read or write the feature cache.
    #[arg(long)]
    no_cache: bool,
    /// MMD estimator: biased (the official V-statistic) or unbiased.
    #[arg(long, value_enum, default_value_t = prdit::eval::stats::MmdEstimator::Biased)]
    mmd: prdit::eval::stats::MmdEstimator,
    /// TESTS ONLY: a ResNet of this depth with the fixture's formula weights instead of a
    /// weights file. The scores are meaningless.
    #[arg(long, hide = true)]
    test_formula_weights: Option<usize>,
}

#[derive(Args)]
pub struct EvalDiversityArgs {
    /// Generated volumes: a folder or a list file.
    #[arg(long)]
    volumes: PathBuf,
    /// The first N volumes (default: all).
    #[arg(long)]
    num: Option<usize>,
    /// Write the report (JSON) here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchArgs {
    /// The stage-2 model (its depth-0 sibling is the stage-1 case).
    #[arg(long, default_value = "PRDiT-B/12/4")]
    model: String,
    /// Volume edge.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Volumes per step (the official benchmark: 16 for training, 8 for sampling).
    #[arg(long)]
    batch: Option<usize>,
    /// train, sample or all.
    #[arg(long, default_value = "all")]
    what: String,
    /// Untimed iterations after the first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
pub struct WarmupArgs {
    /// The run configuration whose shapes to compile.
    #[arg(long)]
    config: PathBuf,
}

#[derive(Args)]
pub struct PrepareArgs {
    /// NIfTI files, DICOM series folders, or folders searched recursively for both.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Output folder (one .nii.gz per input volume and dataset.json).
    #[arg(long)]
    out: PathBuf,
    /// lidc (1 mm, 256 mm field of view, window to the 99.9th percentile), rad-chestct (no
    /// resampling, 256 voxels, clip ±1000, 99.5th percentile) or generic (the flags below).
    #[arg(long, value_enum, default_value_t = prdit::prepare::Recipe::Lidc)]
    recipe: prdit::prepare::Recipe,
    /// Edge of the written volumes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Fixed HU window MIN,MAX (instead of the recipe's).
    #[arg(long, value_parser = parse_window)]
    window: Option<Window>,
    /// Voxel spacing in mm to resample to (instead of the recipe's).
    #[arg(long)]
    spacing: Option<f32>,
    /// Field of view in voxels of that spacing (instead of the recipe's).
    #[arg(long)]
    fov: Option<usize>,
    /// Volumes prepared at once (memory grows with it).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Keep going when some inputs cannot be prepared (they are still listed).
    #[arg(long)]
    skip_bad: bool,
}

#[derive(Args)]
pub struct PhantomArgs {
    /// Output folder: model-space volumes at the top, HU volumes under hu/.
    #[arg(long)]
    out: PathBuf,
    /// Number of volumes.
    #[arg(long, default_value_t = 16)]
    num: usize,
    /// Volume edge.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seed of the first volume (volume i uses seed + i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Output folder.
    #[arg(long, default_value = "prdit-demo")]
    out: PathBuf,
    /// Training steps of each stage.
    #[arg(long, default_value_t = 200)]
    steps: u64,
}

#[derive(Args)]
pub struct InspectArgs {
    /// An official name (PRDiT-B/12/4) or a TOML/JSON file with the explicit model fields.
    /// Optional when --weights is a prdit checkpoint (it embeds its configuration).
    #[arg(long)]
    model: Option<String>,
    /// Volume edge S (volumes are S³).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// A weights file to load into the model: PyTorch .pt/.pth, safetensors or a prdit checkpoint.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Which weights of a full official checkpoint to use.
    #[arg(long, value_enum, default_value_t = Entry::Auto)]
    entry: Entry,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    let started = std::time::Instant::now();
    if let Some(dir) = device::configure_kernel_cache(cli.kernel_cache.clone(), !cli.no_kernel_cache) {
        tracing::debug!("kernel cache: {}", dir.display());
    }
    match cli.command {
        Command::TrainLocal(args) => train_cmd(cli.device, Stage::Local, args, None, cli.quiet).map(|_| ()),
        Command::TrainGlobal(args) => {
            train_cmd(cli.device, Stage::Global, args.common, args.local, cli.quiet).map(|_| ())
        }
        Command::TrainHighres(args) => {
            train_cmd(cli.device, Stage::Highres, args, None, cli.quiet).map(|_| ())
        }
        Command::Sample(args) => sample_cmd(cli.device, &args, cli.quiet),
        Command::EvalFid(args) => eval_fid_cmd(cli.device, &args, cli.quiet),
        Command::EvalDiversity(args) => eval_diversity_cmd(&args),
        Command::Bench(args) => bench_cmd(cli.device, &args, started),
        Command::Warmup(args) => warmup_cmd(cli.device, &args, started),
        Command::Prepare(args) => prepare_cmd(&args, cli.quiet),
        Command::Phantom(args) => phantom_cmd(&args),
        Command::Demo(args) => demo_cmd(cli.device, &args, cli.quiet),
        Command::Inspect(args) => inspect_cmd(cli.device, args),
    }
}

/// Ctrl-C: the first press stops training after the current step (with a checkpoint), the
/// second exits at once.
fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let _ = ctrlc::set_handler(move || {
            if f.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted again: exiting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to abort)");
        });
        flag
    })
    .clone()
}

fn device_for(spec: DeviceSpec) -> Result<burn::tensor::Device> {
    let selected = device::select(spec)?;
    if let Some(notice) = &selected.notice {
        eprintln!("note: {notice}");
    }
    tracing::info!("device: {}", selected.name);
    Ok(selected.device)
}

fn train_cmd(
    spec: DeviceSpec,
    stage: Stage,
    args: TrainArgs,
    local: Option<PathBuf>,
    quiet: bool,
) -> Result<Summary> {
    let (mut cfg, default_out) = match (&args.config, &args.out) {
        (Some(path), _) => {
            let cfg = RunConfig::load(path).with_context(|| format!("configuration {}", path.display()))?;
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("run").to_string();
            (cfg, PathBuf::from("runs").join(name))
        }
        (None, Some(out)) if args.resume => {
            let path = out.join("config.toml");
            (
                RunConfig::load(&path)
                    .with_context(|| format!("the run's configuration {}", path.display()))?,
                out.clone(),
            )
        }
        _ => bail!("--config is required (or --out RUN_DIR with --resume)"),
    };
    if let Some(steps) = args.steps {
        cfg.train.total_steps = steps;
    }
    if let Some(data) = args.data {
        cfg.data.train = data;
    }
    cfg.validate()?;
    let opts = TrainOptions {
        stage,
        run_dir: args.out.unwrap_or(default_out),
        resume: args.resume,
        device: device_for(spec)?,
        local,
        progress: !quiet && std::io::stderr().is_terminal(),
        stop: stop_flag(),
    };
    let summary = prdit::train::train(cfg, &opts)?;
    print_summary(&summary);
    Ok(summary)
}

fn print_summary(s: &Summary) {
    let state = if s.interrupted { "interrupted" } else { "finished" };
    println!("{state} at step {}/{} in {}", s.step, s.total_steps, s.run_dir.display());
    if let Some(l) = s.last_loss {
        println!("  last loss {l:.5}");
    }
    if let Some((step, v)) = s.best {
        println!("  best validation image MSE {v:.6} at step {step}");
    }
    if s.skipped > 0 {
        println!("  {} steps skipped for a non-finite or huge loss", s.skipped);
    }
    if let Some(c) = &s.checkpoint {
        println!("  checkpoint {}", c.display());
    }
    if s.interrupted {
        println!("  continue with: --out {} --resume", s.run_dir.display());
    }
}

fn sample_cmd(spec: DeviceSpec, args: &SampleArgs, quiet: bool) -> Result<()> {
    let weights = if args.raw { "model.bpk" } else { "ema.bpk" };
    // The weights file, and the run directory it belongs to (for spacing and the HU window).
    let (file, run_dir) = match (&args.run, &args.checkpoint) {
        (Some(run), _) => {
            let ckpt = prdit::train::resolve_checkpoint(run)?;
            (ckpt.dir.join(weights), Some(run.clone()))
        }
        (None, Some(c)) if c.is_dir() => {
            let ckpt = prdit::train::resolve_checkpoint(c)?;
            let run = ckpt.dir.parent().and_then(Path::parent).map(Path::to_path_buf);
            (ckpt.dir.join(weights), run)
        }
        (None, Some(c)) => {
            let run = c.parent().and_then(Path::parent).and_then(Path::parent).map(Path::to_path_buf);
            (c.clone(), run.filter(|r| r.join("data.json").is_file()))
        }
        (None, None) => bail!("give --run RUN_DIR or --checkpoint FILE"),
    };
    let info = run_dir.as_ref().and_then(|r| prdit::train::DataInfo::load(r).ok());
    let hu = match (args.hu, args.window, info.as_ref().and_then(|i| i.window_hu)) {
        (false, _, _) => None,
        (true, Some(w), _) => Some(w),
        (true, None, Some([lo, hi])) => Some(Window { min_hu: lo, max_hu: hi }),
        (true, None, None) => bail!(
            "--hu: the run does not record the HU window of its training data (no dataset.json next to the \
             data); give it with --window MIN,MAX"
        ),
    };
    let device = device_for(spec)?;
    let opts = prdit::sample::SampleOptions {
        out: args.out.clone(),
        num: args.num,
        batch: args.batch,
        steps: args.steps,
        sampler: args.sampler.clone(),
        k: args.k,
        seed: args.seed,
        hu,
        write_x0: args.x0,
        spacing_mm: info.as_ref().map_or([1.0; 3], |i| i.spacing_mm),
    };
    let sha256 = prdit::sample::sha256_file(&file).with_context(|| format!("hashing {}", file.display()))?;
    let weights_kind = if args.raw { "raw" } else { "ema" };
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar =
            indicatif::ProgressBar::new((args.num * prdit::diffusion::time_grid(args.steps)?.len()) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {msg} step {pos}/{len}  ETA {eta}")
                .expect("valid template"),
        );
        Ok::<_, prdit::Error>(bar)
    });
    let bar = bar.transpose()?;
    let calls = prdit::diffusion::time_grid(args.steps)?.len();
    let mut progress = |done: usize, total: usize, step: usize, _n: usize| {
        if let Some(b) = &bar {
            b.set_message(format!("volumes {done}/{total}"));
            b.set_position((done * calls + step * args.batch.min(total - done.min(total))) as u64);
        }
    };
    let started = std::time::Instant::now();
    let manifest = match weights::detect(&file)? {
        FileKind::Burnpack => match weights::checkpoint::model_format(&file)?.as_str() {
            f if f == <PrditNet as Network>::FORMAT => {
                let m = weights::checkpoint::load::<PrditNet>(&file, &device)?;
                let source = model_source(&file, sha256, weights_kind, m.config().name());
                prdit::sample::run(&m, source, &opts, &device, &mut progress)?
            }
            f if f == <PrditSr as Network>::FORMAT => {
                let m = weights::checkpoint::load::<PrditSr>(&file, &device)?;
                let source = model_source(&file, sha256, weights_kind, m.config().name());
                prdit::sample::run(&m, source, &opts, &device, &mut progress)?
            }
            other => bail!("{}: `{other}` is not a model file prdit can sample from", file.display()),
        },
        _ => {
            let model =
                args.model.as_deref().context("an official weights file needs --model (its network)")?;
            let cfg = model_config(model, args.size)?;
            let m = weights::load_official(&file, args.entry, &cfg, &device)?;
            let source =
                model_source(&file, sha256, &format!("official ({:?} entry)", args.entry), cfg.name());
            prdit::sample::run(&m, source, &opts, &device, &mut progress)?
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    println!(
        "{} volumes in {} ({} network calls each, {:.1} s this run); manifest {}",
        manifest.volumes.len(),
        args.out.join("xs").display(),
        manifest.network_calls_per_volume,
        started.elapsed().as_secs_f64(),
        args.out.join("manifest.json").display()
    );
    Ok(())
}

fn model_source(file: &Path, sha256: String, weights: &str, network: String) -> prdit::sample::ModelSource {
    prdit::sample::ModelSource { file: file.to_path_buf(), sha256, weights: weights.into(), network }
}

fn bar(quiet: bool, len: usize, what: &str) -> Option<indicatif::ProgressBar> {
    (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(len as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{bar:30}} {what} {{pos}}/{{len}}  ETA {{eta}}"
            ))
            .expect("valid template"),
        );
        bar
    })
}

fn eval_fid_cmd(spec: DeviceSpec, args: &EvalFidArgs, quiet: bool) -> Result<()> {
    use prdit::eval::{self, Protocol, resnet::ResNet3d, resnet::ResNetSpec, stats};
    let started = std::time::Instant::now();
    let mut protocol = Protocol::preset(&args.preset)?;
    if args.num.is_some() {
        protocol.num = args.num;
    }
    let device = device_for(spec)?;
    // The feature network, strictly from its file (or, for tests only, the formula).
    let (net, net_spec, weights_info) = match (&args.weights, args.test_formula_weights) {
        (_, Some(depth)) => {
            let spec = ResNetSpec { depth, shortcut: 'B' };
            eprintln!(
                "WARNING: --test-formula-weights: a ResNet-{depth} with test-formula weights; these scores mean nothing"
            );
            let info = serde_json::json!({"file": null, "sha256": format!("test-formula-resnet{depth}"), "known_as": "test formula (not a trained network)"});
            (ResNet3d::with_formula_weights(spec, &device)?, spec, info)
        }
        (Some(file), None) => {
            let sha =
                prdit::sample::sha256_file(file).with_context(|| format!("hashing {}", file.display()))?;
            let known = eval::KNOWN_WEIGHTS.iter().find(|(h, _)| *h == sha).map(|(_, n)| *n);
            eprintln!(
                "weights {} sha256 {sha}{}",
                file.display(),
                known
                    .map(|n| format!(" = {n}"))
                    .unwrap_or_else(|| " (not one of the two known MedicalNet ResNet-50 files)".into())
            );
            let sd = weights::StateDict::open(file, Entry::Auto)?;
            let spec = ResNetSpec::detect(&sd)?;
            let info = serde_json::json!({"file": file, "sha256": sha, "known_as": known});
            (ResNet3d::from_state_dict(spec, &sd, &device)?, spec, info)
        }
        (None, None) => bail!("--weights is required"),
    };
    let sha = weights_info["sha256"].as_str().unwrap_or_default().to_string();
    // Real features: from the cache when this weights file, protocol and file list were seen.
    let mut listed = prdit::data::dataset::list_volumes(&args.real)?;
    if let Some(n) = protocol.num {
        listed.truncate(n);
    }
    let key = eval::cache_key(&sha, &protocol, &listed);
    let cache_dir = args.cache.clone().unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache/prdit/features")
    });
    let cache_file = cache_dir.join(format!("{key}.safetensors"));
    let cached = if args.no_cache { None } else { eval::read_cache(&cache_file)? };
    let cache_hit = cached.is_some();
    let (real_files, real_first, real) = match cached {
        Some(f) => {
            // Only the first real volume is read: for the range check against the fakes.
            let (files, vols) =
                eval::prepare_set(&args.real, &Protocol { num: Some(1), ..protocol.clone() }, false)?;
            (files, vols, f)
        }
        None => {
            let (files, vols) = eval::prepare_set(&args.real, &protocol, false)?;
            let b = bar(quiet, vols.len(), "real volumes");
            let f = eval::extract(&net, &vols, args.batch, &device, &mut |n| {
                if let Some(b) = &b {
                    b.set_position(n as u64)
                }
            })?;
            if let Some(b) = b {
                b.finish_and_clear();
            }
            if !args.no_cache {
                eval::write_cache(&cache_file, &f)?;
            }
            (files, vols.into_iter().take(1).collect(), f)
        }
    };
    let (fake_files, fake_vols) = eval::prepare_set(&args.fake, &protocol, true)?;
    eval::check_same_range(&real_first, &real_files[..1], &fake_vols, &fake_files)?;
    let b = bar(quiet, fake_vols.len(), "generated volumes");
    let fake = eval::extract(&net, &fake_vols, args.batch, &device, &mut |n| {
        if let Some(b) = &b {
            b.set_position(n as u64)
        }
    })?;
    if let Some(b) = b {
        b.finish_and_clear();
    }
    let fid = stats::fid(&real, &fake)?;
    let mmd = stats::mmd(&real, &fake, args.mmd)?;
    let report = serde_json::json!({
        "fid": fid, "mmd": mmd.mmd, "mmd2": mmd.mmd2, "mmd_gamma": mmd.gamma,
        "mmd_estimator": args.mmd, "n_real": real.n, "n_fake": fake.n, "features": real.d,
        "network": format!("MedicalNet ResNet-{} (shortcut {})", net_spec.depth, net_spec.shortcut),
        "weights": weights_info, "preset": protocol, "real": args.real, "fake": args.fake,
        "real_features_cached": cache_hit, "cache_file": (!args.no_cache).then_some(&cache_file),
        "seconds": started.elapsed().as_secs_f64(),
        "time_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    });
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{text}");
    Ok(())
}

fn eval_diversity_cmd(args: &EvalDiversityArgs) -> Result<()> {
    let mut files = prdit::data::dataset::list_volumes(&args.volumes)?;
    if let Some(n) = args.num {
        files.truncate(n);
    }
    let vols = files.iter().map(|f| nifti::read_volume(f)).collect::<prdit::Result<Vec<_>>>()?;
    let (score, pairs) = prdit::eval::msssim::diversity(&vols)?;
    let report = serde_json::json!({
        "ms_ssim": score, "pairs": pairs, "volumes": files.len(), "data_range": 1.0,
        "note": "MONAI MS-SSIM, 3D, kernel 3, sigma 1.5, 5 scales, data_range 1 (as the official script; lower = more diverse)",
    });
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{text}");
    Ok(())
}

fn bench_cmd(spec: DeviceSpec, args: &BenchArgs, started: std::time::Instant) -> Result<()> {
    use prdit::bench::{Bench, Iterations};
    let selected = device::select(spec)?;
    if let Some(n) = &selected.notice {
        eprintln!("note: {n}");
    }
    let bench = Bench {
        device: selected.device.clone(),
        device_name: selected.name.clone(),
        iterations: Iterations { warmup: args.warmup, timed: args.iters },
        since: started,
    };
    let stage2 = PrditConfig::from_name(&args.model, args.size)?;
    if stage2.depth == 0 {
        bail!("--model names the stage-2 model (depth > 0); its depth-0 sibling is timed as stage 1");
    }
    let stage1 = PrditConfig { depth: 0, ..stage2.clone() };
    let mut results = Vec::new();
    let mut report = |r: prdit::bench::CaseResult| {
        let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        let official = r.official_ms.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
        let peak = r.peak_reserved_gib.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<40} first {:>9.1} ms  cold {:>6.1} s  warm {:>9.2} ms  {:>8.2} vol/s  peak {:>6} GiB  official {:>7} ms  ratio {ratio}",
            r.case, r.ms_first, r.cold_start_s, r.ms_median, r.volumes_per_s, peak, official
        );
        results.push(r);
    };
    if matches!(args.what.as_str(), "train" | "all") {
        let b = args.batch.unwrap_or(16);
        report(bench.train(&stage1, b, b));
        report(bench.train(&stage2, b, b));
    }
    if matches!(args.what.as_str(), "sample" | "all") {
        let b = args.batch.unwrap_or(8);
        let model = PrditNet::init(&stage2, 0, &bench.device)?;
        report(bench.forward(&model, &stage2.name(), args.size, b));
        let pc = bench.sample_step(&model, &stage2.name(), args.size, b);
        println!("  → {:.1} s per volume at 1000 steps", prdit::bench::seconds_per_volume_1000(&pc));
        report(pc);
    }
    if !matches!(args.what.as_str(), "train" | "sample" | "all") {
        bail!("--what must be train, sample or all");
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({"device": bench.device_name, "prdit": env!("CARGO_PKG_VERSION"), "burn": "0.22.1", "cases": results});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn warmup_cmd(spec: DeviceSpec, args: &WarmupArgs, started: std::time::Instant) -> Result<()> {
    use prdit::bench::{Bench, Iterations};
    let cfg =
        RunConfig::load(&args.config).with_context(|| format!("configuration {}", args.config.display()))?;
    let net = cfg.model_config()?;
    let selected = device::select(spec)?;
    let bench = Bench {
        device: selected.device.clone(),
        device_name: selected.name.clone(),
        iterations: Iterations { warmup: 0, timed: 0 },
        since: started,
    };
    let micro = cfg.train.micro_batch.unwrap_or(cfg.train.batch_size);
    let step = bench.train(&net, micro, micro);
    println!(
        "{}: {:.1} s (compiles and tunes the kernels of a training step)",
        step.case,
        step.ms_first / 1e3
    );
    let model = PrditNet::init(&net, 0, &bench.device)?;
    let pc = bench.sample_step(&model, &net.name(), net.input_size, 1);
    println!("{}: {:.1} s", pc.case, pc.ms_first / 1e3);
    match (device::kernel_cache(), selected.name.starts_with("cuda")) {
        (Some(dir), true) => println!("kernels cached in {}", dir.display()),
        _ => println!("(no persistent kernel cache on this backend)"),
    }
    Ok(())
}

fn prepare_cmd(args: &PrepareArgs, quiet: bool) -> Result<()> {
    use prdit::prepare::{self, PrepareOptions};
    if args.size < 8 {
        bail!("--size must be at least 8");
    }
    let opts = PrepareOptions {
        recipe: args.recipe,
        size: args.size,
        window: args.window.map(|w| [w.min_hu, w.max_hu]),
        spacing_mm: args.spacing,
        fov: args.fov,
    };
    let started = std::time::Instant::now();
    let (inputs, failed) = prepare::discover(&args.input);
    eprintln!(
        "{} volume(s) to prepare ({} DICOM series, {} NIfTI files)",
        inputs.len(),
        inputs.iter().filter(|i| matches!(i, prepare::Input::Dicom { .. })).count(),
        inputs.iter().filter(|i| matches!(i, prepare::Input::Nifti(_))).count()
    );
    let b = bar(quiet, inputs.len(), "volumes");
    let progress = |done: usize, _total: usize| {
        if let Some(b) = &b {
            b.set_position(done as u64);
        }
    };
    let manifest = prepare::run(&inputs, failed, &args.out, &opts, args.jobs, &progress)?;
    if let Some(b) = b {
        b.finish_and_clear();
    }
    for r in &manifest.volumes {
        println!(
            "{}  ← {} ({}, {:?} at {:.2}×{:.2}×{:.2} mm; window [{:.0}, {:.0}] HU){}",
            r.file,
            r.source.display(),
            r.orientation_in,
            r.shape_in,
            r.spacing_in_mm[0],
            r.spacing_in_mm[1],
            r.spacing_in_mm[2],
            r.window_hu[0],
            r.window_hu[1],
            r.warnings.iter().map(|w| format!("\n    warning: {w}")).collect::<String>()
        );
    }
    println!(
        "{} volume(s) of {}³ in {} ({:.1} s); dataset.json written",
        manifest.volumes.len(),
        args.size,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    if !manifest.failed.is_empty() {
        for f in &manifest.failed {
            eprintln!("could not prepare {}: {}", f.source.display(), f.reason);
        }
        if !args.skip_bad {
            bail!(
                "{} input(s) could not be prepared (listed above and in {}); the others were written — \
                 fix or remove the failing inputs, or pass --skip-bad to accept the set without them",
                manifest.failed.len(),
                args.out.join("dataset.json").display()
            );
        }
    }
    Ok(())
}

/// The window phantoms are written with (model space [−1, 1] ↔ HU).
const PHANTOM_WINDOW: Window = Window { min_hu: -1000.0, max_hu: 1000.0 };

fn phantom_cmd(args: &PhantomArgs) -> Result<()> {
    if args.num == 0 || args.size < 8 {
        bail!("--num must be at least 1 and --size at least 8");
    }
    let hu_dir = args.out.join("hu");
    std::fs::create_dir_all(&hu_dir).with_context(|| format!("creating {}", hu_dir.display()))?;
    let mut entries = Vec::new();
    for i in 0..args.num {
        let seed = args.seed + i as u64;
        let hu = phantom::chest_phantom(args.size, seed);
        let name = format!("phantom-{seed:05}.nii.gz");
        nifti::write_volume(&hu_dir.join(&name), &hu, &format!("prdit phantom seed {seed}, HU"))?;
        let mut model = hu.clone();
        model.data.iter_mut().for_each(|v| *v = PHANTOM_WINDOW.to_model(*v));
        nifti::write_volume(
            &args.out.join(&name),
            &model,
            &format!("prdit phantom seed {seed}, model space"),
        )?;
        entries.push(serde_json::json!({"file": name, "seed": seed, "hu_file": format!("hu/{name}"),
            "shape": hu.dims, "spacing_mm": hu.spacing}));
    }
    let manifest = serde_json::json!({
        "source": "prdit phantom", "window_hu": [PHANTOM_WINDOW.min_hu, PHANTOM_WINDOW.max_hu],
        "size": args.size, "volumes": entries,
    });
    let path = args.out.join("dataset.json");
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{} phantom volumes of {}³ in {} (HU copies in {})",
        args.num,
        args.size,
        args.out.display(),
        hu_dir.display()
    );
    Ok(())
}

/// The demo's configurations, embedded so the binary needs no files.
const DEMO_LOCAL: &str = include_str!("../configs/tiny-local.toml");
const DEMO_GLOBAL: &str = include_str!("../configs/tiny-global.toml");

fn demo_cmd(spec: DeviceSpec, args: &DemoArgs, quiet: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let data = args.out.join("data");
    let local: RunConfig = RunConfig::parse(DEMO_LOCAL)?;
    let size = local.model.input_size;
    println!("1/4 phantom dataset: 24 chest phantoms of {size}³ in {}", data.display());
    phantom_cmd(&PhantomArgs { out: data.clone(), num: 24, size, seed: 0 })?;
    let write_cfg = |text: &str, name: &str| -> Result<PathBuf> {
        let mut cfg = RunConfig::parse(text)?;
        cfg.data.train = std::path::absolute(&data)?;
        cfg.train.total_steps = args.steps;
        let path = args.out.join(name);
        std::fs::write(&path, cfg.to_toml())?;
        Ok(path)
    };
    let local_cfg = write_cfg(DEMO_LOCAL, "tiny-local.toml")?;
    let global_cfg = write_cfg(DEMO_GLOBAL, "tiny-global.toml")?;
    let run1 = args.out.join("runs/local");
    let run2 = args.out.join("runs/global");
    println!("2/4 stage 1 (local denoiser), {} steps → {}", args.steps, run1.display());
    let resume1 = run1.join("checkpoints").is_dir();
    let common = |config: PathBuf, out: PathBuf, resume: bool| TrainArgs {
        config: Some(config),
        out: Some(out),
        resume,
        steps: None,
        data: None,
    };
    train_cmd(spec, Stage::Local, common(local_cfg, run1.clone(), resume1), None, quiet)?;
    println!(
        "3/3 stage 2 (global residual DiT on the frozen stage 1), {} steps → {}",
        args.steps,
        run2.display()
    );
    let resume2 = run2.join("checkpoints").is_dir();
    train_cmd(spec, Stage::Global, common(global_cfg, run2.clone(), resume2), Some(run1.clone()), quiet)?;
    let samples = args.out.join("samples");
    println!("4/4 sampling 2 volumes (hot sampler, 100 steps) → {}", samples.display());
    sample_cmd(
        spec,
        &SampleArgs {
            run: Some(run2.clone()),
            checkpoint: None,
            out: samples.clone(),
            num: 2,
            batch: 2,
            steps: 100,
            sampler: "hot".into(),
            k: 2,
            seed: 0,
            hu: false,
            window: None,
            x0: false,
            raw: false,
            model: None,
            size: 128,
            entry: Entry::Auto,
        },
        quiet,
    )?;
    println!("\ndemo done in {:.0} s. Outputs:", started.elapsed().as_secs_f64());
    println!("  data       {}  (HU copies in data/hu, manifest data/dataset.json)", data.display());
    for run in [&run1, &run2] {
        let last = std::fs::read_dir(run.join("previews")).ok().and_then(|d| {
            d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "png")).max()
        });
        println!("  run        {}  (metrics.jsonl, checkpoints/)", run.display());
        if let Some(p) = last {
            println!("  preview    {}  (rows: volume, noisy at t=100, reconstruction)", p.display());
        }
    }
    println!("  samples    {}  (xs/*.nii.gz, previews/*.png, manifest.json)", samples.display());
    Ok(())
}

/// A model from an official name or a TOML/JSON file of [`PrditConfig`] fields.
fn model_config(model: &str, size: usize) -> Result<PrditConfig> {
    let path = Path::new(model);
    let is_file = matches!(path.extension().and_then(|e| e.to_str()), Some("toml" | "json"));
    if !is_file {
        return Ok(PrditConfig::from_name(model, size)?);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: PrditConfig = if model.ends_with(".json") {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
    } else {
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
    };
    cfg.validate().with_context(|| format!("in {}", path.display()))?;
    Ok(cfg)
}

fn inspect_cmd(spec: DeviceSpec, args: InspectArgs) -> Result<()> {
    let checkpoint = match &args.weights {
        Some(w) if weights::detect(w)? == FileKind::Burnpack => {
            Some(weights::checkpoint::read_config::<PrditNet>(w)?)
        }
        _ => None,
    };
    let cfg = match (&args.model, &checkpoint) {
        (Some(m), _) => model_config(m, args.size)?,
        (None, Some(cfg)) => cfg.clone(),
        (None, None) => {
            bail!("--model is required (an official name such as PRDiT-B/12/4, or a TOML file)")
        }
    };
    let report = inspect::report(&cfg);
    let mut loaded = None;
    if let Some(path) = &args.weights {
        let selected = device::select(spec)?;
        if let Some(notice) = &selected.notice {
            eprintln!("note: {notice}");
        }
        let started = std::time::Instant::now();
        let (model, what) = match checkpoint {
            Some(_) => (
                weights::checkpoint::load_expecting::<PrditNet>(path, &cfg, &selected.device)?,
                "prdit checkpoint".to_string(),
            ),
            None => {
                let sd = weights::StateDict::open(path, args.entry)?;
                let entry = sd.entry().map(|e| format!(", entry `{e}`")).unwrap_or_default();
                let what = format!("{} tensors{entry}", sd.len());
                (weights::prdit_from_state_dict(&cfg, &sd, &selected.device)?, what)
            }
        };
        use burn::module::Module;
        loaded = Some(serde_json::json!({
            "file": path,
            "contents": what,
            "parameters": model.num_params(),
            "device": selected.name,
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(l) = loaded {
            value["weights"] = l;
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{report}");
        if let Some(l) = loaded {
            println!(
                "weights\n  {} loaded strictly ({}; {} parameters) on {} in {:.2} s",
                l["file"].as_str().unwrap_or_default(),
                l["contents"].as_str().unwrap_or_default(),
                l["parameters"],
                l["device"].as_str().unwrap_or_default(),
                l["seconds"].as_f64().unwrap_or_default()
            );
        }
    }
    Ok(())
}
