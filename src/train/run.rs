//! The run directory and its checkpoints.
//!
//! ```text
//! RUN/config.toml              resolved configuration, written before step 0
//! RUN/split.json               the training/validation files
//! RUN/metrics.jsonl            one JSON object per log line and evaluation
//! RUN/previews/step-*.png      evaluation previews
//! RUN/checkpoints/step-NNNNNNNNN/{model.bpk, ema.bpk, optim.bpk, state.json}
//! ```
//! A checkpoint is written into a scratch folder and renamed into place only when complete,
//! so a crash or kill during the write leaves the previous checkpoints intact; scratch
//! folders are ignored (and removed) when a run resumes.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::fsio::fsync_dir;

/// Which training stage a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Stage 1: the local MLP denoiser (`train-local`).
    Local,
    /// Stage 2: the global residual DiT on a frozen stage 1 (`train-global`).
    Global,
    /// Stage 3: the high-resolution refinement on a frozen lower-resolution model (`train-highres`).
    Highres,
}

/// Everything about the loop's position that a checkpoint must carry besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format: String,
    pub stage: Stage,
    /// Optimizer steps taken.
    pub step: u64,
    /// Batches drawn (skipped steps draw a batch but take no step).
    pub draws: u64,
    /// Steps skipped for a non-finite or huge loss, in total.
    pub skipped: u64,
    /// The data order: epoch and batch within it of the next draw (derived from `draws`).
    pub epoch: u64,
    pub batch_in_epoch: u64,
    /// The random state: every draw's randomness is derived from (seed, draw number).
    pub seed: u64,
    /// Best validation loss so far and its step.
    pub best: Option<(u64, f64)>,
    /// Wall-clock seconds of training so far.
    pub elapsed_s: f64,
    pub prdit_version: String,
    pub config: RunConfig,
}

/// Value of `TrainState::format`.
pub const STATE_FORMAT: &str = "prdit-train-state-1";

/// A complete checkpoint on disk.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub step: u64,
}

impl Checkpoint {
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.bpk")
    }
    pub fn ema(&self) -> PathBuf {
        self.dir.join("ema.bpk")
    }
    pub fn optim(&self) -> PathBuf {
        self.dir.join("optim.bpk")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Reads `state.json`.
    pub fn read_state(&self) -> Result<TrainState> {
        let path = self.state();
        let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let state: TrainState = serde_json::from_str(&text)
            .map_err(|e| Error::weights(&path, format!("unreadable training state: {e}")))?;
        if state.format != STATE_FORMAT {
            return Err(Error::weights(&path, format!("format `{}`, expected {STATE_FORMAT}", state.format)));
        }
        Ok(state)
    }
}

/// A run directory.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// Opens (creating if needed) a run directory.
    pub fn create(root: &Path) -> Result<Self> {
        for d in [root.to_path_buf(), root.join("checkpoints"), root.join("previews")] {
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        Ok(RunDir { root: root.to_path_buf() })
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn split(&self) -> PathBuf {
        self.root.join("split.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn previews(&self) -> PathBuf {
        self.root.join("previews")
    }
    fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Complete checkpoints, oldest first.
    pub fn checkpoints_list(&self) -> Result<Vec<Checkpoint>> {
        list_checkpoints(&self.checkpoints())
    }

    /// The newest complete checkpoint.
    pub fn latest(&self) -> Result<Option<Checkpoint>> {
        Ok(self.checkpoints_list()?.pop())
    }

    /// Removes what an interrupted process left: scratch folders of a checkpoint write, folders
    /// of a pruning, and checkpoint folders missing files (killed while being deleted);
    /// returns their names. Only while holding the run folder's lock.
    pub fn clean_partial(&self) -> Result<Vec<String>> {
        let dir = self.checkpoints();
        let mut removed = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let torn = name.starts_with("step-") && !is_complete(&entry.path());
            if name.starts_with(crate::fsio::SCRATCH_PREFIX) || name.starts_with(".old-") || torn {
                fs::remove_dir_all(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
                removed.push(name);
            }
        }
        for dir in [self.root.clone(), self.previews()] {
            for path in crate::fsio::remove_scratch(&dir)? {
                removed.push(path.file_name().unwrap_or_default().to_string_lossy().into_owned());
            }
        }
        Ok(removed)
    }

    /// Writes a checkpoint: `fill` writes the files into a scratch folder, which is then
    /// published under `step-NNNNNNNNN` in one rename.
    pub fn write_checkpoint(&self, step: u64, fill: impl FnOnce(&Path) -> Result<()>) -> Result<Checkpoint> {
        let dir = self.checkpoints();
        let name = format!("step-{step:09}");
        let scratch = dir.join(format!("{}{name}-{}", crate::fsio::SCRATCH_PREFIX, std::process::id()));
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
        if let Err(e) = fill(&scratch) {
            let _ = fs::remove_dir_all(&scratch);
            return Err(e);
        }
        for entry in fs::read_dir(&scratch).map_err(|e| Error::io(&scratch, e))?.flatten() {
            if let Ok(f) = fs::File::open(entry.path()) {
                let _ = f.sync_all();
            }
        }
        fsync_dir(&scratch);
        let target = dir.join(&name);
        if target.exists() {
            let old = dir.join(format!(".old-{name}-{}", std::process::id()));
            fs::rename(&target, &old).map_err(|e| Error::io(&target, e))?;
            let _ = fs::remove_dir_all(&old);
        }
        fs::rename(&scratch, &target).map_err(|e| Error::io(&target, e))?;
        fsync_dir(&dir);
        Ok(Checkpoint { dir: target, step })
    }

    /// Deletes all but the newest `keep` checkpoints, never `protect` (the best one).
    pub fn prune(&self, keep: usize, protect: Option<u64>) -> Result<()> {
        let all = self.checkpoints_list()?;
        let n = all.len();
        for c in all.into_iter().take(n.saturating_sub(keep)) {
            if Some(c.step) != protect {
                // Out of the checkpoint namespace in one rename, then deleted: a kill in between
                // leaves an `.old-*` folder that the next start removes, never a torn step-N.
                let name = c.dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
                let old = self.checkpoints().join(format!(".old-{name}-{}", std::process::id()));
                fs::rename(&c.dir, &old).map_err(|e| Error::io(&c.dir, e))?;
                fsync_dir(&self.checkpoints());
                fault("abort-in-prune", c.step);
                fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
        }
        Ok(())
    }
}

/// Complete checkpoints (`step-N` folders holding `state.json`) of a checkpoints folder.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<Checkpoint>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok())
            && is_complete(&entry.path())
        {
            out.push(Checkpoint { dir: entry.path(), step });
        }
    }
    out.sort_by_key(|c| c.step);
    Ok(out)
}

/// The files of a complete checkpoint folder.
pub const CHECKPOINT_FILES: [&str; 4] = ["model.bpk", "ema.bpk", "optim.bpk", "state.json"];

/// Whether a checkpoint folder holds every file (a folder is published whole, so one that
/// does not was being deleted when the process died).
fn is_complete(dir: &Path) -> bool {
    CHECKPOINT_FILES.iter().all(|f| dir.join(f).is_file())
}

/// The raw-weights model file a path names (see [`crate::resolve::resolve_model`]): a run
/// directory gives its newest checkpoint's `model.bpk` (or, with `prefer_best`, the best
/// checkpoint's when it still exists), a checkpoint folder its `model.bpk`, a file itself.
pub fn model_file(path: &Path, prefer_best: bool) -> Result<PathBuf> {
    use crate::resolve::{Pick, Weights, resolve_model};
    let pick = if prefer_best { Pick::Best } else { Pick::Newest };
    Ok(resolve_model(path, Weights::Raw, pick)?.file().to_path_buf())
}

/// Test-only fault injection, from `PRDIT_FAULT_INJECT`: `abort-after-step:N` aborts the
/// process right after optimizer step N; `abort-in-checkpoint:N` aborts halfway through
/// writing checkpoint N. Abort is what a kill or a crash looks like to the files.
pub fn fault(point: &str, step: u64) {
    if fault_active(point, step) {
        eprintln!("PRDIT_FAULT_INJECT: aborting at {point}:{step}");
        std::process::abort();
    }
}

/// Whether the test fault `point:step` is injected (`PRDIT_FAULT_INJECT`); for faults that do
/// not abort, such as `nan-on-rank-R:N` (worker R's loss is NaN on the N-th batch drawn).
/// The variable is read once per process, so a run without it pays one comparison per call.
pub fn fault_active(point: &str, step: u64) -> bool {
    static SPEC: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let text = std::env::var("PRDIT_FAULT_INJECT").ok()?;
        let (p, n) = text.rsplit_once(':')?;
        Some((p.to_string(), n.parse().ok()?))
    });
    spec.as_ref().is_some_and(|(p, n)| p == point && *n == step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_publish_atomically_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        for step in [10, 20, 30] {
            run.write_checkpoint(step, |d| {
                CHECKPOINT_FILES.iter().try_for_each(|f| crate::fsio::write_atomic(&d.join(f), b"{}"))
            })
            .unwrap();
        }
        // A failed write leaves nothing behind and the previous ones intact.
        let e = run.write_checkpoint(40, |_| Err(Error::invalid("x", "boom")));
        assert!(e.is_err());
        // A scratch folder from a crash is not a checkpoint.
        fs::create_dir_all(dir.path().join("checkpoints/.partial-step-000000050-1")).unwrap();
        // Nor is a step folder that lost files (killed while being deleted).
        fs::create_dir_all(dir.path().join("checkpoints/step-000000060")).unwrap();
        fs::write(dir.path().join("checkpoints/step-000000060/model.bpk"), b"x").unwrap();
        assert_eq!(run.latest().unwrap().unwrap().step, 30);
        assert_eq!(run.clean_partial().unwrap().len(), 2);
        assert!(!dir.path().join("checkpoints/step-000000060").exists());
        run.prune(1, Some(10)).unwrap();
        let steps: Vec<u64> = run.checkpoints_list().unwrap().iter().map(|c| c.step).collect();
        assert_eq!(steps, [10, 30]);
    }
}
