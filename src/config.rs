//! Run configuration: a strict TOML file (unknown keys and wrong types are errors that name
//! the key), every default in one place ([`Default`] impls below), validated once after
//! loading. The fully resolved configuration is written into the run directory before step 0
//! and embedded in every checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::PrditConfig;
use crate::model::config::{DEFAULT_FREQUENCY_SIZE, DEFAULT_IN_CHANNELS, DEFAULT_MLP_RATIO};

/// A whole run file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelSection,
    pub data: DataSection,
    #[serde(default)]
    pub train: TrainSection,
    /// Stage 2 only: where stage 1 comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalSection>,
    /// Stage 3 only: the refinement and the model it refines (`[model]` is that base model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highres: Option<HighresSection>,
    /// The generative process (absent: PRDiT's image-and-noise diffusion; written only when it
    /// is another, so that diffusion run files stay as they were).
    #[serde(default, skip_serializing_if = "DiffusionSection::is_default")]
    pub diffusion: DiffusionSection,
}

/// `[diffusion]`: which generative process the run trains (and its networks are built for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionSection {
    /// `ian` (default): the paper's image-and-noise diffusion, two output channels;
    /// `flow`: PRDiT-FM's straight-line flow matching, one velocity channel.
    #[serde(default)]
    pub process: crate::diffusion::Process,
}

impl DiffusionSection {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `[model]`: an official name plus the volume size, or explicit fields; explicit fields
/// override the named preset.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub input_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_channels: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_size: Option<usize>,
}

impl ModelSection {
    /// The network this section describes, with the output channels of `process`.
    pub fn resolve_for(&self, process: crate::diffusion::Process) -> Result<PrditConfig> {
        let base = match &self.name {
            Some(name) => Some(PrditConfig::from_name(name, self.input_size)?),
            None => None,
        };
        let need = |key: &str, v: Option<usize>, from: Option<usize>| {
            v.or(from).ok_or_else(|| {
                Error::invalid(
                    format!("model.{key}"),
                    "missing: give `name` (e.g. \"PRDiT-B/12/4\") or every field",
                )
            })
        };
        let b = base.as_ref();
        let cfg = PrditConfig {
            input_size: self.input_size,
            in_channels: self.in_channels.or(b.map(|c| c.in_channels)).unwrap_or(DEFAULT_IN_CHANNELS),
            out_channels: process.out_channels(),
            patch_size: need("patch_size", self.patch_size, b.map(|c| c.patch_size))?,
            stride: need("stride", self.stride, b.map(|c| c.stride))?,
            padding: need("padding", self.padding, b.map(|c| c.padding))?,
            hidden_size: need("hidden_size", self.hidden_size, b.map(|c| c.hidden_size))?,
            num_heads: need("num_heads", self.num_heads, b.map(|c| c.num_heads))?,
            depth: need("depth", self.depth, b.map(|c| c.depth))?,
            mlp_ratio: self.mlp_ratio.or(b.map(|c| c.mlp_ratio)).unwrap_or(DEFAULT_MLP_RATIO),
            frequency_size: self
                .frequency_size
                .or(b.map(|c| c.frequency_size))
                .unwrap_or(DEFAULT_FREQUENCY_SIZE),
        };
        cfg.validate().map_err(|e| match e {
            Error::Invalid { key, reason } => Error::Invalid { key: format!("model.{key}"), reason },
            e => e,
        })?;
        Ok(cfg)
    }

    /// The explicit form of a resolved network (what the run directory records).
    pub fn explicit(cfg: &PrditConfig, name: Option<String>) -> Self {
        ModelSection {
            name,
            input_size: cfg.input_size,
            in_channels: Some(cfg.in_channels),
            patch_size: Some(cfg.patch_size),
            stride: Some(cfg.stride),
            padding: Some(cfg.padding),
            hidden_size: Some(cfg.hidden_size),
            num_heads: Some(cfg.num_heads),
            depth: Some(cfg.depth),
            mlp_ratio: Some(cfg.mlp_ratio),
            frequency_size: Some(cfg.frequency_size),
        }
    }
}

/// How volumes are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Half precision (model-space values in [−1, 1] keep 11 significant bits, ≈ 0.5 HU).
    F16,
    /// Full precision.
    F32,
}

/// How the validation volumes are chosen when `[data] val` is not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitPolicy {
    /// The official split script's: Python's `random.Random(seed).shuffle` of the sorted files.
    #[default]
    Official,
    /// A ChaCha8 shuffle of the sorted files with the split seed (kept for runs that record it).
    Chacha,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training volumes: a folder of `.nii`/`.nii.gz` files or a list file (one path per line).
    pub train: PathBuf,
    /// Validation volumes; when absent, `val_count` volumes are held out of `train`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<PathBuf>,
    /// Held-out volumes when `val` is absent (default: 10 %, at least 1 of 2 or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_count: Option<usize>,
    /// Which shuffle picks the held-out volumes (default: the official one).
    #[serde(default)]
    pub split: SplitPolicy,
    #[serde(default = "DataSection::default_storage")]
    pub storage: Storage,
    /// Batches prepared ahead on the loader thread.
    #[serde(default = "DataSection::default_prefetch")]
    pub prefetch: usize,
}

impl DataSection {
    fn default_storage() -> Storage {
        Storage::F16
    }
    fn default_prefetch() -> usize {
        4
    }
}

/// `[train]`: the official recipe's defaults (spec §10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub total_steps: u64,
    pub batch_size: usize,
    /// Volumes per forward/backward pass when the batch does not fit the device at once:
    /// gradients of the micro-batches are summed into one step. Default: chosen at the start of
    /// a run from the predicted peak memory of a step and the device's memory
    /// (`train::micro`): the whole batch when it fits, else the fewest even passes that do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micro_batch: Option<usize>,
    pub lr: f64,
    /// Linear warm-up from 0 over this many steps (0 = constant learning rate, as official).
    pub warmup_steps: u64,
    /// Global-norm gradient clipping threshold (0 disables).
    pub grad_clip: f64,
    pub ema_decay: f64,
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub seed: u64,
    pub log_every: u64,
    pub eval_every: u64,
    pub ckpt_every: u64,
    /// Checkpoints kept besides the best one.
    pub keep_last: usize,
    /// Consecutive skipped (non-finite or huge) losses before the run stops with an error.
    pub max_bad_steps: u64,
    /// Data-parallel training over these devices (`cuda:0`, `cuda:1`, …, `all` for every CUDA
    /// GPU, `cpu` repeated for host workers): the batch is split evenly over them, the first is
    /// the model's (rank 0: checkpoints, EMA, logs, validation). Empty: `--device` alone. Not
    /// part of a run's identity: a run resumes on another device count.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            total_steps: 100_000,
            batch_size: 64,
            micro_batch: None,
            lr: 1e-4,
            warmup_steps: 0,
            grad_clip: 1.0,
            ema_decay: 0.9999,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            seed: 42,
            log_every: 400,
            eval_every: 1000,
            ckpt_every: 1000,
            keep_last: 3,
            max_bad_steps: 100,
            devices: Vec::new(),
        }
    }
}

/// `[global]`: stage 2's source of stage-1 weights and its re-initialisation gain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalSection {
    /// A stage-1 run directory, a prdit model file, or an official `.pt`/`.pth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<PathBuf>,
    /// Xavier gain of the stage-2 re-initialisation (official: 0.1).
    #[serde(default = "GlobalSection::default_gain")]
    pub init_gain: f64,
}

impl GlobalSection {
    fn default_gain() -> f64 {
        0.1
    }
}

impl Default for GlobalSection {
    fn default() -> Self {
        GlobalSection { local: None, init_gain: 0.1 }
    }
}

/// `[highres]`: the refinement stage (spec §9.2). Its `[model]` is the lower-resolution
/// base; the data are volumes at `target_size`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HighresSection {
    /// Phase 3a: the base model — a stage-2 run directory, a prdit model file or an official
    /// `.pt`/`.pth` (raw weights), loaded strictly and frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<PathBuf>,
    /// Phase 3b: start from a whole refinement model instead (a stage-3 run: its best
    /// checkpoint; or a model file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Edge of the generated volumes (128 → 256 in the paper, or 64 → 128).
    pub target_size: usize,
    #[serde(default = "HighresSection::default_hidden")]
    pub sr_hidden_size: usize,
    #[serde(default = "HighresSection::default_patch")]
    pub sr_patch_size: usize,
    #[serde(default = "HighresSection::default_stride")]
    pub sr_stride: usize,
    #[serde(default = "HighresSection::default_padding")]
    pub sr_padding: usize,
    /// Phase 3b: train the base's transformer too (its stage 1 stays frozen), at `train.lr`.
    #[serde(default)]
    pub finetune_base: bool,
}

impl HighresSection {
    /// A section refining to `target_size` with every other value at its default.
    pub fn defaults(target_size: usize) -> Self {
        HighresSection {
            base: None,
            init: None,
            target_size,
            sr_hidden_size: Self::default_hidden(),
            sr_patch_size: Self::default_patch(),
            sr_stride: Self::default_stride(),
            sr_padding: Self::default_padding(),
            finetune_base: false,
        }
    }

    fn default_hidden() -> usize {
        768
    }
    fn default_patch() -> usize {
        12
    }
    fn default_stride() -> usize {
        8
    }
    fn default_padding() -> usize {
        2
    }
}

impl RunConfig {
    /// Reads and validates a run file; relative data paths are taken relative to its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg = Self::parse(&text).map_err(|e| match e {
            Error::Invalid { key, reason } => {
                Error::Invalid { key: format!("{} → {key}", path.display()), reason }
            }
            e => e,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(&absolute(base)?);
        Ok(cfg)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: RunConfig = toml::from_str(text).map_err(|e| Error::invalid("toml", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes relative paths absolute against `base` (itself made absolute against the working
    /// directory), without `.` and `..` — so that a run folder, which records its configuration
    /// and split resolved, means the same files from any working directory and when moved.
    pub fn resolve_paths(&mut self, base: &Path) {
        let base = absolute(base).unwrap_or_else(|_| base.to_path_buf());
        let fix = |p: &mut PathBuf| {
            *p = normalize(&base.join(&*p));
        };
        fix(&mut self.data.train);
        if let Some(v) = self.data.val.as_mut() {
            fix(v);
        }
        if let Some(l) = self.global.as_mut().and_then(|g| g.local.as_mut()) {
            fix(l);
        }
        if let Some(h) = self.highres.as_mut() {
            for p in [h.base.as_mut(), h.init.as_mut()].into_iter().flatten() {
                fix(p);
            }
        }
    }

    /// The network of the run.
    pub fn model_config(&self) -> Result<PrditConfig> {
        self.model.resolve_for(self.diffusion.process)
    }

    /// The refinement network of a `[highres]` run (its base is `[model]`), validated.
    pub fn highres_config(&self) -> Result<crate::model::highres::SrConfig> {
        let h = self.highres.as_ref().ok_or_else(|| Error::invalid("highres", "the section is missing"))?;
        crate::model::highres::SrConfig::from_section(self.model_config()?, h)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<()> {
        self.model_config()?;
        let t = &self.train;
        let positive = [
            ("train.total_steps", t.total_steps),
            ("train.batch_size", t.batch_size as u64),
            ("train.log_every", t.log_every),
            ("train.eval_every", t.eval_every),
            ("train.ckpt_every", t.ckpt_every),
            ("train.keep_last", t.keep_last as u64),
            ("train.max_bad_steps", t.max_bad_steps),
            ("data.prefetch", self.data.prefetch as u64),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::invalid(key, "must be at least 1"));
            }
        }
        let finite_pos = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(key, format!("must be positive, is {v}")))
            }
        };
        if let Some(m) = t.micro_batch
            && (m == 0 || m > t.batch_size)
        {
            return Err(Error::invalid(
                "train.micro_batch",
                format!("must be in 1..={} (the batch size)", t.batch_size),
            ));
        }
        let workers = t.devices.len().max(1);
        if t.devices.iter().any(|d| d == "all") {
            if t.devices.len() > 1 {
                return Err(Error::invalid("train.devices", "`all` stands alone"));
            }
        } else if !t.batch_size.is_multiple_of(workers) {
            return Err(Error::invalid(
                "train.batch_size",
                format!("{} does not split evenly over {workers} devices", t.batch_size),
            ));
        } else if let Some(m) = t.micro_batch
            && m > t.batch_size / workers
        {
            return Err(Error::invalid(
                "train.micro_batch",
                format!("{m} is more than a device's share of the batch ({})", t.batch_size / workers),
            ));
        }
        finite_pos("train.lr", t.lr)?;
        finite_pos("train.eps", t.eps)?;
        if !(0.0..1.0).contains(&t.ema_decay) {
            return Err(Error::invalid("train.ema_decay", format!("must be in [0, 1), is {}", t.ema_decay)));
        }
        if t.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(Error::invalid("train.betas", format!("must both be in [0, 1), are {:?}", t.betas)));
        }
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return Err(Error::invalid("train.grad_clip", "must be ≥ 0 (0 disables clipping)"));
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return Err(Error::invalid("train.weight_decay", "must be ≥ 0"));
        }
        if let Some(g) = &self.global
            && !(g.init_gain > 0.0 && g.init_gain.is_finite())
        {
            return Err(Error::invalid("global.init_gain", "must be positive"));
        }
        if let Some(h) = &self.highres {
            self.highres_config()?;
            if h.base.is_none() && h.init.is_none() {
                return Err(Error::invalid(
                    "highres.base",
                    "give the model to refine (base) or a refinement to continue (init)",
                ));
            }
        }
        Ok(())
    }

    /// The resolved form (explicit model fields) as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a run configuration serialises")
    }

    /// The same run with the model written out field by field.
    pub fn resolved(&self) -> Result<Self> {
        let mut out = self.clone();
        out.model = ModelSection::explicit(&self.model_config()?, self.model.name.clone());
        Ok(out)
    }

    /// Keys whose values differ from `other`, ignoring those a resumed run may change
    /// (length and cadences).
    pub fn incompatible_keys(&self, other: &RunConfig) -> Vec<String> {
        let mut a = self.clone();
        let mut b = other.clone();
        for c in [&mut a, &mut b] {
            c.train.total_steps = 0;
            c.train.log_every = 0;
            c.train.eval_every = 0;
            c.train.ckpt_every = 0;
            c.train.keep_last = 0;
            c.train.max_bad_steps = 0;
            c.data.prefetch = 0;
            c.train.micro_batch = None;
            c.train.devices = Vec::new();
        }
        let (Ok(va), Ok(vb)) = (toml::Value::try_from(&a), toml::Value::try_from(&b)) else {
            return vec!["<unserialisable>".into()];
        };
        let mut out = Vec::new();
        diff_values("", &va, &vb, &mut out);
        out
    }
}

/// `path` against the working directory when relative, lexically normalised.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    // The parent of a bare file name (`my.toml`) is the empty path: the working directory.
    let path = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    let abs = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    Ok(normalize(&abs))
}

/// Removes `.` and resolves `..` lexically (`/a/b/../c` → `/a/c`), as a user reads the path.
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn diff_values(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(ta), toml::Value::Table(tb)) => {
            let keys: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
            for k in keys {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match (ta.get(k), tb.get(k)) {
                    (Some(x), Some(y)) => diff_values(&key, x, y, out),
                    _ => out.push(key),
                }
            }
        }
        _ if a != b => out.push(format!("{prefix} ({a} vs {b})")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[model]\nname = \"PRDiT-B/12/0\"\ninput_size = 128\n[data]\ntrain = \"d\"\n";

    #[test]
    fn defaults_and_presets() {
        let c = RunConfig::parse(MIN).unwrap();
        assert_eq!(c.train, TrainSection::default());
        assert_eq!(c.model_config().unwrap().param_counts().total(), 39_156_160);
        assert_eq!(c.data.storage, Storage::F16);
    }

    #[test]
    fn typos_and_bad_values_name_the_key() {
        let e = RunConfig::parse(&format!("{MIN}[train]\nbatch_szie = 4\n")).unwrap_err().to_string();
        assert!(e.contains("batch_szie"), "{e}");
        let e = RunConfig::parse(&format!("{MIN}[train]\nlr = \"fast\"\n")).unwrap_err().to_string();
        assert!(e.contains("lr"), "{e}");
        let e = RunConfig::parse(&format!("{MIN}[train]\nema_decay = 1.5\n")).unwrap_err().to_string();
        assert!(e.contains("train.ema_decay"), "{e}");
        let e =
            RunConfig::parse("[model]\ninput_size = 16\n[data]\ntrain = \"d\"\n").unwrap_err().to_string();
        assert!(e.contains("model.patch_size"), "{e}");
        let e = RunConfig::parse(&MIN.replace("B/12/0", "L/12/4")).unwrap_err().to_string();
        assert!(e.contains("divisible by 6"), "{e}");
    }

    #[test]
    fn paths_become_absolute_and_normal() {
        let mut c = RunConfig::parse("[model]\nname = \"PRDiT-B/12/0\"\ninput_size = 128\n[data]\ntrain = \"../data/x\"\n[global]\nlocal = \"/abs/./run\"\n").unwrap();
        c.resolve_paths(Path::new("/work/configs"));
        assert_eq!(c.data.train, Path::new("/work/data/x"));
        assert_eq!(c.global.unwrap().local.unwrap(), Path::new("/abs/run"));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(absolute(Path::new("a/../b")).unwrap(), cwd.join("b"));
        // `my.toml` in the working directory: its folder is the empty path.
        assert_eq!(absolute(Path::new("my.toml").parent().unwrap()).unwrap(), cwd);
    }

    #[test]
    fn resolved_form_round_trips_and_diffs() {
        let c = RunConfig::parse(MIN).unwrap().resolved().unwrap();
        let back = RunConfig::parse(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        let mut d = c.clone();
        d.train.total_steps = 5;
        assert!(c.incompatible_keys(&d).is_empty());
        d.train.lr = 3e-4;
        d.model.depth = Some(4);
        let keys = c.incompatible_keys(&d);
        assert!(
            keys.iter().any(|k| k.starts_with("train.lr"))
                && keys.iter().any(|k| k.starts_with("model.depth"))
        );
    }
}

/// A file of the repository, for unit tests: found at run time from `CARGO_MANIFEST_DIR`,
/// which cargo sets in the test process's environment (not the compile-time path, which a test
/// binary reused from another checkout's build would carry).
#[cfg(test)]
pub(crate) fn repo_file(rel: &str) -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo test");
    PathBuf::from(root).join(rel)
}

#[cfg(test)]
mod shipped {
    use super::*;

    #[test]
    fn shipped_configs_are_valid() {
        let dir = repo_file("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if name.ends_with(".toml") && name != "tiny-model.toml" {
                let cfg = RunConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
                let depth = cfg.model_config().unwrap().depth;
                assert_eq!(name.contains("local"), depth == 0, "{name}");
                assert_eq!(name.contains("global"), cfg.global.is_some(), "{name}");
                assert_eq!(name.contains("highres"), cfg.highres.is_some(), "{name}");
                let flow = cfg.diffusion.process == crate::diffusion::Process::Flow;
                assert_eq!(name.ends_with("-flow.toml"), flow, "{name}");
                n += 1;
            }
        }
        assert_eq!(n, 10);
        // The flow presets are the diffusion ones but for the process (PRDiT-FM keeps the recipe)
        // and their stage 1's run folder.
        for stage in ["local", "global"] {
            let ian = RunConfig::load(&dir.join(format!("lidc-{stage}.toml"))).unwrap();
            let mut flow = RunConfig::load(&dir.join(format!("lidc-{stage}-flow.toml"))).unwrap();
            assert_eq!(flow.model_config().unwrap().out_channels, 1);
            flow.diffusion = ian.diffusion;
            if let (Some(f), Some(i)) = (flow.global.as_mut(), ian.global.as_ref()) {
                f.local = i.local.clone();
            }
            assert_eq!(flow, ian, "lidc-{stage}-flow.toml");
        }
        let lidc = RunConfig::load(&dir.join("lidc-global.toml")).unwrap();
        assert_eq!((lidc.train.lr, lidc.train.batch_size, lidc.train.total_steps), (8e-5, 64, 130_000));
        assert_eq!(lidc.model_config().unwrap().param_counts().stage2_trainable, 54_072_832);
    }
}
