//! Command-line arguments and dispatch: each command maps its flags to one library call and
//! prints the result. The library's closed choices (`Entry`, `Orientation`, `MmdEstimator`,
//! `Preset`, `Recipe`, `What`, `SamplerKind`, `GridKind`, `FieldKind`, `Process`) derive `clap::ValueEnum`
//! where they are defined, so that their spellings are one list, which the library also prints
//! in manifests and labels; every other clap type (the parser, the argument structs) is here.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use prdit::PrditConfig;
use prdit::bench::What;
use prdit::config::RunConfig;
use prdit::data::{Window, phantom};
use prdit::device::{self, DeviceSpec};
use prdit::diffusion::Process;
use prdit::eval::Preset;
use prdit::eval::fid::{FeatureNet, FidOptions};
use prdit::inspect::{self, InspectOptions};
use prdit::progress;
use prdit::resolve::{self, Weights};
use prdit::restore::job::{RestoreJob, RestoreOptions, RestoreSampler, Task};
use prdit::sample::{FieldKind, GridKind, Intensity, SampleJob, SamplerKind};
use prdit::train::{Stage, Summary, TrainOptions};
use prdit::weights::Entry;

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
    #[command(subcommand)]
    pub command: Command,
}

/// The persistent GPU kernel cache (commands that run networks on a device).
#[derive(Args, Clone, Default)]
pub struct KernelCacheArgs {
    /// Folder of the persistent GPU kernel and autotune cache (default $PRDIT_KERNEL_CACHE,
    /// else ~/.cache/prdit/cubecl).
    #[arg(long)]
    kernel_cache: Option<PathBuf>,
    /// Compile and autotune GPU kernels afresh, without reading or writing the cache.
    #[arg(long)]
    no_kernel_cache: bool,
    /// A kernel bundle (`prdit export-kernels`, `prdit warmup --export-bundle`) to add to the
    /// cache before the run: autotune decisions made on the same GPU model elsewhere (default
    /// $PRDIT_KERNEL_BUNDLE).
    #[arg(long)]
    kernel_bundle: Option<PathBuf>,
}

fn parse_box(s: &str) -> Result<[usize; 6], String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse().map_err(|_| format!("`{p}` is not a voxel index")))
        .collect::<Result<_, _>>()?;
    v.try_into().map_err(|v: Vec<usize>| format!("six values D0,H0,W0,D1,H1,W1, given {}", v.len()))
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse().map_err(|e: prdit::Error| e.to_string())
}

#[derive(Subcommand)]
pub enum Command {
    /// Train stage 1, the local MLP denoiser on overlapping patches.
    #[command(
        after_help = "Examples:\n  prdit train-local --config configs/lidc-local.toml --out runs/lidc-local\n  prdit train-local --out runs/lidc-local --resume            # after an interruption"
    )]
    TrainLocal(TrainArgs),
    /// Train stage 2, the global residual DiT on top of a frozen stage 1.
    #[command(
        after_help = "Examples:\n  prdit train-global --config configs/lidc-global.toml --out runs/lidc-global --local runs/lidc-local\n  prdit train-global --out runs/lidc-global --resume"
    )]
    TrainGlobal(TrainGlobalArgs),
    /// Train stage 3, the high-resolution refinement (e.g. 128³ → 256³) on a frozen base model.
    #[command(
        after_help = "Example:\n  prdit train-highres --config configs/lidc-highres.toml --out runs/lidc-highres"
    )]
    TrainHighres(TrainArgs),
    /// Generate volumes from a trained model (NIfTI, previews, manifest.json).
    #[command(
        after_help = "Examples:\n  prdit sample --run runs/lidc-global --out volumes/ --num 100 --batch 8\n  prdit sample --run runs/lidc-global --out fast/ --num 100 --batch 8 --sampler unipc --steps 20\n  prdit sample --checkpoint prdit_b.pt --model PRDiT-B/12/4 --size 128 --out official/"
    )]
    Sample(SampleArgs),
    /// Restore a volume from a measurement with a trained model as the prior (sparse-view X-rays,
    /// super-resolution, infilling, deblurring; TF-PRDiT's guided sampler or a few-step solver
    /// with data consistency).
    #[command(
        after_help = "Examples:\n  prdit restore --task xray --views 2 --run runs/global --simulate data/chest/vol-0001.nii.gz --out xray/ --sampler ddim --steps 10 --num 4\n  prdit restore --task sr --factor 4 --run runs/global --simulate data/chest/vol-0001.nii.gz --out sr/ --sampler unipc --steps 20\n  prdit restore --task infill --run runs/global --input masked.nii.gz --out filled/ --num 8"
    )]
    Restore(RestoreArgs),
    /// 3D-FID and MMD of generated volumes against real ones, on MedicalNet ResNet features.
    #[command(
        after_help = "Example:\n  prdit eval-fid --real data/lidc-128 --fake volumes/xs --weights resnet_50.pth --preset lidc --out fid.json"
    )]
    EvalFid(EvalFidArgs),
    /// Diversity of generated volumes: mean MS-SSIM over all pairs (lower = more diverse).
    #[command(after_help = "Example:\n  prdit eval-diversity --volumes volumes/xs --num 100")]
    EvalDiversity(EvalDiversityArgs),
    /// Clinical CT (DICOM series, NIfTI) → training volumes in model space, with dataset.json.
    #[command(
        after_help = "Examples:\n  prdit prepare --input /data/LIDC-IDRI --out data/lidc-128 --recipe lidc --size 128 --jobs 4\n  prdit prepare --input /data/rad_chestCT --out data/rad-128 --recipe rad-chestct --size 128"
    )]
    Prepare(PrepareArgs),
    /// Write the built-in synthetic chest-CT dataset (NIfTI, model space and HU).
    #[command(after_help = "Example:\n  prdit phantom --out data/phantoms --num 100 --size 64")]
    Phantom(PhantomArgs),
    /// The first thing to run: a phantom dataset, a brief stage-1 and stage-2 training of a
    /// tiny model, and previews — about two minutes on two CPU cores.
    #[command(after_help = "Example:\n  prdit demo --out prdit-demo")]
    Demo(DemoArgs),
    /// Time the hot paths (training steps, forward, sampler step): cold start, warm median,
    /// peak memory, and the ratio to the official PyTorch numbers on an H100.
    #[command(
        after_help = "Examples:\n  prdit --device cuda bench --model PRDiT-B/12/4 --size 128 --json bench.json\n  prdit --device cpu bench --model PRDiT-XS/12/4 --size 64 --batch 2 --what sample"
    )]
    Bench(BenchArgs),
    /// Compile (and autotune) the GPU kernels of a run's shapes into the persistent cache.
    #[command(after_help = "Example:\n  prdit --device cuda warmup --config configs/lidc-global.toml")]
    Warmup(WarmupArgs),
    /// Write the kernel cache (autotune decisions; compiled kernels where the backend keeps
    /// them) to a bundle file, which `--kernel-bundle` adds to the cache of another machine with
    /// the same GPU and prdit version.
    #[command(
        after_help = "Example:\n  prdit --device cuda warmup --config configs/lidc-global.toml\n  prdit export-kernels --out h100.bundle --name \"H100, prdit 0.1\""
    )]
    ExportKernels(ExportKernelsArgs),
    /// Sizes of a model: parameters per stage, token grid, activation memory per volume;
    /// with --weights, also load a weights file strictly and report what it holds.
    #[command(
        after_help = "Examples:\n  prdit inspect --model PRDiT-B/12/4 --size 128\n  prdit inspect --weights runs/lidc-global            # what a run or weights file holds"
    )]
    Inspect(InspectArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    gpu: KernelCacheArgs,
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
    /// Data-parallel training over these devices, comma-separated (cuda:0,cuda:1 or all; the
    /// first holds the model): overrides `train.devices`. The batch is split evenly.
    #[arg(long, value_delimiter = ',')]
    devices: Option<Vec<String>>,
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
pub struct RestoreArgs {
    #[command(flatten)]
    gpu: KernelCacheArgs,
    /// What was measured: xray (sparse-view radiographs), sr (downsampled), infill (a region
    /// missing) or deblur (blurred).
    #[arg(long, value_enum)]
    task: Task,
    /// A run directory (its newest checkpoint's EMA weights), a checkpoint folder or a prdit model file.
    #[arg(long)]
    run: PathBuf,
    /// The measurement (NIfTI, model space; for sr the downsampled volume; for xray the DRRs as
    /// views × rows × columns).
    #[arg(long, conflicts_with = "simulate")]
    input: Option<PathBuf>,
    /// A known volume (NIfTI, model space, the model's size): the measurement is made from it,
    /// and the reconstructions are scored against it (PSNR, HU error per tissue band).
    #[arg(long)]
    simulate: Option<PathBuf>,
    /// Output folder (measurement, restored-*.nii.gz, residual.nii.gz, mean/std with --num > 1, preview.png, manifest.json).
    #[arg(long)]
    out: PathBuf,
    /// guided (TF-PRDiT's, 1000 steps by default) or a few-step solver with data consistency.
    #[arg(long, value_enum, default_value_t = RestoreSampler::Guided)]
    sampler: RestoreSampler,
    /// Steps (default 1000 for guided, 20 for the others).
    #[arg(long)]
    steps: Option<usize>,
    /// Reconstructions of the one measurement (K > 1 writes their voxelwise mean and standard deviation).
    #[arg(long, default_value_t = 1)]
    num: usize,
    /// Seed; reconstruction i uses noise stream i of it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// sr: the downsampling factor.
    #[arg(long, default_value_t = 4)]
    factor: usize,
    /// sr: downsample along z only (thick slices to thin), not all three axes.
    #[arg(long)]
    z_only: bool,
    /// infill: the missing box D0,H0,W0,D1,H1,W1 (voxels, end exclusive; default the centre cube
    /// of half the edge, TF-PRDiT's).
    #[arg(long, value_parser = parse_box, conflicts_with = "mask")]
    r#box: Option<[usize; 6]>,
    /// infill: a volume whose nonzero voxels are the measured ones.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// deblur: Gaussian taps per axis (odd).
    #[arg(long, default_value_t = 5)]
    kernel: usize,
    /// deblur: Gaussian sigma in voxels.
    #[arg(long, default_value_t = 2.0)]
    sigma: f64,
    /// deblur and xray with a few-step solver: conjugate-gradient steps of the data consistency.
    #[arg(long, default_value_t = 5)]
    cg_steps: usize,
    /// xray: number of views, at TF-PRDiT's angles (1: 0°; 2: 0° and 90°; more: 0°, 90° and a
    /// thinned uniform set), rotated as TF-PRDiT's code does.
    #[arg(long, default_value_t = 2)]
    views: usize,
    /// xray: the gantry angles in degrees instead (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "views")]
    angles: Option<Vec<f64>>,
    /// guided: the guidance scale ρ instead of the task's TF-PRDiT default (xray 0.7, sr 20,
    /// infill 3, deblur 10; tuned at 128³).
    #[arg(long)]
    rho: Option<f64>,
}

#[derive(Args)]
pub struct SampleArgs {
    #[command(flatten)]
    gpu: KernelCacheArgs,
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
    /// Sampling steps (default 1000, the official sampler's; 100 for a flow-matching model, as
    /// PRDiT-FM's). The official grid makes one network call per step when it divides 1000;
    /// the ODE solvers make one per step, Heun two but the last (flow Heun: two). unipc needs
    /// about 20, dpm2m 20–50 (docs/samplers.md).
    #[arg(long)]
    steps: Option<usize>,
    /// The sampler: the official hot (default) or deterministic, or a few-step ODE solver; for
    /// a flow-matching model euler (default) or heun (PRDiT-FM's), or ddim, dpm2m, dpm3m, unipc.
    #[arg(long, value_enum)]
    sampler: Option<SamplerKind>,
    /// The process of the model: a prdit model file records it (this checks it); an official
    /// .pt/.pth has it in its heads' shapes (read from them when not given).
    #[arg(long, value_enum)]
    process: Option<Process>,
    /// Time grid of the ODE solvers (default: logsnr, edm for heun).
    #[arg(long, value_enum)]
    grid: Option<GridKind>,
    /// Which flow the ODE solvers integrate: official (both heads, as the official samplers:
    /// few steps give their volumes) or image (the image head alone).
    #[arg(long, value_enum, default_value_t = FieldKind::Official)]
    field: FieldKind,
    /// Jump of the hot predictor–corrector sampler (default 2; the other samplers have none).
    #[arg(long)]
    k: Option<usize>,
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
    /// Volume edge for --model (default 128).
    #[arg(long, requires = "model")]
    size: Option<usize>,
    /// Entry of an official full checkpoint.
    #[arg(long, value_enum, default_value_t = Entry::Auto)]
    entry: Entry,
    /// Orientation of the training data, for official weights (default las, the official
    /// LIDC arrays'); a prdit run records its own.
    #[arg(long, value_enum)]
    orientation: Option<prdit::data::Orientation>,
    /// Value range of the training data, for official weights: --data-range=-1,1 (default;
    /// LIDC) or --data-range=0,1 (the official RAD-ChestCT data); a prdit run records its own.
    #[arg(long, value_parser = parse_range)]
    data_range: Option<prdit::data::ValueRange>,
}

fn parse_range(s: &str) -> Result<prdit::data::ValueRange, String> {
    use prdit::data::ValueRange;
    match s.replace(' ', "").as_str() {
        "-1,1" => Ok(ValueRange::MinusOneOne),
        "0,1" => Ok(ValueRange::ZeroOne),
        _ => Err("expected -1,1 or 0,1".into()),
    }
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
    #[command(flatten)]
    gpu: KernelCacheArgs,
    /// Real volumes: a folder of NIfTI files or a list file.
    #[arg(long)]
    real: PathBuf,
    /// Generated volumes: a folder (e.g. the xs/ of `prdit sample`) or a list file.
    #[arg(long)]
    fake: PathBuf,
    /// MedicalNet weights: the pretrained 3D ResNet .pth files published with the
    /// Tencent/MedicalNet repository (its pretrain/ release). Known by SHA-256:
    /// resnet_50.pth (5b6189ca…cbd84, PRDiT's README) and resnet_50_23dataset.pth
    /// (ff48a622…a246e, PRDiT-FM); any MedicalNet ResNet-10/18/34/50 file loads.
    #[arg(long, required_unless_present = "test_formula_weights")]
    weights: Option<PathBuf>,
    /// Protocol: lidc (128³, [-1, 1], 1000 volumes), rad-chestct (128³, [0, 1], 1000 volumes)
    /// or none (as given).
    #[arg(long, value_enum, default_value_t = Preset::Lidc)]
    preset: Preset,
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
    /// Clamp generated volumes into the real set's range (model space [-1, 1], or [0, 1])
    /// instead of refusing ones that overshoot it; the report gives the fraction clamped.
    #[arg(long)]
    clamp: bool,
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
    #[command(flatten)]
    gpu: KernelCacheArgs,
    /// The stage-2 model (its depth-0 sibling is the stage-1 case).
    #[arg(long, default_value = "PRDiT-B/12/4")]
    model: String,
    /// Volume edge.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Volumes per step (the official benchmark: 16 for training, 8 for sampling).
    #[arg(long)]
    batch: Option<usize>,
    /// Which cases to time.
    #[arg(long, value_enum, default_value_t = What::All)]
    what: What,
    /// Untimed iterations after the first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Count the kernel launches of each phase of a training step (forward and backward,
    /// gradient norm, AdamW, EMA) on a CubeCL device; each phase ends with a device sync.
    #[arg(long)]
    phases: bool,
}

#[derive(Args)]
pub struct WarmupArgs {
    #[command(flatten)]
    gpu: KernelCacheArgs,
    /// The run configuration whose shapes to compile.
    #[arg(long)]
    config: PathBuf,
    /// Then write the kernel cache (autotune decisions, and compiled kernels where the backend
    /// keeps them) to this bundle file, for `--kernel-bundle` on machines with the same GPU.
    #[arg(long)]
    export_bundle: Option<PathBuf>,
}

#[derive(Args)]
pub struct ExportKernelsArgs {
    #[command(flatten)]
    gpu: KernelCacheArgs,
    /// The bundle file to write (replaced once complete).
    #[arg(long)]
    out: PathBuf,
    /// The name the bundle carries.
    #[arg(long, default_value = "prdit kernels")]
    name: String,
}

#[derive(Args)]
pub struct PrepareArgs {
    /// NIfTI files, DICOM series folders, RAD-ChestCT .npz files, or folders searched
    /// recursively for them.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Output folder (one .nii.gz per input volume and dataset.json).
    #[arg(long)]
    out: PathBuf,
    /// lidc (the official LIDC-IDRI steps: 1 mm, 256 mm field of view, 99.9th percentile,
    /// [-1, 1]), rad-chestct (the official RAD-ChestCT steps: no resampling, 256 voxels, clip
    /// ±1000, 99.5th percentile, [0, 1]) or generic (the flags below).
    #[arg(long, value_enum, default_value_t = prdit::prepare::Recipe::Lidc)]
    recipe: prdit::prepare::Recipe,
    /// Edge of the written volumes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Fixed HU window MIN,MAX (generic recipe only: lidc and rad-chestct compute each
    /// volume's window as the official scripts do).
    #[arg(long, value_parser = parse_window)]
    window: Option<Window>,
    /// Voxel spacing in mm to resample to (instead of the recipe's; not rad-chestct, which does
    /// not resample).
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
    /// lidc, rad-chestct: pad scans smaller than the field of view with air (the official
    /// recipes drop them).
    #[arg(long)]
    pad_short: bool,
    /// Orientation of the written arrays (DICOM and NIfTI inputs): lps, prdit's canonical
    /// order, or las, the official LIDC data's (to mix with official checkpoints).
    #[arg(long, value_enum)]
    orientation: Option<prdit::data::Orientation>,
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
    #[command(flatten)]
    gpu: KernelCacheArgs,
    /// Output folder.
    #[arg(long, default_value = "prdit-demo")]
    out: PathBuf,
    /// Training steps of each stage (default: 300 for stage 1, 400 for stage 2, what the
    /// demo needs to generate the phantom's anatomy).
    #[arg(long)]
    steps: Option<u64>,
    /// The generative process: ian (the paper's diffusion, sampled with UniPC at 20 steps) or
    /// flow (PRDiT-FM's flow matching, Euler at 30 steps; runs/*-flow, samples-flow/).
    #[arg(long, value_enum, default_value_t = Process::Ian)]
    process: Process,
}

#[derive(Args)]
pub struct InspectArgs {
    /// An official name (PRDiT-B/12/4) or a TOML/JSON file with the explicit model fields.
    /// Optional when --weights is a prdit checkpoint (it embeds its configuration).
    #[arg(long)]
    model: Option<String>,
    /// Volume edge S (volumes are S³) of --model (default 128).
    #[arg(long, requires = "model")]
    size: Option<usize>,
    /// A weights file to load into the model: PyTorch .pt/.pth, safetensors or a prdit checkpoint.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Which weights of a full official checkpoint to use.
    #[arg(long, value_enum, default_value_t = Entry::Auto)]
    entry: Entry,
    /// Volumes per training step, for the predicted peak memory of a step (the paper's: 16).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    let started = std::time::Instant::now();
    let cache = match &cli.command {
        Command::TrainLocal(a) | Command::TrainHighres(a) => a.gpu.clone(),
        Command::TrainGlobal(a) => a.common.gpu.clone(),
        Command::Sample(a) => a.gpu.clone(),
        Command::Restore(a) => a.gpu.clone(),
        Command::EvalFid(a) => a.gpu.clone(),
        Command::Bench(a) => a.gpu.clone(),
        Command::Warmup(a) => a.gpu.clone(),
        Command::ExportKernels(a) => a.gpu.clone(),
        Command::Demo(a) => a.gpu.clone(),
        _ => KernelCacheArgs::default(),
    };
    // The benchmarks count autotune decisions: CubeCL records them in a file of this process's.
    let autotune_log = matches!(cli.command, Command::Bench(_) | Command::Warmup(_))
        .then(|| std::env::temp_dir().join(format!("prdit-autotune-{}.jsonl", std::process::id())));
    if let Some(dir) =
        device::configure_kernel_cache(cache.kernel_cache, !cache.no_kernel_cache, autotune_log)
            .context("the kernel cache (--kernel-cache or PRDIT_KERNEL_CACHE)")?
    {
        tracing::debug!("kernel cache: {}", dir.display());
    }
    if !cache.no_kernel_cache
        && let Some((file, report)) = device::import_asked_kernel_bundle(cache.kernel_bundle)?
    {
        tracing::info!("kernel bundle {}: {report}", file.display());
    }
    let result = match cli.command {
        Command::TrainLocal(args) => train_cmd(cli.device, Stage::Local, args, None, cli.quiet).map(|_| ()),
        Command::TrainGlobal(args) => {
            train_cmd(cli.device, Stage::Global, args.common, args.local, cli.quiet).map(|_| ())
        }
        Command::TrainHighres(args) => {
            train_cmd(cli.device, Stage::Highres, args, None, cli.quiet).map(|_| ())
        }
        Command::Sample(args) => sample_cmd(cli.device, &args, cli.quiet),
        Command::Restore(args) => restore_cmd(cli.device, &args, cli.quiet),
        Command::EvalFid(args) => eval_fid_cmd(cli.device, &args, cli.quiet),
        Command::EvalDiversity(args) => eval_diversity_cmd(&args),
        Command::Bench(args) => bench_cmd(cli.device, &args, started),
        Command::Warmup(args) => warmup_cmd(cli.device, &args, started),
        Command::ExportKernels(args) => {
            let n = device::export_kernel_bundle(&args.out, &args.name)?;
            println!("{n} entries written to {}", args.out.display());
            Ok(())
        }
        Command::Prepare(args) => prepare_cmd(&args, cli.quiet),
        Command::Phantom(args) => phantom_cmd(&args),
        Command::Demo(args) => demo_cmd(cli.device, &args, cli.quiet),
        Command::Inspect(args) => inspect_cmd(cli.device, args),
    };
    if let Some(log) = device::autotune_log() {
        let _ = std::fs::remove_file(log);
    }
    result
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
            (RunConfig::load(path).context("the run configuration")?, prdit::train::default_run_dir(path))
        }
        (None, Some(out)) if args.resume => {
            let path = out.join("config.toml");
            (RunConfig::load(&path).context("the configuration of the run to resume")?, out.clone())
        }
        _ => bail!("--config is required (or --out RUN_DIR with --resume)"),
    };
    if let Some(steps) = args.steps {
        cfg.train.total_steps = steps;
    }
    if let Some(data) = args.data {
        cfg.data.train = data;
    }
    if let Some(devices) = args.devices {
        cfg.train.devices = devices;
    }
    cfg.validate()?;
    let opts = TrainOptions {
        stage,
        run_dir: args.out.unwrap_or(default_out),
        resume: args.resume,
        device: device_for(spec)?,
        local,
        progress: progress::enabled(quiet),
        stop: prdit::interrupt::stop_flag(),
    };
    let summary = prdit::train::train(cfg, &opts).map_err(|e| match e {
        e @ prdit::Error::RunExists { .. } => {
            anyhow::anyhow!("{e}: continue it with --resume, or start afresh in another --out")
        }
        e => with_flags(e, &[("global.local", "set [global] local in the configuration, or pass --local")]),
    })?;
    print_summary(&summary);
    Ok(summary)
}

fn print_summary(s: &Summary) {
    let state = if s.interrupted { "interrupted" } else { "finished" };
    println!("{state} at step {}/{} in {}", s.step, s.total_steps, s.run_dir.display());
    if let Some(l) = s.last_loss {
        println!("  loss of the last step {l:.5} (the log lines show means over log_every steps)");
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

/// A library error about a value, with what the user should know about the flag behind it
/// (`num` → `--num`); other errors as they are (they name their file or setting).
fn with_flags(e: prdit::Error, flags: &[(&str, &str)]) -> anyhow::Error {
    let hint = match &e {
        prdit::Error::Invalid { key, .. } => flags.iter().find(|(k, _)| k == key).map(|(_, f)| *f),
        _ => None,
    };
    match hint {
        Some(flag) => anyhow::Error::new(e).context(flag.to_string()),
        None => e.into(),
    }
}

/// Prints a JSON report, then writes it to `out` too (atomically; a failed write is an error
/// naming the file, with the exit code of its cause, and the report is on stdout already).
fn print_report<T: Serialize>(report: &T, out: Option<&PathBuf>) -> Result<()> {
    println!("{}", prdit::fsio::json_text(report)?);
    if let Some(out) = out {
        prdit::fsio::write_json(out, report)?;
    }
    Ok(())
}

fn sample_cmd(spec: DeviceSpec, args: &SampleArgs, quiet: bool) -> Result<()> {
    let model = match (&args.run, &args.checkpoint) {
        (Some(path), _) | (None, Some(path)) => path.clone(),
        (None, None) => bail!("give --run RUN_DIR or --checkpoint FILE"),
    };
    let network =
        args.model.as_deref().map(|m| resolve::model_config(m, args.size.unwrap_or(128))).transpose()?;
    let job = SampleJob {
        model,
        weights: if args.raw { Weights::Raw } else { Weights::Ema },
        network,
        entry: args.entry,
        intensity: match (args.hu, args.window) {
            (false, Some(_)) => bail!("--window is the HU window of --hu: add --hu, or leave --window out"),
            (false, None) => Intensity::Model,
            (true, Some(w)) => Intensity::Hu(w),
            (true, None) => Intensity::RunHu,
        },
        out: args.out.clone(),
        num: args.num,
        batch: args.batch,
        steps: args.steps,
        sampler: args.sampler,
        process: args.process,
        grid: args.grid,
        field: args.field,
        k: args.k,
        seed: args.seed,
        write_x0: args.x0,
        progress: progress::enabled(quiet),
        data: prdit::sample::DataOverride { orientation: args.orientation, value_range: args.data_range },
    };
    let device = device_for(spec)?;
    let started = std::time::Instant::now();
    let manifest = prdit::sample::sample_job(&job, &device).map_err(|e| {
        with_flags(
            e,
            &[
                ("num", "--num"),
                ("batch", "--batch"),
                ("steps", "--steps"),
                ("k", "--k"),
                ("grid", "--grid"),
                ("window", "--hu: give the window with --window MIN,MAX"),
                ("network", "an official weights file needs --model (its network)"),
                ("model", "--model"),
                ("entry", "--entry"),
            ],
        )
    })?;
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

fn restore_cmd(spec: DeviceSpec, args: &RestoreArgs, quiet: bool) -> Result<()> {
    let options = RestoreOptions {
        task: args.task,
        sampler: args.sampler,
        steps: args.steps.unwrap_or(if args.sampler == RestoreSampler::Guided { 1000 } else { 20 }),
        num: args.num,
        seed: args.seed,
        factor: args.factor,
        z_only: args.z_only,
        box_: args.r#box,
        mask: args.mask.clone(),
        kernel: args.kernel,
        sigma: args.sigma,
        cg_steps: args.cg_steps,
        views: args.views,
        angles: args.angles.clone(),
        rho: args.rho,
    };
    let job = RestoreJob {
        model: args.run.clone(),
        input: args.input.clone(),
        simulate: args.simulate.clone(),
        out: args.out.clone(),
        options,
    };
    let device = device_for(spec)?;
    let bar = progress::bar(args.num as u64, "reconstructions", progress::enabled(quiet));
    let started = std::time::Instant::now();
    let manifest = prdit::restore::job::restore(&job, &device, &mut |done, _| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    })
    .map_err(|e| {
        with_flags(
            e,
            &[
                ("steps", "--steps"),
                ("factor", "--factor"),
                ("box", "--box"),
                ("kernel", "--kernel --sigma"),
                ("input", "--input or --simulate"),
                ("num", "--num"),
                ("views", "--views"),
                ("angles", "--angles"),
                ("rho", "--rho"),
            ],
        )
    })?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    println!(
        "{} reconstruction(s) in {} ({} network calls each, {:.1} s this run); manifest {}",
        manifest.volumes.len(),
        args.out.display(),
        manifest.network_calls,
        started.elapsed().as_secs_f64(),
        args.out.join("manifest.json").display()
    );
    for r in &manifest.volumes {
        let score = r
            .scores
            .as_ref()
            .map(|s| {
                let ssim = s.ssim.map(|v| format!(", SSIM {v:.4}")).unwrap_or_default();
                format!(", PSNR {:.2} dB{ssim}", s.psnr_db)
            })
            .unwrap_or_default();
        println!("  {}: residual ‖Ax − y‖/‖y‖ {:.2e}{score}", r.file, r.residual);
    }
    if let Some(rho) = manifest.spearman_std_error {
        println!("  voxelwise std vs the mean's absolute error: Spearman {rho:.3}");
    }
    Ok(())
}

fn eval_fid_cmd(spec: DeviceSpec, args: &EvalFidArgs, quiet: bool) -> Result<()> {
    let network = match (&args.weights, args.test_formula_weights) {
        (_, Some(depth)) => FeatureNet::TestFormula(depth),
        (Some(file), None) => FeatureNet::Weights(file.clone()),
        (None, None) => bail!("--weights is required"),
    };
    let opts = FidOptions {
        real: args.real.clone(),
        fake: args.fake.clone(),
        network,
        preset: args.preset,
        num: args.num,
        batch: args.batch,
        cache: (!args.no_cache)
            .then(|| args.cache.clone().unwrap_or_else(prdit::eval::fid::default_cache_dir)),
        mmd: args.mmd,
        clamp: args.clamp,
        progress: progress::enabled(quiet),
    };
    let report = prdit::eval::fid::evaluate(&opts, &device_for(spec)?)
        .map_err(|e| with_flags(e, &[("num", "--num"), ("batch", "--batch")]))?;
    print_report(&report, args.out.as_ref())
}

fn eval_diversity_cmd(args: &EvalDiversityArgs) -> Result<()> {
    let report = prdit::eval::diversity::evaluate(&args.volumes, args.num)?;
    print_report(&report, args.out.as_ref())
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
    if args.phases && !device::is_gpu(&selected.device) {
        eprintln!("note: --phases counts kernel launches, which only a GPU backend (cuda, wgpu) has");
    }
    prdit::bench::mark_phases(args.phases);
    let stage2 = PrditConfig::from_name(&args.model, args.size)?;
    let (b, heads, tokens) = (args.batch.unwrap_or(16), stage2.num_heads, stage2.num_tokens());
    let rows = prdit::model::attention::block_rows(b, heads, tokens);
    println!(
        "attention: the backend's own forward; training's backward recomputes the scores in blocks of {rows} \
         query rows ({:.2} GiB each at batch {b}) and keeps none",
        prdit::model::attention::block_bytes(b, heads, tokens, rows) as f64 / (1u64 << 30) as f64
    );
    for line in prdit::bench::CaseResult::header() {
        println!("{line}");
    }
    let cases = prdit::bench::run_cases(&bench, &stage2, args.what, args.batch, &mut |r| {
        println!("{}", r.line());
        if let Some(cold) = r.cold_start_s {
            println!("  cold start: {cold:.1} s from process start to the end of this first step");
        }
        if let (Some(first), Some(last)) = (&r.kernels_first, &r.kernels_last) {
            println!("  kernels: first iteration {first}; last {last}");
            println!("  most launched in the last: {}", last.top(8));
            for p in &last.phases {
                println!("  phase {p}");
            }
        }
        if r.case.starts_with("pc-step ") {
            println!("  → {:.1} s per volume at 1000 steps", prdit::bench::seconds_per_volume_1000(r));
        }
    })
    .map_err(|e| with_flags(e, &[("model", "--model")]))?;
    if let Some(path) = &args.json {
        prdit::fsio::write_json(path, &prdit::bench::report_json(&bench.device_name, &cases))?;
    }
    Ok(())
}

fn warmup_cmd(spec: DeviceSpec, args: &WarmupArgs, started: std::time::Instant) -> Result<()> {
    use prdit::bench::{Bench, Iterations};
    let cfg = RunConfig::load(&args.config).context("the run configuration")?;
    let selected = device::select(spec)?;
    let bench = Bench {
        device: selected.device.clone(),
        device_name: selected.name.clone(),
        iterations: Iterations { warmup: 0, timed: 0 },
        since: started,
    };
    let [step, pc] = prdit::bench::warmup(&bench, &cfg)?;
    println!(
        "{}: {:.1} s (compiles and tunes the kernels of a training step)",
        step.case,
        step.ms_first / 1e3
    );
    println!("{}: {:.1} s", pc.case, pc.ms_first / 1e3);
    match (device::kernel_cache(), selected.name.starts_with("cuda")) {
        (Some(dir), true) => println!("kernels and autotune decisions cached in {}", dir.display()),
        (Some(dir), false) => println!("autotune decisions cached in {}", dir.display()),
        _ => println!("(no persistent kernel cache)"),
    }
    if let Some(out) = &args.export_bundle {
        let n = device::export_kernel_bundle(out, &selected.name)?;
        println!("{n} entries written to the kernel bundle {}", out.display());
    }
    Ok(())
}

fn prepare_cmd(args: &PrepareArgs, quiet: bool) -> Result<()> {
    use prdit::prepare::{self, PrepareOptions};
    let opts = PrepareOptions {
        recipe: args.recipe,
        size: args.size,
        window: args.window.map(|w| [w.min_hu, w.max_hu]),
        spacing_mm: args.spacing,
        fov: args.fov,
        pad_short: args.pad_short,
        orientation: args.orientation,
    };
    let started = std::time::Instant::now();
    let (inputs, failed) = prepare::discover(&args.input);
    let count = |f: fn(&prepare::Input) -> bool| inputs.iter().filter(|i| f(i)).count();
    eprintln!(
        "{} volume(s) to prepare ({} DICOM series, {} NIfTI files, {} .npz arrays)",
        inputs.len(),
        count(|i| matches!(i, prepare::Input::Dicom { .. })),
        count(|i| matches!(i, prepare::Input::Nifti(_))),
        count(|i| matches!(i, prepare::Input::Npz(_)))
    );
    let b = progress::bar(inputs.len() as u64, "volumes", progress::enabled(quiet));
    let progress = |done: usize, _total: usize| {
        if let Some(b) = &b {
            b.set_position(done as u64);
        }
    };
    let manifest = prepare::run(&inputs, failed, &args.out, &opts, args.jobs, &progress).map_err(|e| {
        with_flags(e, &[("size", "--size"), ("window", "--window"), ("spacing", "--spacing")])
    })?;
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
        "{} volume(s) of {}³, values in {}, orientation {}, in {} ({:.1} s); dataset.json written",
        manifest.volumes.len(),
        args.size,
        opts.value_range().describe(),
        manifest.orientation.unwrap_or_default().code(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    let failures = manifest.failures();
    if !failures.is_empty() {
        for f in failures {
            eprintln!("could not prepare {}: {}", f.source.display(), f.reason);
        }
        if !args.skip_bad {
            bail!(
                "{} input(s) could not be prepared (listed above and in {}); the others were written — \
                 fix or remove the failing inputs, or pass --skip-bad to accept the set without them",
                failures.len(),
                args.out.join("dataset.json").display()
            );
        }
    }
    Ok(())
}

fn phantom_cmd(args: &PhantomArgs) -> Result<()> {
    phantom::write_dataset(&args.out, args.num, args.size, args.seed)
        .map_err(|e| with_flags(e, &[("num", "--num"), ("size", "--size")]))?;
    println!(
        "{} phantom volumes of {}³ in {} (HU copies in {})",
        args.num,
        args.size,
        args.out.display(),
        args.out.join("hu").display()
    );
    Ok(())
}

fn demo_cmd(spec: DeviceSpec, args: &DemoArgs, quiet: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let opts = prdit::demo::DemoOptions {
        out: args.out.clone(),
        steps: args.steps,
        device: device_for(spec)?,
        progress: progress::enabled(quiet),
        stop: prdit::interrupt::stop_flag(),
        process: args.process,
    };
    let outcome = prdit::demo::run(&opts, &mut |line| println!("{line}"))
        .map_err(|e| with_flags(e, &[("steps", "--steps")]))?;
    for run in &outcome.runs {
        print_summary(run);
    }
    if outcome.interrupted() {
        println!("demo interrupted; run it again to continue");
        return Ok(());
    }
    println!("\ndemo done in {:.0} s. Outputs:", started.elapsed().as_secs_f64());
    println!("  data       {}  (HU copies in data/hu, manifest data/dataset.json)", outcome.data.display());
    for run in &outcome.runs {
        let last = prdit::demo::latest_preview(&run.run_dir);
        println!("  run        {}  (train.log, metrics.jsonl, checkpoints/)", run.run_dir.display());
        println!("  curves     {}", run.run_dir.join("progress.png").display());
        if let Some(p) = last {
            let at = prdit::train::evaluate::val_time(args.process);
            println!("  preview    {}  (rows: data, noisy at {at}, reconstruction)", p.display());
        }
    }
    if let Some((samples, _)) = &outcome.samples {
        println!("  samples    {}  (xs/*.nii.gz, previews/*.png, manifest.json)", samples.display());
    }
    if let Some((real, fake)) = &outcome.anatomy {
        println!("\nwhat the volumes are made of (HU classes):");
        println!("  training phantoms  {real}");
        println!("  generated volumes  {fake}");
    }
    Ok(())
}

fn inspect_cmd(spec: DeviceSpec, args: InspectArgs) -> Result<()> {
    let opts = InspectOptions {
        model: args.model,
        size: args.size.unwrap_or(128),
        weights: args.weights,
        entry: args.entry,
        batch: args.batch,
    };
    let select = || -> prdit::Result<device::Selected> {
        let selected = device::select(spec)?;
        if let Some(notice) = &selected.notice {
            eprintln!("note: {notice}");
        }
        Ok(selected)
    };
    let inspection = inspect::inspect(&opts, select).map_err(|e| {
        with_flags(e, &[("model", "--model"), ("size", "--size"), ("entry", "--entry"), ("batch", "--batch")])
    })?;
    if args.json {
        println!("{}", prdit::fsio::json_text(&inspection)?);
    } else {
        print!("{inspection}");
    }
    Ok(())
}
