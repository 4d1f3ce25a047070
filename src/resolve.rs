//! What a path given for a model means — the one answer for `sample`, `inspect`,
//! `train-global --local` and `[highres] base`/`init`:
//!
//! - a **run directory** (`RUN/checkpoints/step-N/…`): its newest complete checkpoint (or the
//!   best one, when asked and still there), then as a checkpoint folder;
//! - a **checkpoint folder** (`step-N` holding `state.json`): its `model.bpk` (raw weights) or
//!   `ema.bpk` (EMA weights);
//! - a **file**: a prdit model file (burnpack) or an official PyTorch `.pt`/`.pth` or
//!   safetensors file, told apart by its first bytes ([`weights::detect`]).
//!
//! Which checkpoints of a run are complete is [`list_checkpoints`]'s answer. A folder given
//! directly is taken as a checkpoint folder when it holds `state.json` or the weights file
//! asked for.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::PrditConfig;
use crate::train::run::{Checkpoint, list_checkpoints};
use crate::weights::{self, FileKind};

/// Which weights of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// The optimised weights (`model.bpk`): what the next stage builds on.
    Raw,
    /// The exponential moving average (`ema.bpk`): what sampling uses.
    Ema,
}

impl Weights {
    /// The file of a checkpoint folder holding them.
    pub fn file_name(self) -> &'static str {
        match self {
            Weights::Raw => "model.bpk",
            Weights::Ema => "ema.bpk",
        }
    }

    /// `raw` or `ema` (as sampling manifests record it).
    pub fn name(self) -> &'static str {
        match self {
            Weights::Raw => "raw",
            Weights::Ema => "ema",
        }
    }
}

/// Which checkpoint of a run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The newest complete one.
    Newest,
    /// The one with the best validation loss when it still exists, else the newest.
    Best,
}

/// A resolved model reference: the file to load and what it is.
#[derive(Debug, Clone)]
pub enum ModelRef {
    /// A prdit model file of a checkpoint (from a run directory or a checkpoint folder).
    Checkpoint { file: PathBuf, checkpoint: Checkpoint, weights: Weights },
    /// A prdit model file given as a file.
    ModelFile { file: PathBuf },
    /// An official weights file (PyTorch zip or legacy pickle, or safetensors): it holds no
    /// network configuration.
    Official { file: PathBuf, kind: FileKind },
}

impl ModelRef {
    /// The file to load.
    pub fn file(&self) -> &Path {
        match self {
            ModelRef::Checkpoint { file, .. }
            | ModelRef::ModelFile { file }
            | ModelRef::Official { file, .. } => file,
        }
    }

    /// Whether it is a prdit model file (which embeds its network's configuration).
    pub fn is_prdit(&self) -> bool {
        !matches!(self, ModelRef::Official { .. })
    }

    /// Refuses an `entry` other than `auto` for a prdit model file: entries exist only in
    /// official full checkpoints.
    pub fn check_entry(&self, entry: weights::Entry) -> Result<()> {
        if self.is_prdit() && entry != weights::Entry::Auto {
            return Err(Error::invalid(
                "entry",
                format!(
                    "{} is a prdit model file: an entry is chosen only in an official full checkpoint",
                    self.file().display()
                ),
            ));
        }
        Ok(())
    }

    /// The run directory the weights come from, when it records its data (`data.json`):
    /// `RUN` of `RUN/checkpoints/step-N` or of a file `RUN/checkpoints/step-N/ema.bpk`.
    pub fn run_dir(&self) -> Option<PathBuf> {
        let run = match self {
            ModelRef::Checkpoint { checkpoint, .. } => checkpoint.dir.parent()?.parent()?,
            ModelRef::ModelFile { file } | ModelRef::Official { file, .. } => {
                file.parent()?.parent()?.parent()?
            }
        };
        run.join("data.json").is_file().then(|| run.to_path_buf())
    }
}

/// Resolves `path` (run directory, checkpoint folder or weights file) to the file to load;
/// `weights` and `pick` choose within runs and checkpoints. A file's kind is read from its
/// first bytes, so a missing or unrecognised file is an error naming it.
pub fn resolve_model(path: &Path, weights: Weights, pick: Pick) -> Result<ModelRef> {
    if path.is_file() {
        let kind = weights::detect(path)?;
        let file = path.to_path_buf();
        return Ok(match kind {
            FileKind::Burnpack => ModelRef::ModelFile { file },
            kind => ModelRef::Official { file, kind },
        });
    }
    std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let checkpoint = if path.join("state.json").is_file() || path.join(weights.file_name()).is_file() {
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Checkpoint { dir: path.to_path_buf(), step }
    } else {
        let all = list_checkpoints(&path.join("checkpoints"))?;
        let newest = all.last().ok_or_else(|| {
            Error::weights(
                path,
                "neither a weights file, a checkpoint folder nor a run directory with a complete checkpoint",
            )
        })?;
        let best = match pick {
            Pick::Newest => None,
            Pick::Best => newest.read_state()?.best.and_then(|(step, _)| all.iter().find(|c| c.step == step)),
        };
        best.unwrap_or(newest).clone()
    };
    let file = checkpoint.dir.join(weights.file_name());
    if weights::detect(&file)? != FileKind::Burnpack {
        return Err(Error::weights(&file, "not a prdit model file"));
    }
    Ok(ModelRef::Checkpoint { file, checkpoint, weights })
}

/// A network configuration from an official name (`PRDiT-B/12/4`, with the volume edge
/// `size`) or a TOML/JSON file of [`PrditConfig`] fields (which states its own size).
pub fn model_config(name_or_file: &str, size: usize) -> Result<PrditConfig> {
    let path = Path::new(name_or_file);
    let format = path.extension().and_then(|e| e.to_str());
    if !matches!(format, Some("toml" | "json")) {
        return PrditConfig::from_name(name_or_file, size);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let key = path.display().to_string();
    let cfg: PrditConfig = if format == Some("json") {
        serde_json::from_str(&text).map_err(|e| Error::invalid(&key, e.to_string()))?
    } else {
        toml::from_str(&text).map_err(|e| Error::invalid(&key, e.to_string()))?
    };
    cfg.validate().map_err(|e| match e {
        Error::Invalid { key: k, reason } => Error::Invalid { key: format!("{key} → {k}"), reason },
        e => e,
    })?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsio::write_atomic;
    use crate::train::run::RunDir;

    /// A burnpack-looking file: the magic number is all `detect` reads.
    fn fake_bpk(path: &Path) {
        let mut bytes = burn_pack::MAGIC_NUMBER.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 12]);
        std::fs::write(path, bytes).unwrap();
    }

    /// `RUN/checkpoints/step-N/{model,ema,optim}.bpk + state.json` for each step; `best`
    /// recorded in the newest state.
    fn fake_run(root: &Path, steps: &[u64], best: Option<u64>) -> RunDir {
        let run = RunDir::create(root).unwrap();
        for &step in steps {
            run.write_checkpoint(step, |d| {
                for f in ["model.bpk", "ema.bpk", "optim.bpk"] {
                    fake_bpk(&d.join(f));
                }
                write_atomic(&d.join("state.json"), fake_state(step, best).as_bytes())
            })
            .unwrap();
        }
        run
    }

    fn fake_state(step: u64, best: Option<u64>) -> String {
        let cfg = crate::config::RunConfig::parse(
            "[model]\ninput_size = 16\npatch_size = 4\nstride = 2\npadding = 1\nhidden_size = 48\n\
             num_heads = 4\ndepth = 0\n[data]\ntrain = \"data\"\n",
        )
        .unwrap();
        let state = crate::train::TrainState {
            format: crate::train::run::STATE_FORMAT.into(),
            stage: crate::train::Stage::Local,
            step,
            draws: step,
            skipped: 0,
            epoch: 0,
            batch_in_epoch: 0,
            seed: 0,
            best: best.map(|s| (s, 0.5)),
            elapsed_s: 0.0,
            prdit_version: "test".into(),
            config: cfg,
        };
        serde_json::to_string(&state).unwrap()
    }

    fn checkpoint_of(r: &ModelRef) -> (u64, &str) {
        match r {
            ModelRef::Checkpoint { file, checkpoint, .. } => {
                (checkpoint.step, file.file_name().unwrap().to_str().unwrap())
            }
            other => panic!("not a checkpoint: {other:?}"),
        }
    }

    #[test]
    fn a_run_directory_gives_its_newest_complete_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        fake_run(&root, &[4, 8], Some(4));
        // An interrupted write (no state.json) is not a checkpoint.
        let torn = root.join("checkpoints/step-000000012");
        std::fs::create_dir_all(&torn).unwrap();
        fake_bpk(&torn.join("model.bpk"));
        fake_bpk(&torn.join("ema.bpk"));

        let r = resolve_model(&root, Weights::Ema, Pick::Newest).unwrap();
        assert_eq!(checkpoint_of(&r), (8, "ema.bpk"));
        assert!(r.is_prdit());
        assert_eq!(r.file(), root.join("checkpoints/step-000000008/ema.bpk"));
        let r = resolve_model(&root, Weights::Raw, Pick::Newest).unwrap();
        assert_eq!(checkpoint_of(&r), (8, "model.bpk"));
        // The best checkpoint when asked for and still there.
        let r = resolve_model(&root, Weights::Raw, Pick::Best).unwrap();
        assert_eq!(checkpoint_of(&r), (4, "model.bpk"));
        std::fs::remove_dir_all(root.join("checkpoints/step-000000004")).unwrap();
        let r = resolve_model(&root, Weights::Raw, Pick::Best).unwrap();
        assert_eq!(checkpoint_of(&r), (8, "model.bpk"));
    }

    #[test]
    fn checkpoint_folders_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        fake_run(&root, &[3], None);
        let ckpt = root.join("checkpoints/step-000000003");
        let r = resolve_model(&ckpt, Weights::Ema, Pick::Newest).unwrap();
        assert_eq!(checkpoint_of(&r), (3, "ema.bpk"));
        // The run it belongs to, only when it records its data.
        assert_eq!(r.run_dir(), None);
        std::fs::write(root.join("data.json"), "{}").unwrap();
        assert_eq!(r.run_dir(), Some(root.clone()));

        // A prdit model file, given as a file: which weights are asked for does not matter.
        let file = ckpt.join("model.bpk");
        let r = resolve_model(&file, Weights::Ema, Pick::Newest).unwrap();
        assert!(matches!(&r, ModelRef::ModelFile { file: f } if *f == file));
        assert_eq!(r.run_dir(), Some(root.clone()));

        // Official files by their first bytes.
        let pt = dir.path().join("official.pt");
        std::fs::write(&pt, b"PK\x03\x04 and the rest of a zip").unwrap();
        let r = resolve_model(&pt, Weights::Raw, Pick::Newest).unwrap();
        assert!(matches!(r, ModelRef::Official { kind: FileKind::TorchZip, .. }));
        assert!(!r.is_prdit());
        assert_eq!(r.run_dir(), None);
    }

    #[test]
    fn what_is_not_a_model_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let e = resolve_model(&missing, Weights::Ema, Pick::Newest).unwrap_err().to_string();
        assert!(e.starts_with(&missing.display().to_string()) && e.contains("No such file"), "{e}");
        assert_eq!(e.matches("nowhere").count(), 1, "{e}");

        let empty = dir.path().join("empty");
        std::fs::create_dir_all(empty.join("checkpoints")).unwrap();
        let e = resolve_model(&empty, Weights::Ema, Pick::Newest).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("run directory with a complete checkpoint"), "{e}");

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        let e = resolve_model(&text, Weights::Ema, Pick::Newest).unwrap_err().to_string();
        assert!(e.contains("notes.txt") && e.contains("unrecognised first bytes"), "{e}");

        // A checkpoint folder without the asked-for weights file; in a run, such a folder
        // is not a complete checkpoint.
        let root = dir.path().join("run");
        fake_run(&root, &[2], None);
        let ckpt = root.join("checkpoints/step-000000002");
        std::fs::remove_file(ckpt.join("ema.bpk")).unwrap();
        let e = resolve_model(&ckpt, Weights::Ema, Pick::Newest).unwrap_err().to_string();
        assert!(e.contains("ema.bpk") && e.contains("No such file"), "{e}");
        assert!(resolve_model(&ckpt, Weights::Raw, Pick::Newest).is_ok());
        let e = resolve_model(&root, Weights::Raw, Pick::Newest).unwrap_err().to_string();
        assert!(e.contains("complete checkpoint"), "{e}");
    }

    #[test]
    fn model_configs_from_names_and_files() {
        let cfg = model_config("PRDiT-B/12/4", 128).unwrap();
        assert_eq!(cfg.name(), "PRDiT-B/12/4");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(model_config(path.to_str().unwrap(), 0).unwrap(), cfg);
        let json = dir.path().join("m.json");
        std::fs::write(&json, serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(model_config(json.to_str().unwrap(), 0).unwrap(), cfg);
        std::fs::write(&path, "depth = \"deep\"\n").unwrap();
        let e = model_config(path.to_str().unwrap(), 0).unwrap_err().to_string();
        assert!(e.contains("m.toml"), "{e}");
        let e = model_config(dir.path().join("none.toml").to_str().unwrap(), 0).unwrap_err().to_string();
        assert!(e.contains("none.toml") && e.contains("No such file"), "{e}");
    }
}
