//! Official PyTorch state dicts as host tensors, by key: `.pt`/`.pth` (zip and legacy
//! pickle, read by `pytorch-reader`) and safetensors. The format is recognised from the
//! file's first bytes, not its extension. A full official checkpoint
//! (`{"model", "ema", "config", …}`) is reduced to the chosen entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use pytorch_reader::{DType, PytorchReader};

use crate::error::{Error, Result};

/// Which set of weights to take from a full training checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Entry {
    /// `ema` when present (what sampling uses), else `model`, else the file's root.
    #[default]
    Auto,
    /// The exponential moving average (`ema`).
    Ema,
    /// The raw trained weights (`model`; what stage 2 initialises from).
    Model,
}

impl Entry {
    fn key(self) -> Option<&'static str> {
        match self {
            Entry::Auto => None,
            Entry::Ema => Some("ema"),
            Entry::Model => Some("model"),
        }
    }
}

/// The container formats a weights file can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `torch.save` zip archive (PyTorch ≥ 1.6).
    TorchZip,
    /// `torch.save` legacy pickle stream (or a plain pickle).
    TorchLegacy,
    /// safetensors.
    Safetensors,
    /// A prdit checkpoint (burnpack).
    Burnpack,
}

/// Recognises the container from the first bytes of the file.
pub fn detect(path: &Path) -> Result<FileKind> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let n = file.read(&mut head).map_err(|e| Error::io(path, e))?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        Ok(FileKind::TorchZip)
    } else if head.len() >= 4
        && u32::from_le_bytes([head[0], head[1], head[2], head[3]]) == burn_pack::MAGIC_NUMBER
    {
        Ok(FileKind::Burnpack)
    } else if head.len() >= 9 && head[8] == b'{' {
        Ok(FileKind::Safetensors)
    } else if head.first() == Some(&0x80) {
        Ok(FileKind::TorchLegacy)
    } else if n == 0 {
        Err(Error::weights(path, "the file is empty"))
    } else {
        Err(Error::weights(
            path,
            "not a PyTorch (.pt/.pth), safetensors or prdit checkpoint file (unrecognised first bytes)",
        ))
    }
}

/// A tensor on the host, converted to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

enum Stored {
    Torch(pytorch_reader::Tensor),
    Host(HostTensor),
}

/// The tensors of one state dict, read lazily (a full checkpoint's optimizer state is never
/// read). Keys are the official ones: an entry prefix (`ema.`) and `module.` are stripped.
pub struct StateDict {
    path: PathBuf,
    entry: Option<String>,
    tensors: BTreeMap<String, Stored>,
}

impl StateDict {
    /// Opens a PyTorch or safetensors file and selects `entry`.
    pub fn open(path: &Path, entry: Entry) -> Result<Self> {
        let kind = detect(path)?;
        let raw: BTreeMap<String, Stored> = match kind {
            FileKind::TorchZip | FileKind::TorchLegacy => PytorchReader::new(path)
                .map_err(|e| Error::weights(path, format!("cannot read as a PyTorch file: {e}")))?
                .into_tensors()
                .into_iter()
                .map(|(k, t)| (k, Stored::Torch(t)))
                .collect(),
            FileKind::Safetensors => {
                read_safetensors(path)?.into_iter().map(|(k, t)| (k, Stored::Host(t))).collect()
            }
            FileKind::Burnpack => {
                return Err(Error::weights(
                    path,
                    "this is a prdit checkpoint, not a PyTorch/safetensors state dict; load it as a checkpoint",
                ));
            }
        };
        let (entry, tensors) = select_entry(path, raw, entry)?;
        Ok(StateDict { path: path.to_path_buf(), entry, tensors })
    }

    /// A state dict from host tensors (tests, conversions).
    pub fn from_host(path: impl Into<PathBuf>, tensors: BTreeMap<String, HostTensor>) -> Self {
        StateDict {
            path: path.into(),
            entry: None,
            tensors: tensors.into_iter().map(|(k, t)| (k, Stored::Host(t))).collect(),
        }
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry of a full checkpoint that was selected (`ema`, `model`, `state_dict`).
    pub fn entry(&self) -> Option<&str> {
        self.entry.as_deref()
    }

    /// Keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Shape of `key`, without reading its data.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.tensors.get(key).map(|s| match s {
            Stored::Torch(t) => t.shape().to_vec(),
            Stored::Host(t) => t.shape.clone(),
        })
    }

    /// Reads `key` as f32 (floats of other widths are converted; anything else is an error).
    pub fn read(&self, key: &str) -> Result<HostTensor> {
        let stored = self
            .tensors
            .get(key)
            .ok_or_else(|| Error::weights(&self.path, format!("missing key `{key}`")))?;
        match stored {
            Stored::Host(t) => Ok(t.clone()),
            Stored::Torch(t) => {
                let bytes = t.read().map_err(|e| {
                    Error::weights(&self.path, format!("key `{key}`: cannot read its data: {e}"))
                })?;
                let data = match t.dtype() {
                    DType::F32 => convert(&bytes, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    DType::F64 => convert(&bytes, 8, |b| {
                        f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                    }),
                    DType::F16 => convert(&bytes, 2, |b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
                    DType::BF16 => convert(&bytes, 2, |b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                    other => {
                        return Err(Error::weights(
                            &self.path,
                            format!("key `{key}` holds {other:?} values, expected floating point"),
                        ));
                    }
                };
                Ok(HostTensor { shape: t.shape().to_vec(), data })
            }
        }
    }
}

fn convert(bytes: &[u8], width: usize, f: impl Fn(&[u8]) -> f32) -> Vec<f32> {
    bytes.chunks_exact(width).map(f).collect()
}

fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    use safetensors::Dtype;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::weights(path, format!("cannot read as safetensors: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.iter() {
        let b = view.data();
        let data = match view.dtype() {
            Dtype::F32 => convert(b, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Dtype::F64 => {
                convert(b, 8, |b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            }
            Dtype::F16 => convert(b, 2, |b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
            Dtype::BF16 => convert(b, 2, |b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            other => {
                return Err(Error::weights(
                    path,
                    format!("key `{name}` holds {other:?} values, expected floating point"),
                ));
            }
        };
        out.insert(name.to_string(), HostTensor { shape: view.shape().to_vec(), data });
    }
    Ok(out)
}

/// Reduces a flattened file to one state dict: keys of a full checkpoint are
/// `model.…`/`ema.…` (plus `optimizer.…`), MedicalNet-style files use `state_dict.…`;
/// `module.` (DataParallel) is stripped wherever it leads a key.
fn select_entry(
    path: &Path,
    raw: BTreeMap<String, Stored>,
    entry: Entry,
) -> Result<(Option<String>, BTreeMap<String, Stored>)> {
    let has = |prefix: &str| raw.keys().any(|k| k.starts_with(&format!("{prefix}.")));
    let entries: Vec<&str> = ["ema", "model", "state_dict"].into_iter().filter(|p| has(p)).collect();
    let chosen = match (entry.key(), entries.is_empty()) {
        (Some(want), _) if entries.contains(&want) => Some(want),
        (Some(want), true) => {
            return Err(Error::weights(
                path,
                format!("entry `{want}` was asked for, but the file is a plain state dict (no entries)"),
            ));
        }
        (Some(want), false) => {
            return Err(Error::weights(
                path,
                format!("the file has no `{want}` entry (it has: {})", entries.join(", ")),
            ));
        }
        (None, _) => entries.first().copied(),
    };
    let strip = |k: &str| -> String {
        let k = k.strip_prefix("module.").unwrap_or(k);
        k.to_string()
    };
    let tensors = match chosen {
        Some(prefix) => raw
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(&format!("{prefix}.")).map(|rest| (strip(rest), v)))
            .collect(),
        None => raw.into_iter().map(|(k, v)| (strip(&k), v)).collect(),
    };
    Ok((chosen.map(str::to_string), tensors))
}
