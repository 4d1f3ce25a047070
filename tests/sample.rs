//! `prdit sample` and `prdit train-highres` through the real binary: volumes with the right
//! header, reproducible and resumable jobs, HU output, and a tiny 16³ → 32³ refinement that
//! trains and samples.

mod common;

use std::path::Path;

use burn::tensor::Device;
use common::run::*;
use prdit::Prdit;
use prdit::data::nifti::read_volume;
use prdit::model::highres::PrditSr;
use prdit::weights::{checkpoint, export};

fn sample(args: &[&str]) -> String {
    let mut a = vec!["sample"];
    a.extend_from_slice(args);
    ok(&prdit(&a, &[]))
}

fn float32_header(path: &Path) -> bool {
    use nifti::NiftiObject;
    let obj = nifti::ReaderOptions::new().read_file(path).unwrap();
    obj.header().datatype == 16 && obj.header().bitpix == 32
}

#[test]
fn sampling_writes_reproducible_resumable_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 6);
    let cfg = config(dir.path(), "run.toml", &data, 0, "total_steps = 4\n");
    let run = dir.path().join("run");
    ok(&train("train-local", &cfg, &run, &[], &[]));
    let out = dir.path().join("out");
    let (run_s, out_s) = (run.to_str().unwrap(), out.to_str().unwrap());
    let args = ["--run", run_s, "--out", out_s, "--num", "3", "--batch", "2", "--steps", "10", "--x0"];
    sample(&args);
    let spacing = prdit::data::phantom::FOV_MM / 16.0;
    for i in 0..3 {
        for sub in ["xs", "x0"] {
            let f = out.join(format!("{sub}/sample-0000{i}.nii.gz"));
            let v = read_volume(&f).unwrap();
            assert_eq!(v.dims, [16, 16, 16]);
            assert_eq!(v.spacing, [spacing; 3], "spacing of the training data");
            assert!(v.first_non_finite().is_none());
            assert!(float32_header(&f));
        }
        assert!(out.join(format!("previews/sample-0000{i}.png")).is_file());
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["volumes"].as_array().unwrap().len(), 3);
    assert_eq!(manifest["source"]["weights"], "ema");
    assert_eq!(manifest["source"]["sha256"].as_str().unwrap().len(), 64);

    // Re-running skips what exists; a lost volume comes back bit-identical.
    let kept = std::fs::read(out.join("xs/sample-00002.nii.gz")).unwrap();
    let before = std::fs::metadata(out.join("xs/sample-00000.nii.gz")).unwrap().modified().unwrap();
    std::fs::remove_file(out.join("xs/sample-00002.nii.gz")).unwrap();
    sample(&args);
    assert_eq!(std::fs::metadata(out.join("xs/sample-00000.nii.gz")).unwrap().modified().unwrap(), before);
    assert_eq!(std::fs::read(out.join("xs/sample-00002.nii.gz")).unwrap(), kept);

    // Another seed into the same folder is refused.
    let mut other = args.to_vec();
    other.extend_from_slice(&["--seed", "5"]);
    let e = err(&prdit(&[&["sample"], &other[..]].concat(), &[]));
    assert!(e.contains("manifest.json"), "{e}");

    // HU with the window recorded for the training data (the phantom's dataset.json).
    let hu = dir.path().join("hu");
    sample(&[
        "--run",
        run_s,
        "--out",
        hu.to_str().unwrap(),
        "--num",
        "1",
        "--steps",
        "5",
        "--sampler",
        "deterministic",
        "--hu",
    ]);
    let v = read_volume(&hu.join("xs/sample-00000.nii.gz")).unwrap();
    let (lo, hi) = v.min_max();
    assert!(lo < -200.0 && hi > -1500.0 && hi < 3000.0, "HU range [{lo}, {hi}]");
}

#[test]
fn tiny_highres_refinement_trains_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let low = data(dir.path(), 6);
    let cfg1 = config(dir.path(), "local.toml", &low, 0, "total_steps = 4\n");
    let cfg2 = config(dir.path(), "global.toml", &low, 1, "total_steps = 4\n");
    let (run1, run2) = (dir.path().join("local"), dir.path().join("global"));
    ok(&train("train-local", &cfg1, &run1, &[], &[]));
    ok(&train("train-global", &cfg2, &run2, &["--local", run1.to_str().unwrap()], &[]));

    let high = phantoms(dir.path(), "high", 6, 32);
    let text = std::fs::read_to_string(&cfg2).unwrap().replace(low.to_str().unwrap(), high.to_str().unwrap());
    let cfg3 = dir.path().join("highres.toml");
    std::fs::write(
        &cfg3,
        format!(
            "{text}[highres]\nbase = \"{}\"\ntarget_size = 32\nsr_hidden_size = 48\nsr_patch_size = 4\nsr_stride = 2\nsr_padding = 1\n",
            run2.display()
        ),
    )
    .unwrap();
    let run3 = dir.path().join("highres");
    let out = ok(&train("train-highres", &cfg3, &run3, &[], &[]));
    assert!(out.contains("finished at step 4/4"), "{out}");
    let l = losses(&run3);
    assert_eq!(l.len(), 4);
    assert!(l.iter().all(|(_, v)| v.is_finite()));

    // The base is frozen: bit-identical to the stage-2 weights it came from.
    let device = Device::flex();
    let base = export::state_dict(
        &checkpoint::load::<Prdit>(&run2.join("checkpoints/step-000000004/model.bpk"), &device).unwrap(),
    );
    let sr = export::state_dict(
        &checkpoint::load::<PrditSr>(&run3.join("checkpoints/step-000000004/model.bpk"), &device).unwrap(),
    );
    for (k, v) in &base {
        assert_eq!(v, &sr[&format!("base.{k}")], "base.{k}");
    }
    // Stage-2 data of the wrong size for the refinement is refused.
    let e =
        err(&train("train-highres", &cfg3, &dir.path().join("bad"), &["--data", low.to_str().unwrap()], &[]));
    assert!(e.contains("32³"), "{e}");

    // Sampling a refinement run generates target-size volumes.
    let out = dir.path().join("samples");
    sample(&["--run", run3.to_str().unwrap(), "--out", out.to_str().unwrap(), "--num", "1", "--steps", "5"]);
    assert_eq!(read_volume(&out.join("xs/sample-00000.nii.gz")).unwrap().dims, [32, 32, 32]);
}
