//! Building the stage-2 model as the official trainer does: the whole network
//! re-initialised with Xavier gain 0.1, then every stage-1 parameter (shared trunk, coarse
//! head, local denoiser) loaded from the stage-1 weights — the raw weights, not the EMA —
//! and frozen.

use std::collections::BTreeMap;
use std::path::Path;

use burn::nn::{LayerNorm, Linear};
use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::model::layers::{Init, InitSource, ParamSource};
use crate::model::{Prdit, PrditConfig};
use crate::resolve::{ModelRef, Pick, Weights, resolve_model};
use crate::weights::{self, Entry, StateDict, StateDictSource, checkpoint, export};

/// Whether `key` belongs to stage 1 (what stage 2 loads and freezes).
pub fn is_stage1_key(key: &str) -> bool {
    key.starts_with("t_embedder.mlp.0.")
        || key.starts_with("t_embedder.coarse_head.")
        || key.starts_with("coarse.")
}

/// Stage-1 weights from a stage-1 run directory (its newest checkpoint's raw model), a prdit
/// model file, or an official `.pt`/`.pth`/safetensors file (its `model` entry when it has
/// entries). Returns the stage-1 tensors and a description of where they came from.
pub fn stage1_weights(source: &Path, stage2: &PrditConfig) -> Result<(StateDict, String)> {
    let (all, what) = match resolve_model(source, Weights::Raw, Pick::Newest)? {
        ModelRef::Official { file, .. } => official(&file)?,
        prdit => {
            let file = prdit.file();
            let found = checkpoint::read_config::<Prdit>(file)?;
            let want = PrditConfig { depth: found.depth, ..stage2.clone() };
            if found != want {
                return Err(Error::weights(
                    file,
                    format!(
                        "holds {} ({}), which is not the stage 1 of {} ({}) ({})",
                        found.name(),
                        found.process().describe(),
                        stage2.name(),
                        stage2.process().describe(),
                        checkpoint::config_diff(&found, &want)
                    ),
                ));
            }
            let m = checkpoint::load::<Prdit>(file, &Device::flex())?;
            (
                StateDict::from_host(file, export::state_dict(&m)?),
                format!("{} ({})", file.display(), found.name()),
            )
        }
    };
    // Only the stage-1 part is used (a stage-2 file may serve as the source too).
    let mut host = BTreeMap::new();
    for key in all.keys().filter(|k| is_stage1_key(k)) {
        host.insert(key.to_string(), all.read(key)?);
    }
    Ok((StateDict::from_host(all.path(), host), what))
}

/// An official file's raw weights (`model` entry when it has entries).
fn official(file: &Path) -> Result<(StateDict, String)> {
    let sd = match StateDict::open(file, Entry::Model) {
        Ok(sd) => sd,
        Err(_) => StateDict::open(file, Entry::Auto)?,
    };
    let entry = sd.entry().map(|e| format!(", entry `{e}`")).unwrap_or_default();
    let what = format!("{}{entry}", file.display());
    Ok((sd, what))
}

/// A complete model of `cfg` (all stages) from a run directory (newest raw weights), a prdit
/// model file or an official file, strictly; e.g. the base of the high-resolution stage.
pub fn full_weights(source: &Path, cfg: &PrditConfig, device: &Device) -> Result<(Prdit, String)> {
    match resolve_model(source, Weights::Raw, Pick::Newest)? {
        ModelRef::Official { file, .. } => {
            let (sd, what) = official(&file)?;
            Ok((weights::prdit_from_state_dict(cfg, &sd, device)?, what))
        }
        prdit => {
            let file = prdit.file();
            Ok((checkpoint::load_expecting::<Prdit>(file, cfg, device)?, file.display().to_string()))
        }
    }
}

/// Stage-1 parameters from the state dict, everything else from the gain-scaled initialiser.
struct Stage2Source<'a> {
    stage1: StateDictSource<'a>,
    init: InitSource,
}

impl ParamSource for Stage2Source<'_> {
    fn device(&self) -> &Device {
        self.init.device()
    }

    fn linear(&mut self, key: &str, d_in: usize, d_out: usize, bias: bool, init: Init) -> Result<Linear> {
        // Draw the initial values either way, so the stage-2 weights do not depend on which
        // layers happen to be loaded.
        let fresh = self.init.linear(key, d_in, d_out, bias, init)?;
        if is_stage1_key(&format!("{key}.")) {
            self.stage1.linear(key, d_in, d_out, bias, init)
        } else {
            Ok(fresh)
        }
    }

    fn layer_norm(&mut self, key: &str, width: usize, eps: f64) -> Result<LayerNorm> {
        if is_stage1_key(&format!("{key}.")) {
            self.stage1.layer_norm(key, width, eps)
        } else {
            self.init.layer_norm(key, width, eps)
        }
    }
}

/// The stage-2 network of `cfg` with stage 1 from `sd`, frozen. Strict: every stage-1
/// parameter must be in `sd` with its shape.
pub fn build_stage2(
    cfg: &PrditConfig,
    sd: &StateDict,
    seed: u64,
    gain: f64,
    device: &Device,
) -> Result<Prdit> {
    let mut src = Stage2Source {
        stage1: StateDictSource::new(sd, device),
        init: InitSource::with_gain(seed, gain, device),
    };
    let model = Prdit::build(cfg, &mut src)?;
    src.stage1.finish().map_err(|e| match (e, weights::describe(sd)) {
        (Error::Weights { path, reason }, Some(d)) => Error::Weights {
            path,
            reason: format!("{reason}\n  these stage-1 weights do not fit {}: {d}", cfg.name()),
        },
        (e, _) => e,
    })?;
    Ok(model.freeze_stage1())
}
