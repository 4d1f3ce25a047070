//! `prdit inspect`: what a configuration costs before anything runs — parameters per part
//! and stage, the token grid, and an activation-memory estimate per volume.
//!
//! The memory figures are estimates by counting f32 values per token (documented on
//! [`ActivationEstimate`]); weights, optimizer state and allocator slack come on top.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use serde::Serialize;

use crate::device::Selected;
use crate::error::{Error, Result};
use crate::model::highres::SrConfig;
use crate::model::{ParamCounts, Prdit, PrditConfig};
use crate::resolve::{ModelRef, Pick, Weights, model_config, resolve_model};
use crate::weights::{self, Entry, StateDict, checkpoint};

/// Activation memory per volume, in bytes (f32), by counting values per token.
///
/// - `sampling`: peak of one no-grad forward: the patch tokens plus the largest set of
///   temporaries alive at once (local denoiser ≈ 5·D per token; DiT ≈ D + O + 9·H).
/// - `training`: values autodiff keeps for the backward pass: stage 1 ≈ 20·D + 2·O per token;
///   stage 2 (stage 1 frozen, outside the graph) ≈ D + 13·H + 2·O + L·20·H per token.
/// - `attention_scores`: one attention layer's h·N² score matrix per volume, which the
///   sampling forward computes block by block (the backend's attention) and training never
///   keeps (`model::attention`: the backward recomputes it in blocks of query rows).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ActivationEstimate {
    pub sampling: u64,
    pub training_stage1: u64,
    pub training_stage2: u64,
    pub attention_scores: u64,
}

/// Measured training peak per estimated activation byte (see [`TrainingPeak`]): stage 2.
pub const PEAK_FACTOR: f64 = 1.094;

/// The same for stage 1, fitted on its own points (`docs/memory.md`).
pub const STAGE1_PEAK_FACTOR: f64 = 1.118;

/// The same for the refinement (phase 3a), fitted on its own points (`docs/memory.md`).
pub const REFINE_PEAK_FACTOR: f64 = 1.130;

/// The predicted peak memory of one training step at a batch size: the weights of the model
/// and of its EMA copy, the gradients and both AdamW moments of what trains (float32), and a
/// measured factor times the batch's activation estimate ([`ActivationEstimate`]): for stage 2
/// [`PEAK_FACTOR`], a least-squares fit to the peak resident memory of stage-2 steps of
/// PRDiT-B/12/4 on the CPU at 64³, 96³ and 128³ and batches 1 to 8 (`scripts/train-memory.sh`,
/// `docs/memory.md`): every measured point within 10 %; for stage 1 [`STAGE1_PEAK_FACTOR`],
/// fitted the same way on stage-1 steps. A GPU adds its runtime's own reserve.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TrainingPeak {
    pub batch: usize,
    pub stage1: u64,
    /// Absent for a stage-1 model.
    pub stage2: Option<u64>,
    /// Query rows per block of the attention backward at this batch.
    pub attention_block_rows: usize,
    /// Bytes of one `[batch, heads, rows, N]` block of the attention backward.
    pub attention_block_bytes: u64,
    /// The refinement of this (stage-2) model to twice its size with the `[highres]` defaults,
    /// phase 3a (base frozen); absent for a stage-1 model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refinement: Option<RefinementPeak>,
}

/// The predicted peak of a refinement training step ([`refinement_peak`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RefinementPeak {
    pub target_size: usize,
    /// Parameters the refinement trains.
    pub trained: usize,
    pub peak: u64,
}

/// The predicted peak memory of a training step of the refinement `sr` in phase 3a (the base
/// frozen), at `batch` volumes: the base's weights once (the EMA copy shares frozen tensors),
/// the refinement's weights, EMA, gradients and two AdamW moments, and
/// [`REFINE_PEAK_FACTOR`] times the activation estimate of its local denoiser at the target
/// size, counted as for stage 1 (20·D + 2·O values per token). The base's no-grad forward at
/// half the size is transient and inside the fit.
pub fn refinement_peak(sr: &SrConfig, batch: usize) -> u64 {
    let per_volume = stage1_training_bytes(&sr.local());
    let state = 4 * (sr.base.param_counts().total() as u64 + 5 * sr.sr_params() as u64);
    state + (REFINE_PEAK_FACTOR * (batch as u64 * per_volume) as f64) as u64
}

/// Values autodiff keeps per volume for a stage-1 step of `cfg` (its local denoiser):
/// 20·D + 2·O float32 values per token ([`ActivationEstimate`]).
fn stage1_training_bytes(cfg: &PrditConfig) -> u64 {
    4 * cfg.num_tokens() as u64 * (20 * cfg.token_dim() + 2 * cfg.out_dim()) as u64
}

/// Everything `prdit inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub config: PrditConfig,
    pub grid: usize,
    pub tokens: usize,
    pub token_dim: usize,
    pub out_dim: usize,
    pub params: ParamCounts,
    pub total_params: usize,
    pub memory_per_volume: ActivationEstimate,
    pub training_peak: TrainingPeak,
}

/// Builds the report of `cfg`, the training peak at `batch` volumes per step.
pub fn report(cfg: &PrditConfig, batch: usize) -> Report {
    let n = cfg.num_tokens() as u64;
    let (d, o, h, l) =
        (cfg.token_dim() as u64, cfg.out_dim() as u64, cfg.hidden_size as u64, cfg.depth as u64);
    let bytes = |floats_per_token: u64| floats_per_token * n * 4;
    let fine_peak = if l > 0 { d + o + 9 * h } else { 0 };
    let attention_scores = if l > 0 { cfg.num_heads as u64 * n * n * 4 } else { 0 };
    let memory_per_volume = ActivationEstimate {
        sampling: bytes((5 * d).max(fine_peak) + o),
        training_stage1: stage1_training_bytes(cfg),
        training_stage2: if l > 0 { bytes(d + 13 * h + 2 * o + l * 20 * h) } else { 0 },
        attention_scores,
    };
    let p = cfg.param_counts();
    let rows = crate::model::attention::block_rows(batch, cfg.num_heads, n as usize);
    let block = crate::model::attention::block_bytes(batch, cfg.num_heads, n as usize, rows);
    // Weights of the model and of its EMA copy, and gradients and two moments of what trains.
    let state = |total: usize, trained: usize| 4 * (2 * total as u64 + 3 * trained as u64);
    let peak = |total: usize, trained: usize, per_volume: u64, factor: f64| {
        state(total, trained) + (factor * (batch as u64 * per_volume) as f64) as u64
    };
    let refinement = (l > 0)
        .then(|| SrConfig::with_defaults(cfg.clone(), 2 * cfg.input_size).ok())
        .flatten()
        .map(|sr| RefinementPeak {
            target_size: sr.target_size,
            trained: sr.sr_params(),
            peak: refinement_peak(&sr, batch),
        });
    let training_peak = TrainingPeak {
        batch,
        stage1: peak(p.stage1, p.stage1, memory_per_volume.training_stage1, STAGE1_PEAK_FACTOR),
        // The attention backward's blocks are part of what the fit measured.
        stage2: (l > 0)
            .then(|| peak(p.total(), p.stage2_trainable, memory_per_volume.training_stage2, PEAK_FACTOR)),
        attention_block_rows: rows,
        attention_block_bytes: block,
        refinement,
    };
    Report {
        name: cfg.name(),
        config: cfg.clone(),
        grid: cfg.grid(),
        tokens: cfg.num_tokens(),
        token_dim: cfg.token_dim(),
        out_dim: cfg.out_dim(),
        params: cfg.param_counts(),
        total_params: cfg.param_counts().total(),
        memory_per_volume,
        training_peak,
    }
}

/// `12.34 GiB`.
pub(crate) fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        let p = &self.params;
        writeln!(f, "{} at {}³ ({})", self.name, c.input_size, c.process().describe())?;
        writeln!(
            f,
            "  patches      {}³ windows, stride {}, reflect padding {}; token width D = {}",
            c.patch_size, c.stride, c.padding, self.token_dim
        )?;
        writeln!(
            f,
            "  token grid   {}³ = {} tokens; {} outputs per token",
            self.grid, self.tokens, self.out_dim
        )?;
        if c.depth > 0 {
            writeln!(
                f,
                "  transformer  hidden {}, {} heads × {}, depth {}, MLP {}",
                c.hidden_size,
                c.num_heads,
                c.hidden_size / c.num_heads,
                c.depth,
                c.mlp_hidden()
            )?;
        }
        writeln!(f, "parameters")?;
        writeln!(f, "  timestep embedder   {:>13}", count(p.timestep_embedder))?;
        writeln!(f, "  local denoiser      {:>13}", count(p.coarse))?;
        writeln!(f, "  global DiT          {:>13}", count(p.fine))?;
        writeln!(f, "  total               {:>13}", count(self.total_params))?;
        writeln!(f, "  stage 1 trains      {:>13}  (trunk, coarse head, local denoiser)", count(p.stage1))?;
        if c.depth > 0 {
            writeln!(
                f,
                "  stage 2 trains      {:>13}  (global DiT, fine head; stage 1 frozen)",
                count(p.stage2_trainable)
            )?;
        }
        let m = &self.memory_per_volume;
        writeln!(f, "activation memory per volume (f32 estimate, weights and optimizer not included)")?;
        writeln!(f, "  sampling forward    {:>10}", gib(m.sampling))?;
        writeln!(f, "  stage 1 training    {:>10}", gib(m.training_stage1))?;
        if c.depth > 0 {
            writeln!(f, "  stage 2 training    {:>10}", gib(m.training_stage2))?;
            writeln!(
                f,
                "  attention scores    {:>10}  per layer, never kept: the backward recomputes them",
                gib(m.attention_scores)
            )?;
        }
        let t = &self.training_peak;
        writeln!(
            f,
            "training step at batch {} (predicted peak: weights, EMA, gradients, AdamW, activations)",
            t.batch
        )?;
        writeln!(f, "  stage 1             {:>10}", gib(t.stage1))?;
        if let Some(s2) = t.stage2 {
            writeln!(
                f,
                "  stage 2             {:>10}  (attention backward in blocks of {} query rows, {} each)",
                gib(s2),
                t.attention_block_rows,
                gib(t.attention_block_bytes)
            )?;
        }
        if let Some(r) = &t.refinement {
            writeln!(
                f,
                "  stage 3 to {}³     {:>10}  (refinement, [highres] defaults, {} trained; base frozen)",
                r.target_size,
                gib(r.peak),
                count(r.trained)
            )?;
        }
        Ok(())
    }
}

/// A weights file loaded strictly into the model.
#[derive(Debug, Clone, Serialize)]
pub struct Loaded {
    pub file: PathBuf,
    /// `prdit checkpoint`, or the tensor count (and entry) of an official file.
    pub contents: String,
    pub parameters: usize,
    /// The device it was loaded on.
    pub device: String,
    pub seconds: f64,
}

/// Everything `prdit inspect` reports: the sizes and, with a weights file, what loading it
/// found.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    #[serde(flatten)]
    pub report: Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Loaded>,
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.report)?;
        if let Some(l) = &self.weights {
            writeln!(
                f,
                "weights\n  {} loaded strictly ({}; {} parameters) on {} in {:.2} s",
                l.file.display(),
                l.contents,
                l.parameters,
                l.device,
                l.seconds
            )?;
        }
        Ok(())
    }
}

/// What to inspect.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// An official name or a TOML/JSON file of the model fields (see
    /// [`resolve::model_config`](crate::resolve::model_config)); optional when `weights` is a
    /// prdit model file, which embeds its configuration.
    pub model: Option<String>,
    /// The volume edge for an official name.
    pub size: usize,
    /// Weights to load into the model, strictly (any model reference, see [`crate::resolve`]).
    pub weights: Option<PathBuf>,
    /// Which weights of an official full checkpoint.
    pub entry: Entry,
    /// Volumes per training step, for the predicted training peak.
    pub batch: usize,
}

/// The report of a model and, with `opts.weights`, loads them strictly onto the device that
/// `device` selects (called only then).
pub fn inspect(opts: &InspectOptions, device: impl FnOnce() -> Result<Selected>) -> Result<Inspection> {
    let resolved = opts.weights.as_ref().map(|w| resolve_model(w, Weights::Ema, Pick::Newest)).transpose()?;
    if let Some(r) = &resolved {
        r.check_entry(opts.entry)?;
    }
    let embedded = match &resolved {
        Some(r) if r.is_prdit() => Some(checkpoint::read_config::<Prdit>(r.file())?),
        _ => None,
    };
    let cfg = match (&opts.model, embedded) {
        // An official file's process is in its heads' shapes (one output channel: flow
        // matching); a name or model file that does not say it is given that one.
        (Some(m), _) => {
            let cfg = model_config(m, opts.size)?;
            let heads = match &resolved {
                Some(r @ ModelRef::Official { .. }) => {
                    weights::heads_process(&StateDict::open(r.file(), opts.entry)?)
                }
                _ => None,
            };
            match heads {
                Some(p) => PrditConfig { out_channels: p.out_channels(), ..cfg },
                None => cfg,
            }
        }
        (None, Some(cfg)) => cfg,
        (None, None) => {
            return Err(Error::invalid(
                "model",
                "the model is needed (an official name such as PRDiT-B/12/4, or a TOML file): only prdit \
                 model files embed their configuration",
            ));
        }
    };
    if opts.batch == 0 {
        return Err(Error::invalid("batch", "a training step needs at least one volume"));
    }
    let report = report(&cfg, opts.batch);
    let Some(resolved) = resolved else { return Ok(Inspection { report, weights: None }) };
    let selected = device()?;
    let started = Instant::now();
    let file = resolved.file();
    let (model, contents) = match &resolved {
        ModelRef::Official { .. } => {
            let sd = StateDict::open(file, opts.entry)?;
            let entry = sd.entry().map(|e| format!(", entry `{e}`")).unwrap_or_default();
            let contents = format!("{} tensors{entry}", sd.len());
            (weights::prdit_from_state_dict(&cfg, &sd, &selected.device)?, contents)
        }
        _ => (
            checkpoint::load_expecting::<Prdit>(file, &cfg, &selected.device)?,
            "prdit checkpoint".to_string(),
        ),
    };
    let loaded = Loaded {
        file: file.to_path_buf(),
        contents,
        parameters: model.num_params(),
        device: selected.name,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(Inspection { report, weights: Some(loaded) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_numbers() {
        let cfg = PrditConfig::from_name("PRDiT-B/12/4", 128).unwrap();
        let r = report(&cfg, 16);
        assert_eq!((r.grid, r.tokens, r.total_params), (16, 4096, 93_228_992));
        assert_eq!(r.params.stage2_trainable, 54_072_832);
        // B-size at 128³: 12 heads · 4096² · 4 B = 805 MB of scores per layer (spec §15).
        assert_eq!(r.memory_per_volume.attention_scores, 12 * 4096 * 4096 * 4);
        let text = r.to_string();
        assert!(text.contains("93,228,992") && text.contains("54,072,832"), "{text}");
        // The paper's stage 2 at batch 16: predicted 21.4 GiB from the fit (docs/memory.md), of
        // which 1.30 GiB are weights, EMA, gradients and AdamW moments (the official code: 19.1).
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let s2 = gib(r.training_peak.stage2.unwrap());
        assert!((21.0..22.0).contains(&s2), "{s2}");
        assert_eq!(r.training_peak.attention_block_rows, 80);
        // Stage 1 and the paper's refinement to 256³ (its batch 8).
        assert!((10.5..11.0).contains(&gib(r.training_peak.stage1)), "{text}");
        let r8 = report(&cfg, 8).training_peak.refinement.unwrap();
        assert_eq!((r8.target_size, r8.trained), (256, 39_156_160));
        assert!((41.0..42.0).contains(&gib(r8.peak)), "{}", gib(r8.peak));
    }

    /// The predictions against every point measured for the fits (`scripts/train-memory.sh`,
    /// peak resident memory in GiB on the CPU, `docs/memory.md`): within 13 % (the largest miss,
    /// −12.7 %, is stage 1 at 64³ and batch 8).
    #[test]
    fn predictions_match_the_measured_points() {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let b = |size: usize| PrditConfig::from_name("PRDiT-B/12/4", size).unwrap();
        // (what, size, batch, measured GiB); the refinement's size is its target.
        let points = [
            ("stage 1", 64, 4, 1.130),
            ("stage 1", 64, 8, 1.551),
            ("stage 1", 96, 2, 1.199),
            ("stage 1", 128, 1, 1.287),
            ("stage 1", 128, 2, 1.958),
            ("stage 1", 128, 4, 3.273),
            ("stage 1", 160, 2, 3.212),
            ("stage 2", 64, 4, 1.824),
            ("stage 2", 64, 8, 2.491),
            ("stage 2", 96, 2, 2.555),
            ("stage 2", 96, 4, 3.576),
            ("stage 2", 128, 1, 2.749),
            ("stage 2", 128, 2, 3.851),
            ("stage 2", 128, 4, 6.349),
            ("refinement", 64, 2, 1.291),
            ("refinement", 64, 4, 1.361),
            ("refinement", 96, 1, 1.249),
            ("refinement", 96, 2, 1.498),
            ("refinement", 128, 1, 1.580),
            ("refinement", 128, 2, 2.236),
            ("refinement", 128, 4, 3.511),
            ("refinement", 160, 1, 2.207),
            ("refinement", 160, 2, 3.556),
        ];
        for (what, size, batch, measured) in points {
            let peak = match what {
                "stage 1" => report(&b(size), batch).training_peak.stage1,
                "stage 2" => report(&b(size), batch).training_peak.stage2.unwrap(),
                _ => refinement_peak(&SrConfig::with_defaults(b(size / 2), size).unwrap(), batch),
            };
            let p = gib(peak);
            assert!((p / measured - 1.0).abs() < 0.13, "{what} {size}³ b{batch}: {p:.3} vs {measured}");
        }
    }
}
