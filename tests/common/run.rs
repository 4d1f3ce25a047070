//! Driving the real binary: runs, configurations, metrics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn prdit(args: &[&str], envs: &[(&str, &str)]) -> Output {
    prdit_on("cpu", args, envs)
}

/// The binary on `--device DEVICE`: the one cargo built with these tests, or `PRDIT_BIN` (a
/// test binary carried to another machine, `scripts/test-gpu-path-cuda.sh`).
pub fn prdit_on(device: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let bin = std::env::var_os("PRDIT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_prdit").into());
    let mut cmd = Command::new(bin);
    cmd.args(["--device", device, "--quiet"]).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("prdit runs")
}

pub fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "prdit failed ({:?}):\n{err}", o.status);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn err(o: &Output) -> String {
    assert!(!o.status.success(), "prdit should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A phantom dataset of `n` volumes of 16³.
pub fn data(dir: &Path, n: usize) -> PathBuf {
    phantoms(dir, "data", n, 16)
}

/// `n` phantom volumes of `size`³ in `dir/name`.
pub fn phantoms(dir: &Path, name: &str, n: usize, size: usize) -> PathBuf {
    let out = dir.join(name);
    ok(&prdit(
        &["phantom", "--out", out.to_str().unwrap(), "--num", &n.to_string(), "--size", &size.to_string()],
        &[],
    ));
    out
}

/// A tiny run file: 16³ volumes, 4³ windows every 2 voxels, hidden 48.
/// `extra` holds `[train]` lines that replace the defaults here.
pub fn config(dir: &Path, name: &str, data: &Path, depth: usize, extra: &str) -> PathBuf {
    let overridden: Vec<&str> = extra.lines().filter_map(|l| l.split('=').next()).map(str::trim).collect();
    let defaults: String = [
        "batch_size = 2",
        "lr = 1e-3",
        "ema_decay = 0.9",
        "log_every = 1",
        "eval_every = 1000",
        "ckpt_every = 4",
        "keep_last = 10",
    ]
    .iter()
    .filter(|l| !overridden.contains(&l.split('=').next().unwrap().trim()))
    .map(|l| format!("{l}\n"))
    .collect();
    let text = format!(
        "[model]\ninput_size = 16\npatch_size = 4\nstride = 2\npadding = 1\nhidden_size = 48\nnum_heads = 4\n\
         depth = {depth}\n[data]\ntrain = \"{}\"\nval_count = 2\n[train]\n{defaults}{extra}",
        data.display()
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn records(run: &Path, kind: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    // Only complete lines: a running trainer may be appending the next one.
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    complete
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

pub fn losses(run: &Path) -> Vec<(u64, f64)> {
    records(run, "train").iter().map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())).collect()
}

pub fn train(stage: &str, cfg: &Path, out: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    train_on("cpu", stage, cfg, out, extra, envs)
}

/// [`train`] on `--device DEVICE`.
pub fn train_on(
    device: &str,
    stage: &str,
    cfg: &Path,
    out: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Output {
    let mut args = vec![stage, "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    prdit_on(device, &args, envs)
}
