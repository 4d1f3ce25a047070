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
        ("xray", vec!["--views", "3"], false, [3, 16, 16]),
        ("xray", vec!["--angles", "0,90"], false, [2, 16, 16]),
    ] {
        let name = format!("{task}-{}", extra.join(""));
        let (o, out) = restore(task, &name, &extra);
        ok(&o);
        let m = manifest(&out);
        let y = prdit::data::nifti::read_volume(&out.join("measurement.nii.gz")).unwrap();
        assert_eq!(y.dims, measured, "{name}");
        assert!(out.join("preview.png").is_file());
        let r = prdit::data::nifti::read_volume(&out.join("residual.nii.gz")).unwrap();
        assert_eq!(r.dims, measured, "{name}: the residual has the measurement's shape");
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
    let (o, out) = restore("xray", "xray-guided", &["--views", "1", "--sampler", "guided", "--steps", "10"]);
    ok(&o);
    assert_eq!(manifest(&out)["options"]["views"], 1);
    let e = err(&restore("xray", "bad-views", &["--views", "0"]).0);
    assert!(e.contains("at least one view") && e.contains("--views"), "{e}");
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

/// Parity with TF-PRDiT's guided samplers (`tests/fixtures/restore`, or `PRDIT_RESTORE_DIR`,
/// made by `scripts/make-restore-fixture.py` from their own sampling code, with the original
/// PRDiT network on the weights of the parity fixture and injected noise): the measurement, the
/// first step's network output and guidance gradient, and the returned image after the
/// fixture's steps, for each task. The settings come from the fixture's `restore_meta.json`.
#[test]
fn guided_samplers_match_tf_prdit() {
    use burn::tensor::{Device, Tensor};
    use common::*;
    use prdit::diffusion::{InjectedNoise, NoiseSource};
    use prdit::restore::{Guidance, Operator, guided, ops::gaussian_taps};

    // Relative to the largest reference value, about ten times what was measured on the shipped
    // fixture (2-core CPU): the measurements ≤ 5.1e-7, the network's first output ≤ 5.9e-7, the
    // first guidance gradients ≤ 5.6e-7, the images returned after ten steps ≤ 5.8e-7 (the blur as
    // three 1D passes).
    const Y_TOL: f64 = 5e-6;
    const FIRST_TOL: f64 = 6e-6;
    const OUT_TOL: f64 = 6e-6;

    let dir = fixture_dir("PRDIT_RESTORE_DIR", "restore");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("restore_meta.json")).unwrap()).unwrap();
    let sha = prdit::sample::sha256_file(&parity_dir().join("parity_weights.safetensors")).unwrap();
    assert_eq!(
        meta["parity_files_sha256"]["parity_weights.safetensors"].as_str(),
        Some(sha.as_str()),
        "the fixture was made on the weights of PRDIT_PARITY_DIR"
    );
    let device = Device::flex();
    let (model, _) = common::checks::model(&device);
    let r = read_fixture(dir.join("restore_reference.safetensors"));
    let vol = |key: &str| -> Tensor<5> {
        let t = &r[key];
        let s = &t.shape[t.shape.len() - 3..];
        Tensor::from_data(burn::tensor::TensorData::new(t.data.clone(), [1, 1, s[0], s[1], s[2]]), &device)
    };
    let steps = meta["steps"].as_u64().unwrap() as usize;
    let pairs: Vec<(usize, usize)> = meta["time_grid_pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_u64().unwrap() as usize))
        .collect();
    assert_eq!(pairs, prdit::diffusion::time_grid(steps).unwrap(), "the official grid");
    let draws = r["noise"].shape[0];
    let noise: Vec<Tensor<5>> = (0..draws)
        .map(|q| tensor::<6>(&r["noise"], &device).narrow(0, q, 1).reshape([1, 1, 16, 16, 16]))
        .collect();
    let start = vol("start");
    let truth = vol("truth");
    // The network's first call (t = the grid's first time).
    let (eps1, x01) = prdit::diffusion::Denoiser::predict(&model, start.clone(), &[pairs[0].0 as f32]);
    assert_close("eps at the first step", &host(eps1), &r["eps1"], FIRST_TOL);
    assert_close("x0 at the first step", &host(x01.clone()), &r["x0raw1"], FIRST_TOL);
    for task in ["sr", "infill", "deblur"] {
        let t = &meta["tasks_meta"][task];
        let o = &t["operator"];
        let op = match task {
            "sr" => {
                Operator::Downsample { factor: o["scale_factor"].as_u64().unwrap() as usize, axes: [true; 3] }
            }
            "infill" => Operator::Mask { keep: Box::new(vol("mask_infill")) },
            _ => Operator::Blur {
                taps: gaussian_taps(
                    o["kernel_size"].as_u64().unwrap() as usize,
                    o["sigma"].as_f64().unwrap(),
                )
                .unwrap(),
            },
        };
        let g = Guidance {
            k: t["k_forward_step"].as_u64().unwrap() as usize,
            rho: t["rho_guidance_scale"].as_f64().unwrap(),
            cosine_weight: !t["w"].as_str().unwrap().starts_with('1'),
            noise_weight: t["lambda_n_noise_weight"].as_f64().unwrap(),
            cutoff: t["cutoff"].as_u64().unwrap() as usize,
            replace_measured: task == "infill",
        };
        let defaults = match task {
            "sr" => Guidance::SR,
            "infill" => Guidance::INFILL,
            _ => Guidance::DEBLUR,
        };
        assert_eq!(g, defaults, "{task}: prdit's defaults are TF-PRDiT's");
        let y = op.apply(truth.clone());
        assert_close(&format!("{task}: y"), &host(y.clone()), &r[&format!("y_{task}")], Y_TOL);
        let res = op.apply(x01.clone()) - y.clone();
        let norm = res.clone().square().sum().sqrt().into_scalar::<f64>();
        assert_close(
            &format!("{task}: first gradient"),
            &host(op.adjoint(res) / norm),
            &r[&format!("g1_{task}")],
            FIRST_TOL,
        );
        let mut injected = InjectedNoise::new(noise.clone());
        let out = guided(&model, (&op, &y), start.clone(), steps, g, &mut injected, &mut |_, _| {}).unwrap();
        assert_eq!(injected.remaining(), 0, "{task}: every corrector draw used, in order");
        assert!(injected.draw([1, 1, 16, 16, 16], &device).is_err());
        assert_close(&format!("{task}: returned image"), &host(out), &r[&format!("out_{task}")], OUT_TOL);
    }
}
