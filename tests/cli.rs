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
        (vec!["sample", "--run", "nowhere", "--out", out, "--sampler", "rk4"], "hot, deterministic, ddim"),
        (vec!["sample", "--run", "nowhere", "--out", out, "--process", "ddpm"], "ian, flow"),
        (
            vec!["bench", "--what", "everything"],
            "train, train-local, train-global, train-highres, sample, all",
        ),
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

    // Re-run in place with more steps: the runs continue, and the samples of the earlier
    // checkpoint make way for the new one's.
    let sha = |out: &Path| -> String {
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("samples/manifest.json")).unwrap())
                .unwrap();
        m["source"]["sha256"].as_str().unwrap().to_string()
    };
    let before = sha(&out);
    let o = prdit(&["--device", "cpu", "demo", "--out", out.to_str().unwrap(), "--steps", "3"]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(stdout.contains("removed") && stdout.contains("earlier checkpoint"), "{stdout}");
    assert_ne!(sha(&out), before, "the samples come from the new checkpoint");
    assert!(out.join("samples/xs/sample-00001.nii.gz").is_file());
}

/// Settings a command would not honour are refused by name, and a config named without a
/// folder works from its own folder.
#[test]
fn flags_that_would_be_ignored_are_refused() {
    use common::run::{config, data};
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 4);
    config(dir.path(), "my.toml", &data, 0, "total_steps = 1\n");
    let in_dir = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_prdit"))
            .args(["--device", "cpu", "--quiet"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("prdit runs")
    };
    // `--config my.toml`: the config's folder is the working directory.
    let o = in_dir(&["train-local", "--config", "my.toml", "--out", "run"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(dir.path().join("run/checkpoints").is_dir());

    let refused = |args: &[&str], want: &[&str], unwritten: &str| {
        let o = in_dir(args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(want.iter().all(|w| err.contains(w)), "{args:?}: {err}");
        assert!(!dir.path().join(unwritten).exists(), "{args:?} wrote {unwritten}");
    };
    let hu = data.join("hu");
    let hu = hu.to_str().unwrap();
    // The official recipes compute their own window (and RAD-ChestCT does not resample).
    refused(
        &["prepare", "--input", hu, "--out", "lidc", "--recipe", "lidc", "--window=-1000,1000"],
        &["--window", "generic"],
        "lidc/dataset.json",
    );
    refused(
        &["prepare", "--input", hu, "--out", "rad", "--recipe", "rad-chestct", "--spacing", "1.5"],
        &["--spacing", "generic"],
        "rad/dataset.json",
    );
    refused(
        &["prepare", "--input", hu, "--out", "small", "--recipe", "generic", "--size", "4"],
        &["--size"],
        "small/dataset.json",
    );
    // A kernel cache folder that cannot be made.
    std::fs::write(dir.path().join("file"), "").unwrap();
    refused(
        &["sample", "--run", "run", "--out", "s", "--steps", "2", "--kernel-cache", "file/cache"],
        &["file/cache", "kernel cache"],
        "s",
    );
    // No volumes per forward pass.
    let d = data.to_str().unwrap();
    refused(
        &[
            "eval-fid",
            "--real",
            d,
            "--fake",
            d,
            "--test-formula-weights",
            "10",
            "--preset",
            "none",
            "--batch",
            "0",
        ],
        &["--batch"],
        "none",
    );
}

/// `warmup` on a `[highres]` run compiles the refinement's shapes (its target size), not the
/// base model's.
#[test]
fn warmup_of_a_refinement_config_runs_the_refinement() {
    use common::run::{config, data};
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 2);
    let cfg = config(dir.path(), "hr.toml", &data, 1, "");
    let text0 = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{text0}[highres]\nbase = \"{}\"\ntarget_size = 32\nsr_hidden_size = 48\nsr_patch_size = 4\nsr_stride = 2\nsr_padding = 1\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let o = prdit(&["--device", "cpu", "warmup", "--config", cfg.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> =
        out.lines().filter(|l| l.starts_with("train ") || l.starts_with("pc-step ")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.iter().all(|l| l.contains("32^3") && !l.contains("16^3")), "{out}");
}

/// The full demo (its 300 + 400 steps; 122 s for the whole demo on the 2-core development
/// machine) generates the phantoms' anatomy: the mean tissue mix of its two samples is close to
/// the 24 training phantoms'. Measured (seeded, so every run gives the same up to float
/// rounding): air 27.9 % vs 34.5 %, lung 27.8 % vs 21.7 %, soft tissue 40.9 % vs 42.4 %, bone
/// 3.4 % vs 1.3 %, lung volume 12955 vs 10140 mL (the tiny model leaves some noise in the air
/// around the body, which the lung class counts). The bounds are about 1.5 times those
/// differences: 10 points per class, 45 % of the lung volume. A model that has not learnt the
/// anatomy misses them by far: after 2 steps per stage (`demo --steps 2`) the samples are air
/// 0.0 %, lung 17.2 %, soft tissue 82.8 %, bone 0.0 % (34 and 40 points off).
#[test]
fn the_full_demo_generates_the_phantoms_anatomy() {
    let dir = tempfile::tempdir().unwrap();
    let opts = prdit::demo::DemoOptions {
        out: dir.path().join("demo"),
        steps: None,
        device: burn::tensor::Device::flex(),
        progress: false,
        stop: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        process: prdit::diffusion::Process::Ian,
    };
    let started = std::time::Instant::now();
    let outcome = prdit::demo::run(&opts, &mut |_| {}).unwrap();
    eprintln!("the demo took {:.0} s", started.elapsed().as_secs_f64());
    let (real, fake) = outcome.anatomy.expect("the demo ran to the end");
    eprintln!("training phantoms  {real}\ngenerated volumes  {fake}");
    let classes = [
        ("air", real.air, fake.air),
        ("lung", real.lung, fake.lung),
        ("soft tissue", real.soft, fake.soft),
        ("bone", real.bone, fake.bone),
    ];
    for (name, r, f) in classes {
        assert!((f - r).abs() <= 0.10, "{name}: generated {f:.3}, training phantoms {r:.3}");
    }
    let rel = (fake.lung_ml - real.lung_ml).abs() / real.lung_ml;
    assert!(
        rel <= 0.45,
        "lung volume: generated {:.0} mL, training phantoms {:.0} mL",
        fake.lung_ml,
        real.lung_ml
    );
}
