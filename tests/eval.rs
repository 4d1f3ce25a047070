//! Evaluation against the official code (`tests/fixtures/med3d`, or `PRDIT_MED3D_DIR`):
//! MedicalNet ResNet-10/50 features with the fixture's formula weights, FID and MMD on the
//! stored feature matrices, strict weight loading; closed forms are unit tests in
//! `src/eval/stats.rs`.

mod common;

use std::collections::BTreeMap;

use burn::tensor::Device;
use common::checks::{self, formula_state_dict};
use common::*;
use prdit::eval::resnet::{ResNet3d, ResNetSpec, formula_weights};
use prdit::eval::stats::{Features, MmdEstimator, fid, mmd};
use prdit::weights::{Entry, HostTensor, StateDict};

fn metrics() -> serde_json::Value {
    let text = std::fs::read_to_string(med3d_dir().join("med3d_reference.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["metrics"].clone()
}

#[test]
fn resnet_features_match_the_official_network() {
    checks::resnet_features_match_the_official_network(&Device::flex());
}

#[test]
fn fid_and_mmd_match_the_official_code() {
    let m = metrics();
    // The fixture matrices are float64; read them without the f32 conversion of read_fixture.
    let st = std::fs::read(med3d_dir().join("med3d_reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let f64s = |k: &str| {
        let t = st.tensor(k).unwrap();
        let data: Vec<f64> =
            t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect();
        Features::new(t.shape()[0], t.shape()[1], data)
    };
    for case in ["full_rank", "rank_deficient"] {
        let (real, fake) = (f64s(&format!("{case}.real")), f64s(&format!("{case}.fake")));
        let want = &m[case];
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
        let f = fid(&real, &fake).unwrap();
        assert!(rel(f, want["fid"].as_f64().unwrap()) < 1e-6, "{case}: FID {f} vs {}", want["fid"]);
        let d = mmd(&real, &fake, MmdEstimator::Biased).unwrap();
        assert!(rel(d.gamma, want["gamma"].as_f64().unwrap()) < 1e-9, "{case}: gamma {}", d.gamma);
        assert!(
            rel(d.mmd2, want["mmd2"].as_f64().unwrap()) < 1e-6,
            "{case}: MMD² {} vs {}",
            d.mmd2,
            want["mmd2"]
        );
        assert!(rel(d.mmd, want["mmd"].as_f64().unwrap()) < 1e-6, "{case}: MMD {}", d.mmd);
        eprintln!("{case}: FID {f} (official {}), MMD {} (official {})", want["fid"], d.mmd, want["mmd"]);
    }
}

#[test]
fn medicalnet_files_load_strictly() {
    // Both layouts of the release files: {'state_dict': {'module.conv1.weight', …}}.
    for file in ["medicalnet_layout_stem.pth", "medicalnet_layout_stem_legacy.pth"] {
        let sd = StateDict::open(&med3d_dir().join(file), Entry::Auto).unwrap();
        assert_eq!(sd.entry(), Some("state_dict"));
        for key in ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"] {
            let t = sd.read(key).unwrap_or_else(|e| panic!("{file}: {e}"));
            let e = rel_err(&t.data, &formula_weights(key, &t.shape));
            assert!(e < 1e-6, "{file}: {key} differs from the formula weights by {e:.2e}");
        }
        // A stem alone is not a network: the error says what was found.
        let e = ResNetSpec::detect(&sd).unwrap_err().to_string();
        assert!(e.contains(file) && e.contains("not a MedicalNet ResNet"), "{e}");
    }
    let spec = ResNetSpec { depth: 10, shortcut: 'B' };
    let device = Device::flex();
    let load = |sd: &StateDict| ResNet3d::from_state_dict(spec, sd, &device).err().map(|e| e.to_string());
    // The segmentation head of the released models and the BN counters are ignored.
    let head = HostTensor { shape: vec![2, 512, 1, 1, 1], data: vec![0.0; 1024] };
    let counter = HostTensor { shape: vec![], data: vec![0.0] };
    assert_eq!(
        load(&formula_state_dict(spec, &[("conv_seg.0.weight", head), ("bn1.num_batches_tracked", counter)])),
        None
    );
    // Anything else unexpected, missing or mis-shaped is named.
    let stray = HostTensor { shape: vec![3], data: vec![0.0; 3] };
    let e = load(&formula_state_dict(spec, &[("fc.weight", stray)])).unwrap();
    assert!(e.contains("unexpected key `fc.weight`"), "{e}");
    let bad = HostTensor { shape: vec![64, 1, 3, 3, 3], data: vec![0.0; 64 * 27] };
    let e = load(&formula_state_dict(spec, &[("conv1.weight", bad)])).unwrap();
    assert!(e.contains("key `conv1.weight` has shape [64, 1, 3, 3, 3]"), "{e}");
    let net = ResNet3d::with_formula_weights(spec, &device).unwrap();
    let missing: BTreeMap<String, HostTensor> = net
        .parameter_shapes()
        .iter()
        .filter(|(k, _)| k != "layer4.0.bn2.running_var")
        .map(|(k, s)| (k.clone(), HostTensor { shape: s.clone(), data: formula_weights(k, s) }))
        .collect();
    let e = load(&StateDict::from_host("m.pth", missing)).unwrap();
    assert!(e.contains("missing key `layer4.0.bn2.running_var`"), "{e}");
}

#[test]
fn eval_commands_report_cache_and_refuse_mismatched_ranges() {
    use common::run::{err, ok, phantoms, prdit};
    let dir = tempfile::tempdir().unwrap();
    let real = phantoms(dir.path(), "real", 4, 16);
    let fake = dir.path().join("fake");
    // Other seeds for the "generated" set.
    ok(&prdit(
        &["phantom", "--out", fake.to_str().unwrap(), "--num", "4", "--size", "16", "--seed", "100"],
        &[],
    ));
    let cache = dir.path().join("cache");
    let report = dir.path().join("report.json");
    // eval-fid of `fake` against the real set with the formula weights, and `extra` flags.
    let fid = |fake: &std::path::Path, extra: &[&str]| {
        let (r, f) = (real.to_str().unwrap(), fake.to_str().unwrap());
        let base = ["eval-fid", "--real", r, "--fake", f, "--test-formula-weights", "10"];
        prdit(&[&base[..], extra].concat(), &[])
    };
    let run = |fake: &std::path::Path| {
        let (cache, report) = (cache.to_str().unwrap(), report.to_str().unwrap());
        fid(fake, &["--preset", "none", "--cache", cache, "--out", report])
    };
    let first: serde_json::Value = serde_json::from_str(&ok(&run(&fake))).unwrap();
    assert!(first["fid"].as_f64().unwrap().is_finite() && first["mmd"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        (first["n_real"].as_u64(), first["n_fake"].as_u64(), first["features"].as_u64()),
        (Some(4), Some(4), Some(512))
    );
    assert_eq!(first["real_features_cached"], false);
    let second: serde_json::Value = serde_json::from_str(&ok(&run(&fake))).unwrap();
    assert_eq!(second["real_features_cached"], true);
    assert_eq!(second["fid"], first["fid"], "the cache gives the same features");
    assert!(report.is_file());
    // Generated volumes in HU against model-space real ones.
    let e = err(&run(&fake.join("hu")));
    assert!(e.contains("Hounsfield") && e.contains("model space"), "{e}");
    // No weights: refused (a score from random weights is never computed).
    let o = prdit(&["eval-fid", "--real", real.to_str().unwrap(), "--fake", fake.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = err(&o);
    assert!(e.contains("--weights"), "the missing flag is named: {e}");
    // A report path that is a folder: the write fails naming it, after the report is printed.
    let folder = dir.path().join("a-folder");
    std::fs::create_dir(&folder).unwrap();
    let o = fid(&fake, &["--preset", "none", "--no-cache", "--out", folder.to_str().unwrap()]);
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the report is printed first");
    assert_eq!(printed["fid"], first["fid"]);
    let e = err(&o);
    assert!(e.contains("a-folder"), "{e}");
    assert!(
        folder.is_dir() && std::fs::read_dir(&folder).unwrap().next().is_none(),
        "the folder is untouched"
    );
    // The LIDC protocol wants 1000 volumes unless told otherwise.
    let o = fid(&fake, &[]);
    assert!(err(&o).contains("uses 1000 volumes"));

    let big = phantoms(dir.path(), "big", 3, 48);
    let d: serde_json::Value =
        serde_json::from_str(&ok(&prdit(&["eval-diversity", "--volumes", big.to_str().unwrap()], &[])))
            .unwrap();
    let score = d["ms_ssim"].as_f64().unwrap();
    assert!(score > 0.0 && score < 1.0 && d["pairs"] == 3, "{d}");
}

/// eval-fid's inputs are checked before any work: a count of 0, a fake set of another shape than
/// the real one, and a set of mixed shapes (naming the odd file).
#[test]
fn eval_fid_refuses_empty_counts_and_mismatched_shapes() {
    use common::run::{err, phantoms, prdit};
    use std::path::Path;
    let dir = tempfile::tempdir().unwrap();
    let real = phantoms(dir.path(), "real", 4, 16);
    let small = phantoms(dir.path(), "small", 4, 8);
    let run = |real: &Path, fake: &Path, extra: &[&str]| {
        let mut args = vec!["eval-fid", "--real", real.to_str().unwrap(), "--fake", fake.to_str().unwrap()];
        args.extend(["--test-formula-weights", "10", "--preset", "none"]);
        args.extend_from_slice(extra);
        prdit(&args, &[])
    };
    let e = err(&run(&real, &real, &["--num", "0"]));
    assert!(e.contains("at least 1"), "{e}");
    let e = err(&run(&real, &small, &[]));
    assert!(e.contains("[8, 8, 8]") && e.contains("[16, 16, 16]"), "{e}");
    std::fs::copy(small.join("phantom-00000.nii.gz"), real.join("zz-odd.nii.gz")).unwrap();
    let e = err(&run(&real, &real, &[]));
    assert!(e.contains("zz-odd.nii.gz") && e.contains("one shape"), "{e}");
}

/// Missing MedicalNet weights: the error says what the file is, where it is published, and the
/// files (with sha256) the paper's numbers need.
#[test]
fn missing_medicalnet_weights_are_explained() {
    use common::run::{err, phantoms, prdit};
    let dir = tempfile::tempdir().unwrap();
    let real = phantoms(dir.path(), "real", 2, 16);
    let missing = dir.path().join("resnet_50.pth");
    let args = ["eval-fid", "--real", real.to_str().unwrap(), "--fake", real.to_str().unwrap()];
    let e = err(&prdit(&[&args[..], &["--weights", missing.to_str().unwrap()]].concat(), &[]));
    assert!(e.contains("MedicalNet") && e.contains("Tencent/MedicalNet"), "{e}");
    assert!(e.contains("5b6189cafbee2f56") && e.contains("resnet_50_23dataset.pth"), "{e}");
    assert_eq!(e.matches("No such file").count() + e.matches("no such file").count(), 1, "{e}");
    // --weights is required.
    let e = err(&prdit(&args, &[]));
    assert!(e.contains("--weights"), "{e}");
}

/// Generated volumes that overshoot model space: refused with the values found and a pointer to
/// --clamp; with --clamp scored, the fraction clamped reported (as given and with a preset).
#[test]
fn overshooting_samples_need_an_explicit_clamp() {
    use common::run::{err, ok, phantoms, prdit};
    use prdit::data::nifti::{read_volume, write_volume};
    let dir = tempfile::tempdir().unwrap();
    for (preset, size) in [("none", 16), ("lidc", 128)] {
        let real = phantoms(dir.path(), &format!("real-{preset}"), 4, size);
        let fake = dir.path().join(format!("fake-{preset}"));
        std::fs::create_dir_all(&fake).unwrap();
        for i in 0..4 {
            let mut v = read_volume(&real.join(format!("phantom-0000{i}.nii.gz"))).unwrap();
            v.data.iter_mut().for_each(|x| *x *= 1.3);
            write_volume(&fake.join(format!("s{i}.nii.gz")), &v, "").unwrap();
        }
        let args = [
            "eval-fid",
            "--real",
            real.to_str().unwrap(),
            "--fake",
            fake.to_str().unwrap(),
            "--test-formula-weights",
            "10",
            "--preset",
            preset,
            "--num",
            "4",
            "--no-cache",
        ];
        let e = err(&prdit(&args, &[]));
        assert!(e.contains("span [-1.3") && e.contains("--clamp"), "{preset}: {e}");
        let out = ok(&prdit(&[&args[..], &["--clamp"]].concat(), &[]));
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        let f = report["clamped_fraction"].as_f64().unwrap();
        assert!(f > 0.0 && f < 1.0, "{preset}: {report}");
    }
}

/// 3D MS-SSIM against the class the official `evaluations/ms_ssim.py` scores diversity with:
/// MONAI-Generative 0.2.3's `MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0,
/// kernel_size=3)` (lines 24, 87, 98), run by `scripts/make-msssim-fixture.py` on 48³ pairs
/// (correlated, unrelated, identical), a 49×53×61 pair (odd edges: every pooling floors) and a
/// [−1, 1] pair. The folder is `PRDIT_MSSSIM_DIR`, else `tests/fixtures/msssim`.
#[test]
fn ms_ssim_matches_monai_generative() {
    use prdit::data::volume::Volume;
    use prdit::eval::msssim::ms_ssim;
    // The official class computes every scale in float32 whatever the input dtype (float64
    // input only changes the pooling between scales: ≤ 6e-8 on these pairs). float32 arithmetic
    // moves the result by ≤ 1.43e-5 from the float64 value on these pairs (the [−1, 1] one;
    // ≤ 6.2e-7 on the [0, 1] ones), so prdit (float64 throughout) is held to 10× that, rounded
    // up, against the official number, and to float64 rounding of ~1e5-term sums in another
    // order against the float64 transcription with exact weights (a port of this file's
    // summation order agrees to 6e-16).
    const TOL_OFFICIAL: f64 = 2e-4;
    const TOL_FLOAT64: f64 = 1e-10;
    let dir = common::fixture_dir("PRDIT_MSSSIM_DIR", "msssim");
    let json = dir.join("msssim_reference.json");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (tol_official, tol_float64) = (TOL_OFFICIAL, TOL_FLOAT64);
    let file = dir.join("msssim_volumes.safetensors");
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let st =
        safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    // float16 volumes: exactly the float32 values the official class was given.
    let volume = |name: &str| -> Volume {
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{}: `{name}`: {e}", file.display()));
        let &[d, h, w] = t.shape() else { panic!("`{name}` has shape {:?}, not 3-D", t.shape()) };
        let data: Vec<f32> = match t.dtype() {
            safetensors::Dtype::F16 => {
                t.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            safetensors::Dtype::F32 => {
                t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
            }
            other => panic!("`{name}` is {other:?}"),
        };
        Volume { dims: [d, h, w], spacing: [1.0; 3], data }
    };
    let pairs = reference["pairs"].as_array().expect("`pairs` in the reference");
    assert!(!pairs.is_empty(), "{} lists no pairs", json.display());
    for p in pairs {
        let name = p["name"].as_str().unwrap();
        let (x, y) = (volume(p["x"].as_str().unwrap()), volume(p["y"].as_str().unwrap()));
        let shape: Vec<usize> =
            p["shape"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap() as usize).collect();
        assert_eq!((x.dims.to_vec(), y.dims.to_vec()), (shape.clone(), shape), "{name}");
        let got = ms_ssim(&x, &y).unwrap_or_else(|e| panic!("{name}: {e}"));
        let official = p["ms_ssim"].as_f64().unwrap();
        let exact = p["ms_ssim_float64"].as_f64().unwrap();
        eprintln!(
            "{name}: prdit {got:.12}, official (float32) {official:.12} ({:+.2e}), float64 {exact:.12} ({:+.2e})",
            got - official,
            got - exact
        );
        assert!(
            (got - exact).abs() <= tol_float64,
            "{name}: prdit {got} vs the float64 reference {exact}: {:.3e} > {tol_float64:.0e}",
            (got - exact).abs()
        );
        assert!(
            (got - official).abs() <= tol_official,
            "{name}: prdit {got} vs MONAI-Generative {official}: {:.3e} > {tol_official:.0e}",
            (got - official).abs()
        );
    }
}
