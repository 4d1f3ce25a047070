//! Weights in and out: the official PyTorch/safetensors state dicts (strict, by key) and
//! prdit's own checkpoints (Burn records with the configuration embedded).

pub mod checkpoint;
pub mod export;
pub mod state_dict;

use std::collections::BTreeSet;
use std::path::Path;

use burn::nn::{LayerNorm, Linear};
use burn::tensor::Device;

pub use state_dict::{Entry, FileKind, HostTensor, StateDict, detect};

use crate::error::{Error, Result};
use crate::model::layers::{Init, ParamSource, layer_norm_from_host, linear_from_host};
use crate::model::{Prdit, PrditConfig};

/// Keys a file may hold that are buffers, not parameters: ignored.
const BUFFER_KEYS: [&str; 1] = ["fine.pos_embed"];

/// A [`ParamSource`] reading every parameter from a state dict by its official key. Problems
/// are collected (every missing, mis-shaped or unexpected key), not stopped at the first.
pub struct StateDictSource<'a> {
    sd: &'a StateDict,
    device: Device,
    used: BTreeSet<String>,
    problems: Vec<String>,
}

impl<'a> StateDictSource<'a> {
    /// Reads from `sd`, creating parameters on `device`.
    pub fn new(sd: &'a StateDict, device: &Device) -> Self {
        StateDictSource { sd, device: device.clone(), used: BTreeSet::new(), problems: Vec::new() }
    }

    /// Reads `key`, which must have `shape` (PyTorch order); a problem is recorded and zeros
    /// returned otherwise, so that every problem of the file is reported at once.
    fn take(&mut self, key: &str, shape: &[usize]) -> Vec<f32> {
        self.used.insert(key.to_string());
        let zeros = || vec![0.0; shape.iter().product()];
        match self.sd.shape(key) {
            None => {
                self.problems.push(format!("missing key `{key}` (shape {shape:?})"));
                zeros()
            }
            Some(found) if found != shape => {
                self.problems.push(format!("key `{key}` has shape {found:?}, the model needs {shape:?}"));
                zeros()
            }
            Some(_) => match self.sd.read(key) {
                Ok(t) => {
                    if let Some(bad) = non_finite(&t.data) {
                        self.problems.push(format!("key `{key}` {bad}"));
                    }
                    t.data
                }
                Err(e) => {
                    self.problems.push(e.to_string());
                    zeros()
                }
            },
        }
    }

    /// Ends the load: every key of the file must have been used.
    pub fn finish(mut self) -> Result<()> {
        for key in self.sd.keys() {
            if !self.used.contains(key) && !BUFFER_KEYS.contains(&key) {
                self.problems.push(format!("unexpected key `{key}` (not a parameter of this model)"));
            }
        }
        if self.problems.is_empty() {
            return Ok(());
        }
        let n = self.problems.len();
        let mut shown: Vec<String> = self.problems.iter().take(12).cloned().collect();
        if n > shown.len() {
            shown.push(format!("… and {} more", n - shown.len()));
        }
        let entry = self.sd.entry().map(|e| format!(" (entry `{e}`)")).unwrap_or_default();
        Err(Error::weights(
            self.sd.path(),
            format!(
                "{n} problem(s) loading the weights{entry}; nothing was loaded:\n  - {}",
                shown.join("\n  - ")
            ),
        ))
    }
}

impl ParamSource for StateDictSource<'_> {
    fn device(&self) -> &Device {
        &self.device
    }

    fn linear(&mut self, key: &str, d_in: usize, d_out: usize, bias: bool, _init: Init) -> Result<Linear> {
        let w = self.take(&format!("{key}.weight"), &[d_out, d_in]);
        // PyTorch stores [out, in]; Burn's Linear holds [in, out].
        let mut t = vec![0.0f32; w.len()];
        for o in 0..d_out {
            for i in 0..d_in {
                t[i * d_out + o] = w[o * d_in + i];
            }
        }
        let b = bias.then(|| self.take(&format!("{key}.bias"), &[d_out]));
        Ok(linear_from_host(t, b, d_in, d_out, &self.device))
    }

    fn layer_norm(&mut self, key: &str, width: usize, eps: f64) -> Result<LayerNorm> {
        let w = self.take(&format!("{key}.weight"), &[width]);
        let b = self.take(&format!("{key}.bias"), &[width]);
        Ok(layer_norm_from_host(w, b, eps, &self.device))
    }
}

/// `None` when every value is finite, else what is wrong ("holds 3 non-finite values (NaN at
/// index 17, …)").
pub fn non_finite(values: &[f32]) -> Option<String> {
    let first = values.iter().position(|v| !v.is_finite())?;
    let count = values.iter().filter(|v| !v.is_finite()).count();
    Some(format!(
        "holds {count} non-finite value(s) of {} ({} at index {first})",
        values.len(),
        values[first]
    ))
}

/// Checks that every parameter of `model` is finite; the error names `path` and each bad
/// tensor by its official key. A corrupt or diverged file is refused rather than sampled.
pub fn check_finite<M: burn::module::Module>(model: &M, path: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for p in export::params(model, None) {
        let values = crate::device::to_host(p.value.clone(), &format!("parameter `{}`", p.key))?;
        if let Some(bad) = non_finite(&values) {
            problems.push(format!("`{}` {bad}", p.key));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::weights(
        path,
        format!(
            "{} tensor(s) with non-finite values (a corrupt file or a diverged run); nothing was loaded:\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        ),
    ))
}

/// Builds the network of `cfg` from an official state dict. Strict: any missing, unexpected
/// or mis-shaped key is an error listing them, and no model is returned.
pub fn prdit_from_state_dict(cfg: &PrditConfig, sd: &StateDict, device: &Device) -> Result<Prdit> {
    let mut src = StateDictSource::new(sd, device);
    let model = Prdit::build(cfg, &mut src)?;
    src.finish().map_err(|e| with_hint(e, cfg, sd))?;
    Ok(model)
}

/// Loads official weights from a `.pt`/`.pth`/safetensors file into a network of `cfg`.
pub fn load_official(path: &Path, entry: Entry, cfg: &PrditConfig, device: &Device) -> Result<Prdit> {
    let sd = StateDict::open(path, entry)?;
    prdit_from_state_dict(cfg, &sd, device)
}

/// What a state dict's shapes say about the network it belongs to (heads cannot be read
/// from shapes; they are taken from the named size with that width).
pub fn describe(sd: &StateDict) -> Option<String> {
    let hidden = sd.shape("t_embedder.mlp.0.weight")?[0];
    let token_dim = sd.shape("t_embedder.coarse_head.weight")?[0];
    let out_dim = sd.shape("coarse.mlp_denoise.linear_final.weight")?[0];
    let depth = (0..).take_while(|i| sd.shape(&format!("fine.blocks.{i}.attn.qkv.weight")).is_some()).count();
    let patch = (token_dim as f64).cbrt().round() as usize;
    let (kind, channels) = match heads_process(sd) {
        Some(p) => (p.describe().to_string(), p.out_channels()),
        None => (format!("unknown process's ({out_dim} output rows per token)"), 2),
    };
    let stride = ((out_dim / channels) as f64).cbrt().round() as usize;
    let size = crate::model::config::SIZES.iter().find(|(_, h, _)| *h == hidden).map(|(s, ..)| *s);
    let name = size.map(|s| format!(" (looks like PRDiT-{s}/{patch}/{depth})")).unwrap_or_default();
    Some(format!(
        "the file holds a {kind} network with hidden size {hidden}, patch {patch}, output patch {stride}, depth {depth}{name}"
    ))
}

/// The process a state dict's heads are for: one output channel per voxel of an output patch
/// (`linear_final` has s³ rows, a cube: flow matching's velocity) or two (2·s³: noise and
/// image). A number of rows that is neither is `None`.
pub fn heads_process(sd: &StateDict) -> Option<crate::diffusion::Process> {
    let rows = sd.shape("coarse.mlp_denoise.linear_final.weight")?[0];
    let cube = |n: usize| {
        let r = (n as f64).cbrt().round() as usize;
        r * r * r == n
    };
    use crate::diffusion::Process;
    if cube(rows) {
        Some(Process::Flow)
    } else if rows.is_multiple_of(2) && cube(rows / 2) {
        Some(Process::Ian)
    } else {
        None
    }
}

fn with_hint(e: Error, cfg: &PrditConfig, sd: &StateDict) -> Error {
    match (e, describe(sd)) {
        (Error::Weights { path, reason }, Some(d)) => Error::Weights {
            path,
            reason: format!(
                "{reason}\n  {d}; the configuration asks for {} ({})",
                cfg.name(),
                cfg.process().describe()
            ),
        },
        (e, _) => e,
    }
}
