//! A run's data: the training/validation split (fixed at step 0 and kept in `split.json`),
//! the volumes held in memory, the batch plan, and what sampling needs to know of the data
//! (`data.json`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::run::RunDir;
use crate::config::RunConfig;
use crate::data::dataset::{Dataset, list_volumes, split};
use crate::data::loader::BatchPlan;
use crate::data::volume::{Orientation, ValueRange};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;

/// What a run records about its data for sampling: the volume size, the voxel spacing of
/// its first training volume, and what the `dataset.json` next to the volumes (written by
/// `prdit prepare` and `prdit phantom`) says: the HU window, the arrays' orientation and their
/// value range (absent from older files and folders without one: LPS, [−1, 1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub size: usize,
    pub spacing_mm: [f32; 3],
    pub window_hu: Option<[f32; 2]>,
    #[serde(default)]
    pub orientation: Orientation,
    #[serde(default)]
    pub value_range: ValueRange,
    pub first_volume: PathBuf,
}

/// The parts of a `dataset.json` a run reads (both writers' files have them, or lack them).
#[derive(Deserialize)]
struct DatasetSummary {
    window_hu: Option<[f32; 2]>,
    #[serde(default)]
    orientation: Option<Orientation>,
    #[serde(default)]
    value_range: Option<ValueRange>,
}

impl DataInfo {
    /// Reads it from the first training file and its folder's `dataset.json` (an unreadable
    /// one is an error naming it).
    pub fn of(first: &Path, size: usize) -> Result<Self> {
        let vol = crate::data::nifti::read_volume(first)?;
        let manifest = first.parent().map(|d| d.join("dataset.json")).filter(|m| m.is_file());
        let summary = match manifest {
            Some(m) => {
                let text = std::fs::read_to_string(&m).map_err(|e| Error::io(&m, e))?;
                Some(
                    serde_json::from_str::<DatasetSummary>(&text)
                        .map_err(|e| Error::data(&m, format!("unreadable dataset description: {e}")))?,
                )
            }
            None => None,
        };
        Ok(DataInfo {
            size,
            spacing_mm: vol.spacing,
            window_hu: summary.as_ref().and_then(|s| s.window_hu),
            orientation: summary.as_ref().and_then(|s| s.orientation).unwrap_or_default(),
            value_range: summary.as_ref().and_then(|s| s.value_range).unwrap_or_default(),
            first_volume: first.to_path_buf(),
        })
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
    let (train, val) = split(files.len(), cfg.data.val_count, cfg.train.seed, cfg.data.split)?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| files[i].clone()).collect();
    Ok(Split { train: pick(&train), val: pick(&val) })
}

/// The data of a run, loaded.
pub struct RunData {
    pub train: Arc<Dataset>,
    /// `None` when the run has no validation volumes.
    pub val: Option<Dataset>,
    pub plan: BatchPlan,
    /// What the run records about its data (`data.json`).
    pub info: DataInfo,
}

impl RunData {
    /// The split (read back from `split.json` when resuming, else made and written), the
    /// volumes of edge `size` in memory, `data.json` and the batch plan.
    pub fn load(cfg: &RunConfig, run: &RunDir, resuming: bool, size: usize) -> Result<Self> {
        let split = match (resuming, run.split().is_file()) {
            (true, true) => {
                let text = std::fs::read_to_string(run.split()).map_err(|e| Error::io(run.split(), e))?;
                serde_json::from_str(&text)
                    .map_err(|e| Error::data(run.split(), format!("unreadable: {e}")))?
            }
            _ => {
                let s = make_split(cfg)?;
                write_atomic(&run.split(), serde_json::to_string_pretty(&s).expect("serialises").as_bytes())?;
                s
            }
        };
        let started = Instant::now();
        let train = Arc::new(Dataset::load(&split.train, size, cfg.data.storage)?);
        let val = if split.val.is_empty() {
            None
        } else {
            Some(Dataset::load(&split.val, size, cfg.data.storage)?)
        };
        tracing::info!(
            "data: {} training and {} validation volumes of {size}³ ({:.1} MiB in memory, loaded in {:.1} s)",
            train.len(),
            val.as_ref().map_or(0, |v| v.len()),
            (train.bytes() + val.as_ref().map_or(0, |v| v.bytes())) as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
        if val.is_none() {
            tracing::warn!("no validation volumes: evaluation and best-checkpoint tracking are off");
        }
        let info = DataInfo::of(&split.train[0], size)?;
        write_atomic(
            &run.root.join("data.json"),
            serde_json::to_string_pretty(&info).expect("serialises").as_bytes(),
        )?;
        let plan = BatchPlan::new(
            (0..train.len()).collect(),
            cfg.train.batch_size,
            cfg.train.seed,
            cfg.diffusion.process,
        )?;
        Ok(RunData { train, val, plan, info })
    }
}
