//! `prdit prepare`: from clinical CT (DICOM series, NIfTI in any orientation, RAD-ChestCT
//! `.npz` arrays) to training volumes (spec §11). The `lidc` and `rad-chestct` recipes are the
//! official scripts' steps in their order ([`lidc_official`], [`rad_official`]); `generic`
//! resamples, crops or pads and windows as told. Writes one NIfTI per input and
//! `dataset.json` (recipe, options, the arrays' orientation and value range); inputs that
//! cannot be read or that a recipe does not take are listed with the reason, never skipped
//! silently.

pub mod dicom;
pub mod ops;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::data::nifti::{is_nifti, read_volume_with_axes, write_volume_oriented};
use crate::data::npz::{is_npz, read_npz_volume};
use crate::data::volume::{Orientation, ValueRange, Volume, Window};
use crate::error::{Error, Result};
use ops::{
    AIR_HU, avg_pool, crop_or_pad, orientation_code, quantile, resample_to_spacing, resize, to_lps,
    window_to_model,
};

/// A preprocessing recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Recipe {
    /// LIDC-IDRI, the official recipe step by step ([`lidc_official`]): cubic-spline zoom to
    /// 1 mm, centre crop 256 mm (shorter scans dropped unless `pad_short`), clip below −1000,
    /// clip at the 0.999 quantile of the crop, min-max, the loader's average pool, 2x − 1.
    Lidc,
    /// RAD-ChestCT, the official recipe step by step ([`rad_official`]): clip [−1000, 1000],
    /// centre crop 256 voxels (no resampling; shorter scans dropped unless `pad_short`), linear
    /// zoom to the size, clip at the 0.995 quantile, min-max to **[0, 1]** — the range the
    /// official loader trains on (spec §11.3), recorded in `dataset.json`.
    RadChestct,
    /// Your choice: `--spacing` (default: keep), `--fov` (default: the largest extent, so
    /// nothing is cropped), `--window` (default −1000,1000).
    Generic,
}

/// Everything `prepare` needs besides the inputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareOptions {
    pub recipe: Recipe,
    /// Edge of the written volumes.
    pub size: usize,
    /// Fixed HU window (generic; overrides the recipe's).
    pub window: Option<[f32; 2]>,
    /// Target spacing in mm (generic; overrides the recipe's).
    pub spacing_mm: Option<f32>,
    /// Field of view in voxels of the target spacing (generic; overrides the recipe's).
    pub fov: Option<usize>,
    /// LIDC and RAD-ChestCT: pad a scan shorter than the field of view with air instead of
    /// dropping it (the official scripts drop it).
    #[serde(default)]
    pub pad_short: bool,
    /// The orientation of the written arrays (DICOM and NIfTI inputs): LPS (default) or LAS
    /// (the official LIDC arrays'). `.npz` inputs have none and are written as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<Orientation>,
}

/// An input found under the given paths.
#[derive(Debug, Clone)]
pub enum Input {
    Nifti(PathBuf),
    /// A NumPy `.npz` holding a `ct` (or `volume`) array in HU: the RAD-ChestCT release.
    Npz(PathBuf),
    /// A DICOM series: its folder (for naming) and files.
    Dicom {
        folder: PathBuf,
        uid: String,
        files: Vec<PathBuf>,
    },
}

impl Input {
    /// The path users know it by.
    pub fn source(&self) -> &Path {
        match self {
            Input::Nifti(p) | Input::Npz(p) => p,
            Input::Dicom { folder, .. } => folder,
        }
    }
}

/// Per-volume record in `dataset.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub file: String,
    pub source: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series_uid: Option<String>,
    pub orientation_in: String,
    pub shape_in: [usize; 3],
    pub spacing_in_mm: [f32; 3],
    pub shape_out: [usize; 3],
    pub spacing_out_mm: [f32; 3],
    /// The HU window mapped onto [−1, 1] for this volume.
    pub window_hu: [f32; 2],
    pub stats_hu: Stats,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// Intensity statistics of a volume in HU (after crop/pad, before windowing).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub min: f32,
    pub max: f32,
    pub mean: f64,
    pub p1: f32,
    pub p99: f32,
    /// Fraction of voxels in (−950, −500) HU: lung parenchyma.
    pub lung_fraction: f64,
}

/// `dataset.json`, next to a folder of training volumes: written by `prdit prepare` (volume
/// records `V` = [`Record`]) and by `prdit phantom` (`V` =
/// [`PhantomRecord`](crate::data::phantom::PhantomRecord)). Training reads `window_hu`; fields
/// that only one writer fills are left out of the other's file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest<V = Record> {
    /// What made the volumes, when not `prepare` (`prdit phantom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `prepare`: the recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<Recipe>,
    /// `prepare`: all its options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<PrepareOptions>,
    /// `prepare`: the orientation of the arrays (`LPS`, `LAS`, or `array` for `.npz` inputs,
    /// which have none); absent means LPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<Orientation>,
    /// `prepare`: the value range of the volumes (`[-1, 1]`, or `[0, 1]` for the official
    /// RAD-ChestCT recipe); absent means [−1, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_range: Option<ValueRange>,
    /// `phantom`: the volume edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// Representative window for mapping generated volumes back to HU (`sample --hu`): the
    /// recipe's fixed window, or the median of the per-volume windows.
    pub window_hu: [f32; 2],
    pub volumes: Vec<V>,
    /// `prepare`: the inputs that could not be prepared (written even when empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Vec<Failure>>,
}

impl<V> Manifest<V> {
    /// The inputs that could not be prepared (none for a phantom set).
    pub fn failures(&self) -> &[Failure] {
        self.failed.as_deref().unwrap_or_default()
    }
}

/// An input that could not be prepared.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub source: PathBuf,
    pub reason: String,
}

/// Finds the inputs under `paths`: NIfTI files, and DICOM series (grouped by Series Instance
/// UID) in folders searched recursively. Unreadable or empty places become failures.
pub fn discover(paths: &[PathBuf]) -> (Vec<Input>, Vec<Failure>) {
    let mut inputs = Vec::new();
    let mut failed = Vec::new();
    for p in paths {
        if p.is_file() {
            if is_nifti(p) {
                inputs.push(Input::Nifti(p.clone()));
            } else if is_npz(p) {
                inputs.push(Input::Npz(p.clone()));
            } else if dicom::is_dicom(p) {
                let folder = p.parent().unwrap_or(Path::new(".")).to_path_buf();
                inputs.push(Input::Dicom { folder, uid: String::new(), files: vec![p.clone()] });
            } else {
                failed.push(Failure {
                    source: p.clone(),
                    reason: "neither NIfTI (.nii, .nii.gz), NumPy (.npz) nor DICOM".into(),
                });
            }
            continue;
        }
        if !p.is_dir() {
            failed.push(Failure { source: p.clone(), reason: "no such file or folder".into() });
            continue;
        }
        let mut dicoms: Vec<PathBuf> = Vec::new();
        let mut found = 0;
        for entry in walk(p) {
            if is_nifti(&entry) {
                inputs.push(Input::Nifti(entry));
                found += 1;
            } else if is_npz(&entry) {
                inputs.push(Input::Npz(entry));
                found += 1;
            } else if dicom::is_dicom(&entry) {
                dicoms.push(entry);
            }
        }
        dicoms.sort();
        let (series, bad) = dicom::group_series(&dicoms);
        failed.extend(bad.into_iter().map(|(source, reason)| Failure { source, reason }));
        for (uid, files) in series {
            let folder = common_folder(&files);
            inputs.push(Input::Dicom { folder, uid, files });
            found += 1;
        }
        if found == 0 {
            failed.push(Failure {
                source: p.clone(),
                reason: "holds no NIfTI file, .npz file or DICOM series".into(),
            });
        }
    }
    (inputs, failed)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn common_folder(files: &[PathBuf]) -> PathBuf {
    let mut folder = files[0].parent().unwrap_or(Path::new(".")).to_path_buf();
    while !files.iter().all(|f| f.starts_with(&folder)) {
        folder = folder.parent().unwrap_or(Path::new(".")).to_path_buf();
    }
    folder
}

/// A stable output name from the source path.
fn output_name(input: &Input, taken: &mut std::collections::BTreeSet<String>) -> String {
    let base = match input {
        Input::Nifti(p) => {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("volume");
            n.trim_end_matches(".gz").trim_end_matches(".nii").to_string()
        }
        Input::Npz(p) => p.file_stem().and_then(|n| n.to_str()).unwrap_or("volume").to_string(),
        Input::Dicom { folder, .. } => {
            folder.file_name().and_then(|n| n.to_str()).unwrap_or("series").to_string()
        }
    };
    let clean: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    let mut name = clean.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{clean}-{n}");
        n += 1;
    }
    format!("{name}.nii.gz")
}

/// Checks that a volume read from `p` is a finite CT in Hounsfield units.
fn check_hu(p: &Path, v: &Volume) -> Result<()> {
    if let Some(i) = v.first_non_finite() {
        return Err(Error::data(p, format!("voxel {i} is not a finite number")));
    }
    let (lo, hi) = v.min_max();
    if lo > -900.0 || !(0.0..=10_000.0).contains(&hi) {
        return Err(Error::data(
            p,
            format!(
                "values span [{lo}, {hi}]: not a CT in Hounsfield units (expected air near −1000 and tissue above 0)"
            ),
        ));
    }
    Ok(())
}

/// The HU volume of an input (in LPS order; an `.npz` array as stored, 1 mm assumed), its
/// source orientation, and load warnings.
fn load(input: &Input) -> Result<(Volume, String, Option<String>, Vec<String>)> {
    match input {
        Input::Nifti(p) => {
            let (v, axes) = read_volume_with_axes(p)?;
            check_hu(p, &v)?;
            Ok((to_lps(&v, &axes), orientation_code(&axes), None, Vec::new()))
        }
        Input::Npz(p) => {
            let a = read_npz_volume(p)?;
            let v = Volume { dims: a.dims, spacing: [1.0; 3], data: a.data };
            check_hu(p, &v)?;
            Ok((v, format!("array ({})", a.key), None, Vec::new()))
        }
        Input::Dicom { folder, uid, files } => {
            let (v, info) = dicom::read_series(files, folder)?;
            Ok((to_lps(&v, &info.axes), orientation_code(&info.axes), Some(uid.clone()), info.warnings))
        }
    }
}

/// The official LIDC-IDRI steps, in their order (`scripts/preproc_lidc_idri.py`, then the
/// loader): cubic-spline zoom (scipy `zoom(order=3, mode='nearest')`) to `spacing` mm, centre
/// crop to `fov`³ as the official script places it on its LAS arrays (a shorter scan is
/// dropped, or with `pad_short` padded with air), clip below
/// −1000, clip at the 0.999 quantile of the crop, min-max to [0, 1], the loader's average pool
/// to `size`³, 2x − 1. Returns the model-space volume and the HU window [min, quantile].
pub fn lidc_official(
    v: &Volume,
    spacing: f32,
    fov: usize,
    size: usize,
    pad_short: bool,
) -> std::result::Result<(Volume, [f32; 2]), String> {
    let dims: [usize; 3] = std::array::from_fn(|k| {
        ((v.dims[k] as f64 * v.spacing[k] as f64 / spacing as f64).round_ties_even() as usize).max(1)
    });
    if !pad_short && let Some(k) = (0..3).find(|&k| dims[k] < fov) {
        return Err(format!(
            "{:.0} mm along axis {k}, shorter than the recipe's {:.0} mm field of view: the official recipe drops \
             such scans (--pad-short pads them with air instead)",
            dims[k] as f32 * spacing,
            fov as f32 * spacing
        ));
    }
    let zoomed = ops::spline_zoom(v, dims);
    // The official script crops dicom2nifti's LAS arrays; these are LPS (j mirrored), so the
    // crop is placed as it falls on the LAS array: the same voxels as the official volume.
    let mut crop = ops::crop_or_pad_flipped(&zoomed, [fov; 3], AIR_HU, [false, true, false]);
    crop.spacing = [spacing; 3];
    crop.data.iter_mut().for_each(|x| *x = x.max(-1000.0));
    let q = quantile(&crop.data, 0.999);
    crop.data.iter_mut().for_each(|x| *x = x.min(q));
    let (lo, hi) = crop.min_max();
    let range = if hi > lo { hi - lo } else { 1.0 };
    crop.data.iter_mut().for_each(|x| *x = (*x - lo) / range);
    let mut v = if fov == size {
        crop
    } else if fov.is_multiple_of(size) {
        avg_pool(&crop, fov / size)
    } else {
        return Err(format!("the field of view {fov} is not a multiple of the size {size}"));
    };
    v.data.iter_mut().for_each(|x| *x = 2.0 * *x - 1.0);
    Ok((v, [lo, hi]))
}

/// The official RAD-ChestCT steps, in their order (`scripts/preproc_rad_chestct.py`; its
/// loader changes nothing): clip to [−1000, 1000] HU, centre crop `fov`³ of the array as it is
/// (no resampling; a smaller scan is dropped, or with `pad_short` padded with air), scipy
/// `zoom(order=1, mode='constant', cval=−1000)` to `size`³ when smaller, clip at the 0.995
/// quantile, min-max to **[0, 1]**. Returns the volume and the HU window [min, quantile].
pub fn rad_official(
    v: &Volume,
    fov: usize,
    size: usize,
    pad_short: bool,
) -> std::result::Result<(Volume, [f32; 2]), String> {
    if !pad_short && let Some(k) = (0..3).find(|&k| v.dims[k] < fov) {
        return Err(format!(
            "{} voxels along axis {k}, fewer than the recipe's {fov}-voxel crop: the official recipe drops such \
             scans (--pad-short pads them with air instead)",
            v.dims[k]
        ));
    }
    let mut clipped = v.clone();
    clipped.data.iter_mut().for_each(|x| *x = x.clamp(-1000.0, 1000.0));
    let crop = crop_or_pad(&clipped, [fov; 3], AIR_HU);
    let mut out = if size == fov { crop } else { ops::linear_zoom(&crop, [size; 3], AIR_HU) };
    let q = quantile(&out.data, 0.995);
    out.data.iter_mut().for_each(|x| *x = x.clamp(-1000.0, q));
    let (lo, hi) = out.min_max();
    if hi <= lo {
        return Err(format!("the volume is constant ({lo} HU) after clipping"));
    }
    out.data.iter_mut().for_each(|x| *x = (*x - lo) / (hi - lo));
    Ok((out, [lo, hi]))
}

impl PrepareOptions {
    /// Refuses settings that the recipe would not honour: the official recipes compute each
    /// volume's window themselves (and RAD-ChestCT's does not resample), so a fixed window (or
    /// a spacing for RAD-ChestCT) belongs to the generic recipe; volumes smaller than 8³.
    pub fn validate(&self) -> Result<()> {
        if self.size < 8 {
            return Err(Error::invalid(
                "size",
                format!("{} is too small: volumes must be at least 8³", self.size),
            ));
        }
        let official = match self.recipe {
            Recipe::Lidc => "lidc",
            Recipe::RadChestct => "rad-chestct",
            Recipe::Generic => return Ok(()),
        };
        if self.window.is_some() {
            return Err(Error::invalid(
                "window",
                format!(
                    "the {official} recipe computes each volume's window as the official script does (clip, \
                     quantile, min-max); a fixed window is the generic recipe's (--recipe generic --window …, \
                     with --spacing and --fov as you need them)"
                ),
            ));
        }
        if self.recipe == Recipe::RadChestct && self.spacing_mm.is_some() {
            return Err(Error::invalid(
                "spacing",
                "the rad-chestct recipe does not resample, as the official script; resampling to a spacing is \
                 the generic recipe's (--recipe generic --spacing …)",
            ));
        }
        Ok(())
    }

    /// Whether the official steps run ([`lidc_official`], [`rad_official`]): the `lidc` and
    /// `rad-chestct` recipes (which [`validate`](Self::validate) keeps free of generic settings).
    pub fn official_steps(&self) -> bool {
        self.recipe != Recipe::Generic
    }

    /// The value range the volumes are written in: [0, 1] for the official RAD-ChestCT steps,
    /// [−1, 1] otherwise.
    pub fn value_range(&self) -> ValueRange {
        if self.recipe == Recipe::RadChestct && self.official_steps() {
            ValueRange::ZeroOne
        } else {
            ValueRange::MinusOneOne
        }
    }
}

/// Runs the recipe's steps on one HU volume (`has_spacing`: whether the input knows its voxel
/// size; an `.npz` does not); returns the volume (in [`PrepareOptions::value_range`]), the
/// window and the statistics, or why the recipe does not take this volume.
pub fn process(
    v: &Volume,
    opts: &PrepareOptions,
    has_spacing: bool,
) -> std::result::Result<(Volume, [f32; 2], Stats), String> {
    let resamples = match opts.recipe {
        Recipe::Lidc => true,
        Recipe::RadChestct | Recipe::Generic => opts.spacing_mm.is_some(),
    };
    if resamples && !has_spacing {
        return Err("an .npz array records no voxel spacing, and this recipe resamples to a spacing: use \
                    --recipe rad-chestct (no resampling) or generic without --spacing"
            .into());
    }
    if opts.official_steps() {
        let (fov, size, pad) = (opts.fov.unwrap_or(256), opts.size, opts.pad_short);
        let (out, window) = match opts.recipe {
            Recipe::Lidc => lidc_official(v, opts.spacing_mm.unwrap_or(1.0), fov, size, pad)?,
            _ => rad_official(v, fov, size, pad)?,
        };
        let w = Window::from(window);
        let hu = Volume {
            data: out.data.iter().map(|x| w.to_hu_from(*x, opts.value_range())).collect(),
            ..out.clone()
        };
        return Ok((out, window, stats(&hu)));
    }
    // The generic recipe.
    let v = match opts.spacing_mm {
        Some(s) => resample_to_spacing(v, s),
        None => v.clone(),
    };
    let fov = opts.fov.unwrap_or_else(|| *v.dims.iter().max().expect("3 dims"));
    let v = crop_or_pad(&v, [fov; 3], AIR_HU);
    // Integer ratios by averaging (the official LIDC loader's AvgPool3d(2) for 256 → 128),
    // other ratios trilinearly.
    let mut v = if fov == opts.size {
        v
    } else if fov.is_multiple_of(opts.size) {
        avg_pool(&v, fov / opts.size)
    } else {
        resize(&v, [opts.size; 3])
    };
    let stats = stats(&v);
    let window = opts.window.unwrap_or([-1000.0, 1000.0]);
    let window = if window[1] > window[0] { window } else { [window[0], window[0] + 1.0] };
    window_to_model(&mut v, window[0], window[1]);
    Ok((v, window, stats))
}

fn stats(v: &Volume) -> Stats {
    let (min, max) = v.min_max();
    let n = v.data.len() as f64;
    Stats {
        min,
        max,
        mean: v.data.iter().map(|&x| x as f64).sum::<f64>() / n,
        p1: quantile(&v.data, 0.01),
        p99: quantile(&v.data, 0.99),
        lung_fraction: v.data.iter().filter(|&&x| x > -950.0 && x < -500.0).count() as f64 / n,
    }
}

/// Prepares every input into `out` with `jobs` threads, reporting progress as
/// (done, total). Writes `dataset.json`; returns it (its [`Manifest::failures`] are what could
/// not be prepared — the caller decides whether that is an error). No input at all, or none
/// that could be prepared, is an error listing every failure, and no `dataset.json` is written.
pub fn run(
    inputs: &[Input],
    failed: Vec<Failure>,
    out: &Path,
    opts: &PrepareOptions,
    jobs: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Manifest> {
    opts.validate()?;
    let listed = |failed: &[Failure]| -> Vec<String> {
        failed.iter().map(|f| format!("{}: {}", f.source.display(), f.reason)).collect()
    };
    if inputs.is_empty() {
        let mut problems = listed(&failed);
        if problems.is_empty() {
            problems.push("no NIfTI file or DICOM series among the inputs".into());
        }
        return Err(Error::Files { what: "inputs".into(), problems });
    }
    let orientation = dataset_orientation(inputs, opts)?;
    let _lock = crate::fsio::FolderLock::acquire(out)?;
    let mut taken = std::collections::BTreeSet::new();
    let names: Vec<String> = inputs.iter().map(|i| output_name(i, &mut taken)).collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, std::result::Result<Record, String>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, inputs.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= inputs.len() {
                        break;
                    }
                    let r =
                        prepare_one(&inputs[i], &names[i], out, opts, orientation).map_err(|e| e.to_string());
                    results.lock().expect("not poisoned").push((i, r));
                    progress(done.fetch_add(1, Ordering::SeqCst) + 1, inputs.len());
                }
            });
        }
    });
    let mut results = results.into_inner().expect("not poisoned");
    results.sort_by_key(|r| r.0);
    let mut volumes = Vec::new();
    let mut failed = failed;
    for (i, r) in results {
        match r {
            Ok(rec) => volumes.push(rec),
            Err(reason) => failed.push(Failure { source: inputs[i].source().to_path_buf(), reason }),
        }
    }
    if volumes.is_empty() {
        return Err(Error::Files { what: format!("{} inputs", failed.len()), problems: listed(&failed) });
    }
    let window_hu = match (opts.window, opts.recipe) {
        (Some(w), _) => w,
        (None, Recipe::Generic) => [-1000.0, 1000.0],
        _ if volumes.is_empty() => [-1000.0, 1000.0],
        _ => {
            let lows: Vec<f32> = volumes.iter().map(|r| r.window_hu[0]).collect();
            let highs: Vec<f32> = volumes.iter().map(|r| r.window_hu[1]).collect();
            [quantile(&lows, 0.5), quantile(&highs, 0.5)]
        }
    };
    let manifest = Manifest {
        source: None,
        recipe: Some(opts.recipe),
        options: Some(opts.clone()),
        orientation: Some(orientation),
        value_range: Some(opts.value_range()),
        size: None,
        window_hu,
        volumes,
        failed: Some(failed),
    };
    let json = serde_json::to_string_pretty(&manifest).expect("serialises");
    crate::fsio::write_atomic(&out.join("dataset.json"), json.as_bytes())?;
    Ok(manifest)
}

/// The one orientation of a dataset's arrays: `array` when the inputs are `.npz` arrays,
/// else `--orientation` (LPS by default). Both kinds at once is an error.
fn dataset_orientation(inputs: &[Input], opts: &PrepareOptions) -> Result<Orientation> {
    let arrays = inputs.iter().filter(|i| matches!(i, Input::Npz(_))).count();
    if arrays == 0 {
        return Ok(opts.orientation.unwrap_or_default());
    }
    let problem = if arrays < inputs.len() {
        Some(format!(
            "{} .npz arrays (no orientation) and {} DICOM/NIfTI volumes (oriented) cannot share a dataset: \
             prepare them into separate folders",
            arrays,
            inputs.len() - arrays
        ))
    } else {
        opts.orientation.map(|o| {
            format!(
                "--orientation {} needs an orientation to start from, and an .npz array has none",
                o.code()
            )
        })
    };
    match problem {
        Some(p) => Err(Error::invalid("orientation", p)),
        None => Ok(Orientation::Array),
    }
}

fn prepare_one(
    input: &Input,
    name: &str,
    out: &Path,
    opts: &PrepareOptions,
    orientation: Orientation,
) -> Result<Record> {
    let started = std::time::Instant::now();
    let (hu, orientation_in, series_uid, warnings) = load(input)?;
    let has_spacing = !matches!(input, Input::Npz(_));
    let (mut model, window, stats) =
        process(&hu, opts, has_spacing).map_err(|reason| Error::data(input.source(), reason))?;
    if orientation == Orientation::Las {
        // LPS → LAS: j runs toward anterior.
        model = ops::permute_flip(&model, [0, 1, 2], [false, true, false]);
    }
    let desc = format!("prdit prepare {:?}, window [{:.0}, {:.0}] HU", opts.recipe, window[0], window[1]);
    write_volume_oriented(&out.join(name), &model, &desc, orientation)?;
    Ok(Record {
        file: name.to_string(),
        source: input.source().to_path_buf(),
        series_uid,
        orientation_in,
        shape_in: hu.dims,
        spacing_in_mm: hu.spacing,
        shape_out: model.dims,
        spacing_out_mm: model.spacing,
        window_hu: window,
        stats_hu: stats,
        warnings,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_json_keeps_its_keys_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let hu = dir.path().join("hu");
        crate::data::phantom::write_dataset(dir.path(), 1, 16, 3).unwrap();
        let opts = PrepareOptions {
            recipe: Recipe::Generic,
            size: 8,
            window: None,
            spacing_mm: None,
            fov: None,
            pad_short: false,
            orientation: None,
        };
        let (inputs, failed) = discover(&[hu, dir.path().join("missing.nii.gz")]);
        let out = dir.path().join("prepared");
        let m = run(&inputs, failed, &out, &opts, 1, &|_, _| {}).unwrap();
        assert_eq!((m.volumes.len(), m.failures().len()), (1, 1));
        let text = std::fs::read_to_string(out.join("dataset.json")).unwrap();
        let pos =
            |k: &str| text.find(&format!("\n  \"{k}\"")).unwrap_or_else(|| panic!("{k} missing: {text}"));
        let order =
            ["recipe", "options", "orientation", "value_range", "window_hu", "volumes", "failed"].map(pos);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(!text.contains("\n  \"source\"") && !text.contains("\n  \"size\""), "{text}");
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.recipe, Some(Recipe::Generic));
        assert_eq!(back.window_hu, [-1000.0, 1000.0]);
        // An empty failure list is still written.
        let clean = Manifest { failed: Some(Vec::new()), ..back };
        let v = serde_json::to_value(&clean).unwrap();
        assert_eq!(v["failed"], serde_json::json!([]));
    }
}
