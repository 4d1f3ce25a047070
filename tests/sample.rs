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

/// A stage-1 run of 4 steps on 6 phantoms in `dir/run`.
fn trained_run(dir: &Path) -> std::path::PathBuf {
    let data = data(dir, 6);
    let cfg = config(dir, "run.toml", &data, 0, "total_steps = 4\n");
    let run = dir.join("run");
    ok(&train("train-local", &cfg, &run, &[], &[]));
    run
}

fn float32_header(path: &Path) -> bool {
    use nifti::NiftiObject;
    let obj = nifti::ReaderOptions::new().read_file(path).unwrap();
    obj.header().datatype == 16 && obj.header().bitpix == 32
}

#[test]
fn sampling_writes_reproducible_resumable_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained_run(dir.path());
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
    // The same volume in model space, mapped through the window the run records for its
    // training data: [−1, 1] → [min, max] HU.
    let model_space = dir.path().join("model-space");
    let ms_args = ["--run", run_s, "--num", "1", "--steps", "5", "--sampler", "deterministic"];
    sample(&[&ms_args[..], &["--out", model_space.to_str().unwrap()]].concat());
    let m = read_volume(&model_space.join("xs/sample-00000.nii.gz")).unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("data.json")).unwrap()).unwrap();
    let (w0, w1) = (info["window_hu"][0].as_f64().unwrap(), info["window_hu"][1].as_f64().unwrap());
    let worst = v
        .data
        .iter()
        .zip(&m.data)
        .map(|(h, x)| (*h as f64 - (w0 + (*x as f64 + 1.0) / 2.0 * (w1 - w0))).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-3 * (w1 - w0), "HU differs from the windowed model-space volume by {worst}");

    // Flags that this job would not use are refused by name.
    let refused = |extra: &[&str], want: &str| {
        let out = dir.path().join("refused");
        let e =
            err(&prdit(&[&["sample"], &ms_args[..], &["--out", out.to_str().unwrap()], extra].concat(), &[]));
        assert!(e.contains(want), "{extra:?}: {e}");
        assert!(!out.join("xs").exists(), "{extra:?} wrote volumes");
    };
    refused(&["--window=-1000,1000"], "--window");
    refused(&["--k", "3"], "the jump of the hot sampler");
    refused(&["--model", "PRDiT-B/12/4"], "records its network");
    refused(&["--entry", "ema"], "official full checkpoint");
    refused(&["--size", "16"], "--model");

    // A corrupt record of the run's data is an error naming it, not default headers.
    std::fs::write(run.join("data.json"), "{ not json").unwrap();
    refused(&[], "data.json");
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
    // A refinement config: the stage-2 settings on 32³ data, and `[highres]` starting with `first`.
    let highres = |name: &str, first: String| {
        let path = dir.path().join(name);
        let sr = "target_size = 32\nsr_hidden_size = 48\nsr_patch_size = 4\nsr_stride = 2\nsr_padding = 1\n";
        std::fs::write(&path, format!("{text}[highres]\n{first}\n{sr}")).unwrap();
        path
    };
    let cfg3 = highres("highres.toml", format!("base = \"{}\"", run2.display()));
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
    )
    .unwrap();
    let sr = export::state_dict(
        &checkpoint::load::<PrditSr>(&run3.join("checkpoints/step-000000004/model.bpk"), &device).unwrap(),
    )
    .unwrap();
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

    // Phase 3b (`configs/lidc-highres-finetune.toml`): the whole refinement model continues from
    // the 3a run and the base's transformer trains too; its stage 1 (coarse branch and coarse
    // head) stays as it was.
    let cfg4 = highres("finetune.toml", format!("init = \"{}\"\nfinetune_base = true", run3.display()));
    let run4 = dir.path().join("finetune");
    let out = ok(&train("train-highres", &cfg4, &run4, &["--steps", "2"], &[]));
    assert!(out.contains("finished at step 2/2"), "{out}");
    let tuned = export::state_dict(
        &checkpoint::load::<PrditSr>(&run4.join("checkpoints/step-000000002/model.bpk"), &device).unwrap(),
    )
    .unwrap();
    let (mut kept, mut moved) = (0, 0);
    for (k, v) in &sr {
        let stage1 = k.starts_with("base.coarse.") || k.starts_with("base.t_embedder.coarse_head.");
        let trained = k.starts_with("base.fine.") || k.starts_with("sr.") || k.starts_with("t_embedder_sr.");
        if stage1 {
            assert_eq!(v, &tuned[k], "{k} is stage 1: frozen in phase 3b");
            kept += 1;
        } else if trained && v != &tuned[k] {
            moved += 1;
        }
    }
    assert!(kept > 0, "the base's stage 1 is in the model");
    assert!(
        sr.keys().filter(|k| k.starts_with("base.fine.")).any(|k| sr[k] != tuned[k]),
        "the base's transformer trains in phase 3b"
    );
    assert!(moved > 0);
}

/// A job killed after a volume's files but before its manifest entry: the re-run records it
/// (and a scratch file of an interrupted write is removed); a second job into the same folder
/// while one runs is refused; weights with NaN are refused naming the tensor.
#[test]
fn sampling_recovers_from_kills_and_refuses_bad_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained_run(dir.path());
    let out = dir.path().join("out");
    let (run_s, out_s) = (run.to_str().unwrap(), out.to_str().unwrap());
    let args = ["sample", "--run", run_s, "--out", out_s, "--num", "3", "--batch", "1", "--steps", "5"];
    let o = prdit(&args, &[("PRDIT_FAULT_INJECT", "abort-before-manifest:1")]);
    assert!(!o.status.success());
    assert!(out.join("xs/sample-00001.nii.gz").is_file());
    std::fs::write(out.join("xs/.partial-1-0-sample-00002.nii.gz"), b"torn").unwrap();
    let o = prdit(&args, &[]);
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("sample-00001.nii.gz: recorded in the manifest"), "{stderr}");
    assert!(stderr.contains(".partial-1-0-sample-00002.nii.gz"), "{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let indices: Vec<u64> =
        manifest["volumes"].as_array().unwrap().iter().map(|v| v["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, [0, 1, 2]);
    assert!(!out.join("xs/.partial-1-0-sample-00002.nii.gz").exists());

    // One job per folder: hold the folder's lock as a running job does.
    let lock = prdit::fsio::FolderLock::acquire(&out).unwrap();
    let e = err(&prdit(&args, &[]));
    assert!(e.contains("in use by another prdit process"), "{e}");
    drop(lock);

    // A checkpoint whose EMA weights hold a NaN: refused, naming the file and the tensor.
    let ckpt = std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().map(|e| e.path()).max().unwrap();
    let device = Device::flex();
    let m = checkpoint::load::<Prdit>(&ckpt.join("ema.bpk"), &device).unwrap();
    let mut sd = export::state_dict(&m).unwrap();
    sd.get_mut("coarse.mlp_denoise.linear_final.bias").unwrap().data[3] = f32::NAN;
    let bad = prdit::weights::prdit_from_state_dict(
        m.config(),
        &prdit::weights::StateDict::from_host("in-memory", sd),
        &device,
    );
    let e = bad.expect_err("a NaN in an official-format state dict is refused").to_string();
    assert!(e.contains("linear_final.bias") && e.contains("non-finite"), "{e}");
    let m = checkpoint::load::<Prdit>(&ckpt.join("model.bpk"), &device).unwrap();
    let poisoned = poison(m);
    checkpoint::save_model(&poisoned, &ckpt.join("ema.bpk")).unwrap();
    let nan_out = dir.path().join("nan");
    let e = err(&prdit(
        &["sample", "--run", run_s, "--out", nan_out.to_str().unwrap(), "--num", "1", "--steps", "5"],
        &[],
    ));
    assert!(e.contains("ema.bpk") && e.contains("non-finite"), "{e}");
    assert!(!nan_out.join("xs").exists() || std::fs::read_dir(nan_out.join("xs")).unwrap().next().is_none());
}

/// The model with its first parameter's first value set to NaN.
fn poison(m: Prdit) -> Prdit {
    use burn::module::{Module, ModuleMapper, Param};
    use burn::tensor::Tensor;
    struct First(bool);
    impl ModuleMapper for First {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, t, mapper) = param.consume();
            let t = if self.0 {
                t
            } else {
                self.0 = true;
                let dims = t.dims();
                let n: usize = dims.iter().product();
                let mut v = t.into_data().try_into_vec_as::<f32>().unwrap();
                assert_eq!(v.len(), n);
                v[0] = f32::NAN;
                Tensor::from_data(burn::tensor::TensorData::new(v, dims), &Device::flex())
            };
            Param::from_mapped_value(id, t, mapper)
        }
    }
    m.map(&mut First(false))
}

/// The few-step ODE solvers through the command line: one network call per step (Heun two),
/// recorded in the manifest; the official samplers refuse another grid.
#[test]
fn ode_solvers_sample_in_few_steps() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained_run(dir.path());
    for (sampler, grid, calls) in [
        ("dpm2m", None, 10),
        ("dpm3m", Some("uniform"), 10),
        ("unipc", None, 10),
        ("unipc", Some("fitted"), 10),
        ("ddim", None, 10),
        ("heun", Some("edm"), 19),
    ] {
        let out = dir.path().join(format!("{sampler}-{}", grid.unwrap_or("default")));
        let mut args = vec![
            "--run",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--num",
            "2",
            "--batch",
            "2",
        ];
        args.extend(["--steps", "10", "--sampler", sampler]);
        if let Some(g) = grid {
            args.extend(["--grid", g]);
        }
        sample(&args);
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m["network_calls_per_volume"], calls, "{sampler}");
        assert_eq!(m["options"]["sampler"], sampler);
        for i in 0..2 {
            let v = read_volume(&out.join(format!("xs/sample-0000{i}.nii.gz"))).unwrap();
            assert!(v.first_non_finite().is_none(), "{sampler}");
        }
        // A fitted grid is recorded: 10 times from 999 down, then 0.
        let t = &m["fitted_times"];
        if grid == Some("fitted") {
            let t: Vec<f64> = t.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!((t.len(), t[0], t[10]), (11, 999.0, 0.0), "{t:?}");
            assert!(t.windows(2).all(|w| w[1] < w[0]), "{t:?}");
        } else {
            assert!(t.is_null(), "{sampler}: {t}");
        }
    }
    // Resuming a fitted job regenerates a lost volume on the recorded grid, exactly.
    let out = dir.path().join("unipc-fitted");
    let lost = out.join("xs/sample-00001.nii.gz");
    let before = read_volume(&lost).unwrap();
    std::fs::remove_file(&lost).unwrap();
    let manifest_before = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    let args = ["--run", run.to_str().unwrap(), "--out", out.to_str().unwrap(), "--num", "2", "--batch", "2"];
    sample(&[&args[..], &["--steps", "10", "--sampler", "unipc", "--grid", "fitted"]].concat());
    assert_eq!(read_volume(&lost).unwrap().data, before.data);
    let m = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["fitted_times"].clone();
    assert_eq!(m(&std::fs::read_to_string(out.join("manifest.json")).unwrap()), m(&manifest_before));
    let e = err(&prdit(&[&["sample"], &args[..], &["--sampler", "heun", "--grid", "fitted"]].concat(), &[]));
    assert!(e.contains("--grid") && e.contains("heun"), "{e}");
    // A folder written before `--field` (its manifest has none: the image head's flow) is not
    // continued on the official field, and is on the image head's.
    let out = dir.path().join("unipc-default");
    let path = out.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["options"].as_object_mut().unwrap().remove("field");
    std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let args = ["--run", run.to_str().unwrap(), "--out", out.to_str().unwrap(), "--num", "2", "--batch", "2"];
    let args = [&args[..], &["--steps", "10", "--sampler", "unipc"]].concat();
    let e = err(&prdit(&[&["sample"], &args[..]].concat(), &[]));
    assert!(e.contains("field"), "{e}");
    sample(&[&args[..], &["--field", "image"]].concat());
    let out = dir.path().join("hot");
    let e = err(&prdit(
        &[
            "sample",
            "--run",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--grid",
            "edm",
            "--steps",
            "10",
        ],
        &[],
    ));
    assert!(e.contains("--grid") && e.contains("official"), "{e}");
    // A jump of 0 is refused before any folder is made.
    let e = err(&prdit(
        &["sample", "--run", run.to_str().unwrap(), "--out", out.to_str().unwrap(), "--k", "0"],
        &[],
    ));
    assert!(e.contains("--k"), "{e}");
    assert!(!out.exists());
}

/// The orientation of the data's arrays and their value range, as `dataset.json` records
/// them, reach the run (`data.json`), the sample manifest and every written volume: the affine
/// says the data's orientation, `--hu` maps from the data's range. An official weights file
/// (which records nothing) generates in the official LIDC arrays' order: LAS.
#[test]
fn samples_carry_the_data_orientation_and_value_range() {
    use prdit::prepare::ops::orientation_code;
    let dir = tempfile::tempdir().unwrap();
    // Phantoms in [0, 1], recorded as LAS arrays in [0, 1].
    let data = data(dir.path(), 6);
    for e in std::fs::read_dir(&data).unwrap().flatten() {
        let p = e.path();
        if p.to_string_lossy().ends_with(".nii.gz") {
            let mut v = read_volume(&p).unwrap();
            v.data.iter_mut().for_each(|x| *x = (*x + 1.0) * 0.5);
            prdit::data::nifti::write_volume(&p, &v, "").unwrap();
        }
    }
    let json = data.join("dataset.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    m["orientation"] = "LAS".into();
    m["value_range"] = "[0, 1]".into();
    std::fs::write(&json, m.to_string()).unwrap();
    let cfg = config(dir.path(), "run.toml", &data, 0, "total_steps = 2\nckpt_every = 2\n");
    let run = dir.path().join("run");
    ok(&train("train-local", &cfg, &run, &[], &[]));
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("data.json")).unwrap()).unwrap();
    assert_eq!((info["orientation"].as_str(), info["value_range"].as_str()), (Some("LAS"), Some("[0, 1]")));

    let out = dir.path().join("hu");
    let (run_s, out_s) = (run.to_str().unwrap(), out.to_str().unwrap());
    sample(&[
        "--run",
        run_s,
        "--out",
        out_s,
        "--num",
        "1",
        "--steps",
        "4",
        "--sampler",
        "deterministic",
        "--hu",
        "--x0",
    ]);
    let (_, axes) = prdit::data::nifti::read_volume_with_axes(&out.join("xs/sample-00000.nii.gz")).unwrap();
    assert_eq!(orientation_code(&axes), "LAS");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["options"]["value_range"], "[0, 1]");
    // The same job in model space: HU = min + x (max − min) with the [0, 1] range.
    let model = dir.path().join("model");
    sample(&[
        "--run",
        run_s,
        "--out",
        model.to_str().unwrap(),
        "--num",
        "1",
        "--steps",
        "4",
        "--sampler",
        "deterministic",
    ]);
    let x = read_volume(&model.join("xs/sample-00000.nii.gz")).unwrap();
    let hu = read_volume(&out.join("xs/sample-00000.nii.gz")).unwrap();
    let w = prdit::data::phantom::WINDOW;
    for (a, b) in x.data.iter().zip(&hu.data).step_by(97) {
        let want = w.min_hu + a * (w.max_hu - w.min_hu);
        assert!((want - b).abs() < 0.05, "model {a} → {b} HU, want {want}");
    }
    // Saying otherwise than the run records is refused.
    let e = err(&prdit(
        &["sample", "--run", run_s, "--out", dir.path().join("x").to_str().unwrap(), "--orientation", "lps"],
        &[],
    ));
    assert!(e.contains("records its training data's orientation as LAS, not LPS"), "{e}");

    // Official weights: LAS unless told otherwise.
    let meta = common::read_meta();
    let model_toml = dir.path().join("model.toml");
    std::fs::write(&model_toml, toml::to_string(&meta.config).unwrap()).unwrap();
    let weights = common::parity_dir().join("parity_weights.safetensors");
    for (flag, code) in [(None, "LAS"), (Some("lps"), "LPS")] {
        let out = dir.path().join(format!("official-{code}"));
        let mut args = vec![
            "--checkpoint",
            weights.to_str().unwrap(),
            "--model",
            model_toml.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--num",
            "1",
            "--steps",
            "2",
            "--sampler",
            "deterministic",
        ];
        if let Some(f) = flag {
            args.extend(["--orientation", f]);
        }
        sample(&args);
        let (_, axes) =
            prdit::data::nifti::read_volume_with_axes(&out.join("xs/sample-00000.nii.gz")).unwrap();
        assert_eq!(orientation_code(&axes), code);
    }
}
