//! Command-line arguments and dispatch. Nothing past this file sees clap types.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use prdit::PrditConfig;
use prdit::device::{self, DeviceSpec};
use prdit::inspect;
use prdit::weights::{self, Entry, FileKind};

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

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse().map_err(|e: prdit::Error| e.to_string())
}

#[derive(Subcommand)]
pub enum Command {
    /// Sizes of a model: parameters per stage, token grid, activation memory per volume;
    /// with --weights, also load a weights file strictly and report what it holds.
    Inspect(InspectArgs),
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
    match cli.command {
        Command::Inspect(args) => inspect_cmd(cli.device, args),
    }
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
            Some(weights::checkpoint::read_model_config(w)?)
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
                weights::checkpoint::load_model_expecting(path, &cfg, &selected.device)?,
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
