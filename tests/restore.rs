//! `prdit restore` through the real binary on a tiny trained model: each task writes its
//! measurement, reconstructions that meet it (exactly where the data consistency is a
//! projection), scores against the known volume, K draws with their mean, standard deviation
//! and the Spearman correlation; a re-run keeps what exists; bad inputs are named.

mod common;

use common::run::*;
use serde_json::Value;

#[test]
fn each_task_restores_meets_its_measurement_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 8);
    let cfg1 = config(dir.path(), "local.toml", &data, 0, "total_steps = 6\n");
    let run1 = dir.path().join("local");
    ok(&train("train-local", &cfg1, &run1, &[], &[]));
    let cfg2 = config(dir.path(), "global.toml", &data, 1, "total_steps = 2\n");
    let run2 = dir.path().join("global");
    ok(&train("train-global", &cfg2, &run2, &["--local", run1.to_str().unwrap()], &[]));
    let known = data.join("phantom-00000.nii.gz");
    let restore = |task: &str, out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "restore",
            "--task",
            task,
            "--run",
            run2.to_str().unwrap(),
            "--simulate",
            known.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if !extra.contains(&"--sampler") {
            args.extend_from_slice(&["--sampler", "unipc", "--steps", "4"]);
        }
        args.extend_from_slice(extra);
        (prdit(&args, &[]), out)
    };
    let manifest = |out: &std::path::Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap()
    };
    for (task, extra, exact, measured) in [
        ("sr", vec!["--factor", "2"], true, [8, 8, 8]),
        ("sr", vec!["--factor", "4", "--z-only"], true, [4, 16, 16]),
        ("infill", vec!["--num", "3"], true, [16, 16, 16]),
        ("deblur", vec!["--kernel", "3", "--sigma", "1"], false, [16, 16, 16]),
    ] {
        let name = format!("{task}-{}", extra.join(""));
        let (o, out) = restore(task, &name, &extra);
        ok(&o);
        let m = manifest(&out);
        let y = prdit::data::nifti::read_volume(&out.join("measurement.nii.gz")).unwrap();
        assert_eq!(y.dims, measured, "{name}");
        assert!(out.join("preview.png").is_file());
        for r in m["volumes"].as_array().unwrap() {
            let residual = r["residual"].as_f64().unwrap();
            assert!(if exact { residual < 1e-5 } else { residual < 0.5 }, "{name}: residual {residual}");
            assert!(r["scores"]["psnr_db"].as_f64().unwrap().is_finite(), "{name}: {r}");
            let vol = prdit::data::nifti::read_volume(&out.join(r["file"].as_str().unwrap())).unwrap();
            assert_eq!(vol.dims, [16; 3]);
        }
        if task == "infill" {
            assert_eq!(m["volumes"].as_array().unwrap().len(), 3);
            assert!(out.join("mean.nii.gz").is_file() && out.join("std.nii.gz").is_file());
            let rho = m["spearman_std_error"].as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&rho), "{rho}");
            // A re-run keeps the reconstructions; other settings into the folder are refused.
            let before = std::fs::read(out.join("restored-00001.nii.gz")).unwrap();
            ok(&restore(task, &name, &extra).0);
            assert_eq!(std::fs::read(out.join("restored-00001.nii.gz")).unwrap(), before);
            let e = err(&restore(task, &name, &["--num", "3", "--seed", "9"]).0);
            assert!(
                e.contains("manifest.json") && e.contains("another model, measurement or settings"),
                "{e}"
            );
        }
    }
    // The guided sampler (a few steps here) and bad inputs.
    let (o, out) = restore("sr", "guided", &["--factor", "2", "--sampler", "guided", "--steps", "10"]);
    ok(&o);
    assert_eq!(manifest(&out)["network_calls"], 10);
    let e = err(&restore("sr", "bad-factor", &["--factor", "3"]).0);
    assert!(e.contains("3 does not divide the volume's edge 16"), "{e}");
    let e = err(&restore("infill", "bad-box", &["--box", "4,4,4,20,8,8"]).0);
    assert!(e.contains("not a box inside 16³"), "{e}");
    let small = phantoms(dir.path(), "small", 1, 8);
    let e = err(&prdit(
        &[
            "restore",
            "--task",
            "deblur",
            "--run",
            run2.to_str().unwrap(),
            "--input",
            small.join("phantom-00000.nii.gz").to_str().unwrap(),
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ],
        &[],
    ));
    assert!(e.contains("phantom-00000.nii.gz") && e.contains("16³"), "{e}");
}
