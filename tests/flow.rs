//! Parity with PRDiT-FM, the authors' flow-matching PRDiT (`tests/fixtures/flow`, or the folder
//! in `PRDIT_FLOW_DIR`, made by `scripts/make-flow-fixture.py` from their own classes on the
//! CPU in float32). The models are built from the fixture's `flow_meta.json` (configuration,
//! batch, times, step counts), so a fixture made with other arguments runs through the same
//! tests. CPU backend (f32).

mod common;

use burn::tensor::Device;
use common::flow::*;
use common::*;
use prdit::PrditConfig;
use prdit::diffusion::Process;
use prdit::model::Prdit;
use prdit::weights::{self, Entry, StateDict};

// The fixture, its tolerances and the device-independent checks: `tests/common/flow.rs`.

#[test]
fn path_embedding_and_velocities_match() {
    common::flow::path_embedding_and_velocities_match(&Device::flex());
}

#[test]
fn losses_and_gradients_of_both_stages_match() {
    common::flow::losses_and_gradients_of_both_stages_match(&Device::flex());
}

#[test]
fn validation_reconstruction_matches() {
    common::flow::validation_reconstruction_matches(&Device::flex());
}

#[test]
fn euler_and_heun_samplers_match() {
    common::flow::euler_and_heun_samplers_match(&Device::flex());
}

#[test]
fn their_checkpoint_loads_strictly_and_only_as_a_flow_model() {
    let device = Device::flex();
    let meta = read_flow_meta();
    let (_, stage2) = models(&meta, &device);
    let want = weights::export::state_dict(&stage2).unwrap();
    let pt = flow_dir().join("flow_checkpoint.pt");
    for entry in [Entry::Ema, Entry::Model] {
        let sd = StateDict::open(&pt, entry).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(weights::heads_process(&sd), Some(Process::Flow), "read from the heads' shapes");
        let m = weights::load_official(&pt, entry, &meta.config, &device).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(weights::export::state_dict(&m).unwrap(), want, "{entry:?}");
    }
    // The same network for the diffusion (two output channels) refuses it, naming the heads.
    let ian = PrditConfig { out_channels: 2, ..meta.config.clone() };
    let err = weights::load_official(&pt, Entry::Ema, &ian, &device).unwrap_err().to_string();
    for needle in ["linear_final", "flow matching", "image-and-noise diffusion", "nothing was loaded"] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    // And a diffusion stage 1 (the parity fixture) does not become a flow model's frozen stage 1.
    let parity = StateDict::open(&parity_dir().join("parity_weights.safetensors"), Entry::Auto).unwrap();
    assert_eq!(weights::heads_process(&parity), Some(Process::Ian));
}

/// A flow run through the real binary, every stage: stage 1 learns (its loss falls, validation
/// is the reconstruction at t = 0.5), a killed run resumes to the same losses and bit-identical
/// weights, stage 2 keeps the frozen flow stage 1 exactly and refuses a diffusion stage 1, the
/// refinement trains on the flow base, and `sample` writes volumes with PRDiT-FM's Euler and
/// Heun and with UniPC, records the process, and refuses the diffusion's samplers.
#[test]
fn a_flow_run_trains_resumes_and_samples() {
    use common::run::*;
    use prdit::weights::{checkpoint, export};
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 10);
    let flow = "[diffusion]\nprocess = \"flow\"\n";
    let cfg1 = config(dir.path(), "local.toml", &data, 0, "total_steps = 12\neval_every = 6\n");
    let append = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, format!("{text}{flow}")).unwrap();
    };
    append(&cfg1);
    let run1 = dir.path().join("local");
    let out = ok(&train("train-local", &cfg1, &run1, &[], &[]));
    assert!(out.contains("finished at step 12/12"), "{out}");
    let log = std::fs::read_to_string(run1.join("train.log")).unwrap();
    assert!(log.contains("(velocity MSE)") && log.contains("reconstruction MSE at t = 0.5"), "{log}");
    let train_records = records(&run1, "train");
    assert!(train_records.iter().all(|r| r["loss_velocity"] == r["loss"] && r["loss_image"].is_null()));
    let l = losses(&run1);
    let mean = |s: &[(u64, f64)]| s.iter().map(|x| x.1).sum::<f64>() / s.len() as f64;
    assert!(mean(&l[8..]) < mean(&l[..4]), "the velocity loss falls: {l:?}");
    assert_eq!(records(&run1, "eval").len(), 2);
    assert!(run1.join("progress.png").is_file() && run1.join("previews/step-000000012.png").is_file());
    let recorded = std::fs::read_to_string(run1.join("config.toml")).unwrap();
    assert!(recorded.contains("[diffusion]") && recorded.contains("process = \"flow\""), "{recorded}");

    // Killed after step 10 (last checkpoint 8), resumed: the same run.
    let killed = dir.path().join("killed");
    let o = train("train-local", &cfg1, &killed, &[], &[("PRDIT_FAULT_INJECT", "abort-after-step:10")]);
    assert!(!o.status.success());
    ok(&train("train-local", &cfg1, &killed, &["--resume"], &[]));
    assert_eq!(losses(&killed), l, "bit-identical losses after the resume");
    let device = Device::flex();
    let weights = |run: &std::path::Path, step: u64| {
        let file = run.join(format!("checkpoints/step-{step:09}/model.bpk"));
        export::state_dict(&checkpoint::load::<Prdit>(&file, &device).unwrap()).unwrap()
    };
    assert_eq!(weights(&killed, 12), weights(&run1, 12), "bit-identical weights after the resume");

    // Stage 2 on the flow stage 1; a diffusion stage 1 is refused.
    let cfg2 = config(dir.path(), "global.toml", &data, 1, "total_steps = 4\n");
    append(&cfg2);
    let run2 = dir.path().join("global");
    let out = ok(&train("train-global", &cfg2, &run2, &["--local", run1.to_str().unwrap()], &[]));
    assert!(out.contains("finished at step 4/4"), "{out}");
    let (s1, s2) = (weights(&run1, 12), weights(&run2, 4));
    for (k, v) in &s1 {
        assert_eq!(v, &s2[k], "{k}: the frozen flow stage 1");
    }
    let ian1 = config(dir.path(), "ian-local.toml", &data, 0, "total_steps = 1\n");
    let ian_run = dir.path().join("ian-local");
    ok(&train("train-local", &ian1, &ian_run, &[], &[]));
    let e = err(&train(
        "train-global",
        &cfg2,
        &dir.path().join("mixed"),
        &["--local", ian_run.to_str().unwrap()],
        &[],
    ));
    assert!(e.contains("out_channels: 2 in the file, 1 asked"), "{e}");

    // The refinement of the flow model to 32³.
    let high = phantoms(dir.path(), "high", 6, 32);
    let text =
        std::fs::read_to_string(&cfg2).unwrap().replace(data.to_str().unwrap(), high.to_str().unwrap());
    let cfg3 = dir.path().join("highres.toml");
    let sr = "target_size = 32\nsr_hidden_size = 48\nsr_patch_size = 4\nsr_stride = 2\nsr_padding = 1\n";
    std::fs::write(&cfg3, format!("{text}[highres]\nbase = \"{}\"\n{sr}", run2.display())).unwrap();
    let run3 = dir.path().join("highres");
    let out = ok(&train("train-highres", &cfg3, &run3, &[], &[]));
    assert!(out.contains("finished at step 4/4"), "{out}");
    assert!(losses(&run3).iter().all(|(_, v)| v.is_finite()));

    // Sampling: PRDiT-FM's solvers by default, the few-step solvers through the time change.
    for (run, args, size) in [
        (&run2, vec!["--steps", "4"], 16),
        (&run2, vec!["--sampler", "heun", "--steps", "2"], 16),
        (&run2, vec!["--sampler", "unipc", "--steps", "4"], 16),
        (&run3, vec!["--steps", "2"], 32),
    ] {
        let out = dir.path().join(format!("samples-{}", args.join("-")));
        let mut all =
            vec!["sample", "--run", run.to_str().unwrap(), "--out", out.to_str().unwrap(), "--num", "1"];
        all.extend(args.iter().copied());
        ok(&prdit(&all, &[]));
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m["options"]["process"], "flow", "{m}");
        let sampler = args.iter().position(|a| *a == "--sampler").map_or("euler", |i| args[i + 1]);
        assert_eq!(m["options"]["sampler"], sampler, "{m}");
        let vol = prdit::data::nifti::read_volume(&out.join("xs/sample-00000.nii.gz")).unwrap();
        assert_eq!(vol.dims, [size; 3]);
        assert!(vol.data.iter().all(|v| v.is_finite()));
    }
    let out = dir.path().join("refused");
    for (args, needle) in [
        (vec!["--sampler", "hot"], "sampler of the image-and-noise diffusion"),
        (vec!["--process", "ian"], "it holds a model of flow matching, not image-and-noise diffusion"),
    ] {
        let mut all = vec!["sample", "--run", run2.to_str().unwrap(), "--out", out.to_str().unwrap()];
        all.extend(args.iter().copied());
        let e = err(&prdit(&all, &[]));
        assert!(e.contains(needle), "{e}");
    }
    let e = err(&prdit(
        &["sample", "--run", ian_run.to_str().unwrap(), "--out", out.to_str().unwrap(), "--sampler", "euler"],
        &[],
    ));
    assert!(e.contains("euler is flow matching's sampler"), "{e}");
}

/// `prdit sample` on PRDiT-FM's own checkpoint: the process is read from its heads (and said),
/// the weights load strictly, and `--process ian` is refused by the strict load.
#[test]
fn sample_reads_their_checkpoint_as_a_flow_model() {
    use common::run::*;
    let dir = tempfile::tempdir().unwrap();
    let meta = read_flow_meta();
    let model = dir.path().join("model.toml");
    std::fs::write(&model, toml::to_string(&PrditConfig { out_channels: 2, ..meta.config.clone() }).unwrap())
        .unwrap();
    let pt = flow_dir().join("flow_checkpoint.pt");
    let out = dir.path().join("fm");
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "sample".to_string(),
            "--checkpoint".into(),
            pt.to_str().unwrap().into(),
            "--model".into(),
            model.to_str().unwrap().into(),
            "--out".into(),
            out.to_str().unwrap().into(),
            "--num".into(),
            "1".into(),
            "--steps".into(),
            "2".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&'static str]| {
        let a = args(extra);
        prdit(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[("PRDIT_LOG", "info")])
    };
    let o = run(&[]);
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(&o);
    assert!(log.contains("its output heads are for flow matching"), "{log}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        (m["options"]["process"].as_str(), m["options"]["sampler"].as_str()),
        (Some("flow"), Some("euler"))
    );
    let e = err(&run(&["--process", "ian"]));
    assert!(e.contains("its output heads are for flow matching, not image-and-noise diffusion"), "{e}");
}

/// `prdit demo --process flow`, shortened to 2 steps per stage: the flow runs and samples go
/// to their own folders, next to where the diffusion demo's would be.
#[test]
fn the_flow_demo_runs_into_its_own_folders() {
    use common::run::*;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let text =
        ok(&prdit(&["demo", "--out", out.to_str().unwrap(), "--process", "flow", "--steps", "2"], &[]));
    assert!(text.contains("noisy at t = 0.5") && text.contains("generated volumes"), "{text}");
    for run in ["runs/local-flow", "runs/global-flow"] {
        let cfg = std::fs::read_to_string(out.join(run).join("config.toml")).unwrap();
        assert!(cfg.contains("process = \"flow\""), "{run}: {cfg}");
    }
    assert!(!out.join("runs/local").exists() && !out.join("samples").exists());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("samples-flow/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["options"]["process"], "flow");
    assert_eq!((m["options"]["sampler"].as_str(), m["options"]["steps"].as_u64()), (Some("euler"), Some(30)));
    assert_eq!(m["volumes"].as_array().unwrap().len(), 2);
}
