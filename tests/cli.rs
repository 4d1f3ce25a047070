//! The real `prdit` binary, driven as a user would.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn prdit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prdit")).args(args).output().expect("prdit runs")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn inspect_reports_the_paper_model() {
    let o = prdit(&["inspect", "--model", "PRDiT-B/12/4", "--size", "128"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("93,228,992"), "{out}");
    assert!(out.contains("54,072,832"), "{out}");
    assert!(out.contains("16³ = 4096 tokens"), "{out}");

    let o = prdit(&["inspect", "--model", "PRDiT-XL/12/4", "--size", "64", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["total_params"], 155_974_208u64);
    assert_eq!(v["tokens"], 512);
}

#[test]
fn bad_names_and_devices_are_explained() {
    let o = prdit(&["inspect", "--model", "PRDiT-L/12/4"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("PRDiT-L/12/4") && err.contains("divisible by 6"), "{err}");

    let o = prdit(&["--device", "gpu", "inspect", "--model", "PRDiT-B/12/0"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("expected auto, cpu, cuda, cuda:N or wgpu"));
}

#[test]
fn inspect_loads_official_weights_strictly() {
    let meta = common::read_meta();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("model.toml");
    std::fs::write(&cfg_path, toml::to_string(&meta.config).unwrap()).unwrap();
    let pt = common::parity_dir().join("parity_state_dict.pt");
    let cfg = cfg_path.to_str().unwrap();
    let o = prdit(&["--device", "cpu", "inspect", "--model", cfg, "--weights", pt.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let tensors = common::read_fixture(common::parity_dir().join("parity_weights.safetensors")).len();
    assert!(out.contains(&format!("loaded strictly ({tensors} tensors")), "{out}");

    // The same file against one block more: refused, naming the keys it lacks.
    let mut other = meta.config.clone();
    other.depth += 1;
    std::fs::write(&cfg_path, toml::to_string(&other).unwrap()).unwrap();
    let o = prdit(&["--device", "cpu", "inspect", "--model", cfg, "--weights", pt.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    let missing = format!("missing key `fine.blocks.{}.", meta.config.depth);
    assert!(err.contains("parity_state_dict.pt") && err.contains(&missing), "{err}");
}

#[test]
fn closed_choices_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    // Each refused by the argument parser with the accepted values, before any work.
    for (args, values) in [
        (vec!["sample", "--run", "nowhere", "--out", out, "--sampler", "euler"], "hot, deterministic, ddim"),
        (vec!["bench", "--what", "everything"], "train, sample, all"),
        (
            vec!["eval-fid", "--real", "r", "--fake", "f", "--test-formula-weights", "10", "--preset", "x"],
            "lidc, rad-chestct, none",
        ),
    ] {
        let started = std::time::Instant::now();
        let o = prdit(&args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(values), "{args:?}: {err}");
        assert!(!err.contains('\u{1b}'), "no colour codes in redirected output: {err:?}");
        assert!(started.elapsed().as_secs() < 30, "{args:?} ran before refusing");
    }
    assert!(!dir.path().join("out").exists());
}

#[test]
fn model_references_that_name_nothing_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // A path that does not exist: named once, with the OS's reason.
    let missing = dir.path().join("no-such-run");
    let o = prdit(&[
        "--device",
        "cpu",
        "sample",
        "--run",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(err.matches("no-such-run").count(), 1, "{err}");
    assert!(err.contains("No such file"), "{err}");
    // A folder without checkpoints.
    let o = prdit(&[
        "--device",
        "cpu",
        "sample",
        "--run",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(err.contains("run directory with a complete checkpoint"), "{err}");
    // A phantom set of no volumes: the flag is named.
    let o = prdit(&["phantom", "--out", out.to_str().unwrap(), "--num", "0"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("--num"), "{err}");
}

/// `demo --device cuda` without a GPU fails before writing anything.
#[test]
fn demo_checks_the_device_before_writing() {
    if Path::new("/dev/nvidia0").exists() {
        return; // a GPU is there: the demo would run for real
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = prdit(&["--device", "cuda", "demo", "--out", out.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(!out.exists(), "the demo wrote {} before failing: {err}", out.display());
}

/// Every subcommand's help ends with real examples; GPU kernel-cache flags appear only where a
/// network runs on a device.
#[test]
fn help_has_examples_and_no_gpu_clutter() {
    for cmd in [
        "train-local",
        "train-global",
        "train-highres",
        "sample",
        "eval-fid",
        "eval-diversity",
        "prepare",
        "phantom",
        "demo",
        "bench",
        "warmup",
        "inspect",
    ] {
        let (out, _) = text(&prdit(&[cmd, "--help"]));
        assert!(out.contains("Example") && out.contains(&format!("prdit {cmd} ")), "{cmd}: {out}");
        let gpu = !matches!(cmd, "eval-diversity" | "prepare" | "phantom" | "inspect");
        assert_eq!(out.contains("--kernel-cache"), gpu, "{cmd}");
    }
}

/// The demo end to end (2 steps per stage instead of its 300 and 400): runs with curves,
/// samples with previews, and the tissue mix of samples next to the training phantoms.
#[test]
fn demo_runs_and_reports_what_it_generated() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = prdit(&["--device", "cpu", "demo", "--out", out.to_str().unwrap(), "--steps", "2"]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        stdout.contains("training phantoms  air ") && stdout.contains("generated volumes  air "),
        "{stdout}"
    );
    assert!(stdout.contains("lung volume"), "{stdout}");
    for run in ["runs/local", "runs/global"] {
        assert!(out.join(run).join("progress.png").is_file(), "{run}");
    }
    assert!(out.join("samples/previews/sample-00001.png").is_file());
    assert!(!stdout.contains('\u{1b}') && !err.contains('\u{1b}'), "no ANSI codes off a terminal");
}
