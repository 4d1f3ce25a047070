//! prdit's own model files: a Burn record (burnpack) of a network's parameters with its
//! configuration embedded as metadata, written atomically (a crash mid-write leaves the
//! previous file intact). Loading is exact and strict: the file's configuration builds the
//! network, and every parameter must be present with its shape.

use std::path::Path;

use burn::store::ModuleRecord;
use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::model::network::Network;

const KEY_FORMAT: &str = "prdit.format";
const KEY_CONFIG: &str = "prdit.config";
const KEY_VERSION: &str = "prdit.version";

fn pack_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::weights(path, format!("{what}: {e}"))
}

/// Writes `model` to `path` (exact path, no extension added), atomically.
pub fn save_model<N: Network>(model: &N, path: &Path) -> Result<()> {
    let config = serde_json::to_string(model.config()).expect("a model configuration serialises");
    let bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| pack_err(path, "cannot serialise the parameters", e))?;
    let tensors = burn_pack::Reader::from_bytes(bytes)
        .and_then(|r| r.into_tensors())
        .map_err(|e| pack_err(path, "cannot serialise the parameters", e))?;
    crate::fsio::write_atomic_with(path, |scratch| {
        burn_pack::Writer::new(tensors)
            .with_metadata(KEY_FORMAT, N::FORMAT)
            .with_metadata(KEY_CONFIG, &config)
            .with_metadata(KEY_VERSION, env!("CARGO_PKG_VERSION"))
            .auto_extension(false)
            .write_to_file(scratch)
            .map_err(|e| pack_err(path, "cannot write", e))
    })
}

fn metadata(path: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    if !path.exists() {
        return Err(Error::weights(path, "no such file"));
    }
    let reader = burn_pack::Reader::from_file(path)
        .map_err(|e| pack_err(path, "not a readable prdit model file", e))?;
    Ok(reader.metadata().clone())
}

/// The `prdit.format` of a model file (which network it holds).
pub fn model_format(path: &Path) -> Result<String> {
    metadata(path)?
        .get(KEY_FORMAT)
        .cloned()
        .ok_or_else(|| Error::weights(path, "a Burn record without prdit metadata: not a prdit model file"))
}

/// Reads the configuration stored in a model file of network `N`.
pub fn read_config<N: Network>(path: &Path) -> Result<N::Config> {
    let meta = metadata(path)?;
    match meta.get(KEY_FORMAT).map(String::as_str) {
        Some(f) if f == N::FORMAT => {}
        Some(other) => {
            return Err(Error::weights(
                path,
                format!("holds a `{other}` network, `{}` was expected", N::FORMAT),
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

/// Loads a model file of network `N` onto `device`, exactly as saved; every parameter must be
/// finite.
pub fn load<N: Network>(path: &Path, device: &Device) -> Result<N> {
    let cfg = read_config::<N>(path)?;
    let placeholder = N::placeholder(&cfg, device)?;
    let record = ModuleRecord::load(path).map_err(|e| pack_err(path, "cannot read the parameters", e))?;
    let model = placeholder
        .try_load_record(record)
        .map_err(|e| pack_err(path, "the parameters do not fit the stored configuration", e))?;
    super::check_finite(&model, path)?;
    Ok(model)
}

/// Loads a model file that must hold the network of `expected`; a different configuration
/// is an error naming every differing field.
pub fn load_expecting<N: Network>(path: &Path, expected: &N::Config, device: &Device) -> Result<N> {
    let found = read_config::<N>(path)?;
    if &found != expected {
        return Err(Error::weights(
            path,
            format!(
                "holds {}, but {} was asked for ({})",
                N::name(&found),
                N::name(expected),
                config_diff(&found, expected)
            ),
        ));
    }
    load::<N>(path, device)
}

/// `field: found → expected` for every field that differs (nested fields dotted).
pub fn config_diff<C: serde::Serialize>(found: &C, expected: &C) -> String {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a.as_object(), b.as_object()) {
            (Some(x), Some(y)) => {
                for (k, v) in x {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, y.get(k).unwrap_or(&serde_json::Value::Null), out);
                }
            }
            _ if a != b => out.push(format!("{prefix}: {a} in the file, {b} asked")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(found).expect("serialises"),
        &serde_json::to_value(expected).expect("serialises"),
        &mut out,
    );
    out.join("; ")
}
