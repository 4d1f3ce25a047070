//! prdit's own model files: a Burn record (burnpack) of the network's parameters with the
//! model configuration embedded as metadata, written atomically (a crash mid-write leaves
//! the previous file intact). Loading is exact and strict: the file's configuration builds
//! the network, and every parameter must be present with its shape.

use std::path::Path;

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::model::layers::PlaceholderSource;
use crate::model::{Prdit, PrditConfig};

/// Value of the `prdit.format` metadata key of a model file.
pub const MODEL_FORMAT: &str = "prdit-model-1";
const KEY_FORMAT: &str = "prdit.format";
const KEY_CONFIG: &str = "prdit.config";
const KEY_VERSION: &str = "prdit.version";

fn pack_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::weights(path, format!("{what}: {e}"))
}

/// Writes `model` to `path` (exact path, no extension added), atomically.
pub fn save_model(model: &Prdit, path: &Path) -> Result<()> {
    let config = serde_json::to_string(model.config()).expect("a model configuration serialises");
    let bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| pack_err(path, "cannot serialise the parameters", e))?;
    let tensors = burn_pack::Reader::from_bytes(bytes)
        .and_then(|r| r.into_tensors())
        .map_err(|e| pack_err(path, "cannot serialise the parameters", e))?;
    burn_pack::Writer::new(tensors)
        .with_metadata(KEY_FORMAT, MODEL_FORMAT)
        .with_metadata(KEY_CONFIG, &config)
        .with_metadata(KEY_VERSION, env!("CARGO_PKG_VERSION"))
        .auto_extension(false)
        .write_to_file(path)
        .map_err(|e| pack_err(path, "cannot write", e))
}

/// Reads the model configuration stored in a prdit model file.
pub fn read_model_config(path: &Path) -> Result<PrditConfig> {
    if !path.exists() {
        return Err(Error::weights(path, "no such file"));
    }
    let reader = burn_pack::Reader::from_file(path)
        .map_err(|e| pack_err(path, "not a readable prdit model file", e))?;
    let meta = reader.metadata();
    match meta.get(KEY_FORMAT).map(String::as_str) {
        Some(MODEL_FORMAT) => {}
        Some(other) => {
            return Err(Error::weights(
                path,
                format!("format `{other}` is not a prdit model file ({MODEL_FORMAT})"),
            ));
        }
        None => {
            return Err(Error::weights(path, "a Burn record without prdit metadata: not a prdit model file"));
        }
    }
    let json = meta
        .get(KEY_CONFIG)
        .ok_or_else(|| Error::weights(path, "the model configuration is missing from the file"))?;
    serde_json::from_str(json).map_err(|e| pack_err(path, "the stored model configuration is invalid", e))
}

/// Loads a prdit model file onto `device`, exactly as saved.
pub fn load_model(path: &Path, device: &Device) -> Result<Prdit> {
    let cfg = read_model_config(path)?;
    let placeholder = Prdit::build(&cfg, &mut PlaceholderSource::new(device))?;
    let record = ModuleRecord::load(path).map_err(|e| pack_err(path, "cannot read the parameters", e))?;
    placeholder
        .try_load_record(record)
        .map_err(|e| pack_err(path, "the parameters do not fit the stored configuration", e))
}

/// Loads a prdit model file that must hold the network of `expected`; a different
/// configuration is an error naming every differing field.
pub fn load_model_expecting(path: &Path, expected: &PrditConfig, device: &Device) -> Result<Prdit> {
    let found = read_model_config(path)?;
    if &found != expected {
        return Err(Error::weights(
            path,
            format!(
                "holds {}, but {} was asked for ({})",
                found.name(),
                expected.name(),
                config_diff(&found, expected)
            ),
        ));
    }
    load_model(path, device)
}

/// `field: found → expected` for every field that differs.
pub fn config_diff(found: &PrditConfig, expected: &PrditConfig) -> String {
    let a = serde_json::to_value(found).expect("serialises");
    let b = serde_json::to_value(expected).expect("serialises");
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return String::new();
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} in the file, {} asked", b.get(k).cloned().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("; ")
}
