//! `prdit eval-fid`: 3D-FID and MMD of generated volumes against real ones, on MedicalNet
//! ResNet features — the whole pipeline, from the weights file to the report.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::resnet::{ResNet3d, ResNetSpec};
use super::stats::{self, Features, MmdEstimator};
use super::{
    KNOWN_WEIGHTS, Preset, Protocol, Range, SetRole, cache_key, check_same_range, extract, prepare_set,
    read_cache, write_cache,
};
use crate::data::dataset::list_volumes;
use crate::error::{Error, Result};
use crate::sample::sha256_file;
use crate::weights::{Entry, StateDict};

/// The feature network.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureNet {
    /// MedicalNet weights (`resnet_50.pth`, `resnet_50_23dataset.pth`, …), loaded strictly;
    /// the depth and shortcut type are read from the keys.
    Weights(PathBuf),
    /// TESTS ONLY: a ResNet of this depth with the test fixture's formula weights. The scores
    /// mean nothing.
    TestFormula(usize),
}

/// Everything an FID/MMD evaluation needs besides the device.
#[derive(Debug, Clone)]
pub struct FidOptions {
    /// Real volumes: a folder of NIfTI files or a list file.
    pub real: PathBuf,
    /// Generated volumes: a folder or a list file.
    pub fake: PathBuf,
    pub network: FeatureNet,
    pub preset: Preset,
    /// The first N volumes of each set instead of the preset's count.
    pub num: Option<usize>,
    /// Volumes per forward pass of the feature network.
    pub batch: usize,
    /// Folder of the real-set feature cache (see [`default_cache_dir`]); `None`: the cache is
    /// neither read nor written.
    pub cache: Option<PathBuf>,
    pub mmd: MmdEstimator,
    /// Clamp generated volumes into the real set's range (model space or [0, 1]) instead of
    /// refusing ones that overshoot; the fraction clamped is reported.
    pub clamp: bool,
    /// Show progress bars (see [`crate::progress`]).
    pub progress: bool,
}

/// The feature network's weights in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsInfo {
    /// The file (`null` for the test formula).
    pub file: Option<PathBuf>,
    /// Its SHA-256 (a name for the test formula); real-set features are cached under it.
    pub sha256: String,
    /// Which release it is, when it is one of [`KNOWN_WEIGHTS`].
    pub known_as: Option<String>,
}

/// What `prdit eval-fid` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FidReport {
    pub fid: f64,
    pub mmd: f64,
    pub mmd2: f64,
    /// The kernel bandwidth γ of the MMD.
    pub mmd_gamma: f64,
    pub mmd_estimator: MmdEstimator,
    pub n_real: usize,
    pub n_fake: usize,
    /// Features per volume.
    pub features: usize,
    /// `MedicalNet ResNet-50 (shortcut B)`.
    pub network: String,
    pub weights: WeightsInfo,
    /// The protocol that was applied.
    pub preset: Protocol,
    pub real: PathBuf,
    pub fake: PathBuf,
    /// Whether the real-set features came from the cache.
    pub real_features_cached: bool,
    /// The fraction of generated voxels clamped into the real range (with `--clamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamped_fraction: Option<f64>,
    /// The cache file of the real-set features (`null` without a cache).
    pub cache_file: Option<PathBuf>,
    pub seconds: f64,
    pub time_unix: u64,
}

/// The default feature cache: `~/.cache/prdit/features` (`./.cache/prdit/features` without a
/// home folder).
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache/prdit/features")
}

/// The feature network, strictly from its file (or, for tests only, the formula).
fn feature_network(net: &FeatureNet, device: &Device) -> Result<(ResNet3d, ResNetSpec, WeightsInfo)> {
    match net {
        FeatureNet::TestFormula(depth) => {
            let spec = ResNetSpec { depth: *depth, shortcut: 'B' };
            tracing::warn!("a ResNet-{depth} with test-formula weights: these scores mean nothing");
            let info = WeightsInfo {
                file: None,
                sha256: format!("test-formula-resnet{depth}"),
                known_as: Some("test formula (not a trained network)".into()),
            };
            Ok((ResNet3d::with_formula_weights(spec, device)?, spec, info))
        }
        FeatureNet::Weights(file) => {
            if !file.is_file() {
                let accepted: Vec<String> =
                    KNOWN_WEIGHTS.iter().map(|(h, n)| format!("{n}: sha256 {h}")).collect();
                return Err(Error::weights(
                    file,
                    format!(
                        "the MedicalNet 3D ResNet weights are not there (no such file). The features of 3D-FID \
                         and MMD come from MedicalNet (Chen et al. 2019), whose pretrained `.pth` files are \
                         published with the Tencent/MedicalNet repository (its `pretrain/` release); prdit \
                         knows:\n  - {}\n(any MedicalNet ResNet-10/18/34/50 file loads, but only these two match \
                         the paper's numbers)",
                        accepted.join("\n  - ")
                    ),
                ));
            }
            let sha = sha256_file(file)?;
            let known = KNOWN_WEIGHTS.iter().find(|(h, _)| *h == sha).map(|(_, n)| n.to_string());
            tracing::info!(
                "weights {} sha256 {sha}{}",
                file.display(),
                known
                    .as_ref()
                    .map(|n| format!(" = {n}"))
                    .unwrap_or_else(|| " (not one of the two known MedicalNet ResNet-50 files)".into())
            );
            let sd = StateDict::open(file, Entry::Auto)?;
            let spec = ResNetSpec::detect(&sd)?;
            let info = WeightsInfo { file: Some(file.clone()), sha256: sha, known_as: known };
            Ok((ResNet3d::from_state_dict(spec, &sd, device)?, spec, info))
        }
    }
}

/// Features of a prepared set, with a progress bar of `what`.
fn features(
    net: &ResNet3d,
    volumes: &[crate::data::Volume],
    opts: &FidOptions,
    what: &str,
    device: &Device,
) -> Result<Features> {
    let bar = crate::progress::bar(volumes.len() as u64, what, opts.progress);
    let f = extract(net, volumes, opts.batch, device, &mut |n| {
        if let Some(b) = &bar {
            b.set_position(n as u64)
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(f)
}

/// Evaluates `opts.fake` against `opts.real`: both sets read, checked and prepared as the
/// preset says (the same intensity range on both sides), features extracted (the real set's
/// from the cache when this weights file, protocol and file list were seen), FID and MMD.
pub fn evaluate(opts: &FidOptions, device: &Device) -> Result<FidReport> {
    let started = Instant::now();
    let mut protocol = Protocol::of(opts.preset);
    if opts.num.is_some() {
        protocol.num = opts.num;
    }
    if protocol.num == Some(0) {
        return Err(Error::invalid("num", "the number of volumes to evaluate must be at least 1"));
    }
    if opts.batch == 0 {
        return Err(Error::invalid("batch", "volumes per forward pass must be at least 1"));
    }
    let (net, spec, weights) = feature_network(&opts.network, device)?;
    let mut listed = list_volumes(&opts.real)?;
    if let Some(n) = protocol.num {
        listed.truncate(n);
    }
    let key = cache_key(&weights.sha256, &protocol, &listed);
    let cache_file = opts.cache.as_ref().map(|dir| dir.join(format!("{key}.safetensors")));
    let cached = match &cache_file {
        Some(f) => read_cache(f)?,
        None => None,
    };
    let cache_hit = cached.is_some();
    let (real_files, real_first, real) = match cached {
        Some(f) => {
            // Only the first real volume is read: for the range check against the fakes.
            let set = prepare_set(&opts.real, &Protocol { num: Some(1), ..protocol.clone() }, SetRole::Real)?;
            (set.files, set.volumes, f)
        }
        None => {
            let set = prepare_set(&opts.real, &protocol, SetRole::Real)?;
            let (files, vols) = (set.files, set.volumes);
            let f = features(&net, &vols, opts, "real volumes", device)?;
            if let Some(path) = &cache_file {
                write_cache(path, &f)?;
            }
            (files, vols.into_iter().take(1).collect(), f)
        }
    };
    // --clamp: into the protocol's range, or (as given) the real set's when it is model space
    // or [0, 1].
    let clamp = match (opts.clamp, protocol.range) {
        (false, _) => None,
        (true, Some(r)) if r.bounds().is_some() => r.bounds(),
        (true, _) => match real_first.first().map(|v| v.min_max()).map(|(l, h)| Range::of(l, h)) {
            Some(Range::ZeroOne) => Some([0.0, 1.0]),
            Some(Range::MinusOneOne) => Some([-1.0, 1.0]),
            _ => None,
        },
    };
    let set = prepare_set(&opts.fake, &protocol, SetRole::Generated { clamp })?;
    let (fake_files, fake_vols) = (set.files, set.volumes);
    let clamped_fraction = opts.clamp.then_some(set.clamped_fraction);
    if let (Some(r), Some(f)) = (real_first.first(), fake_vols.first())
        && r.dims != f.dims
    {
        return Err(Error::data(
            &opts.fake,
            format!(
                "the generated volumes are {:?} ({}), the real ones {:?} ({}): both sets must have one shape \
                 (or use a preset that pools both to one size)",
                f.dims,
                fake_files[0].display(),
                r.dims,
                real_files[0].display()
            ),
        ));
    }
    check_same_range(&real_first, &real_files[..1], &fake_vols, &fake_files)?;
    let fake = features(&net, &fake_vols, opts, "generated volumes", device)?;
    let fid = stats::fid(&real, &fake)?;
    let mmd = stats::mmd(&real, &fake, opts.mmd)?;
    Ok(FidReport {
        fid,
        mmd: mmd.mmd,
        mmd2: mmd.mmd2,
        mmd_gamma: mmd.gamma,
        mmd_estimator: opts.mmd,
        n_real: real.n,
        n_fake: fake.n,
        features: real.d,
        network: format!("MedicalNet ResNet-{} (shortcut {})", spec.depth, spec.shortcut),
        weights,
        preset: protocol,
        real: opts.real.clone(),
        fake: opts.fake.clone(),
        real_features_cached: cache_hit,
        clamped_fraction,
        cache_file,
        seconds: started.elapsed().as_secs_f64(),
        time_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::data::nifti::write_volume;
    use crate::data::phantom::chest_phantom;

    /// `n` phantom volumes of 16³ in model space, seeds from `seed`.
    fn set(dir: &Path, name: &str, n: usize, seed: u64) -> PathBuf {
        let out = dir.join(name);
        std::fs::create_dir_all(&out).unwrap();
        for i in 0..n as u64 {
            let mut v = chest_phantom(16, seed + i);
            v.data.iter_mut().for_each(|x| *x = (*x / 1000.0).clamp(-1.0, 1.0));
            write_volume(&out.join(format!("v{i}.nii.gz")), &v, "test").unwrap();
        }
        out
    }

    #[test]
    fn scores_reports_and_the_real_feature_cache() {
        let dir = tempfile::tempdir().unwrap();
        let opts = FidOptions {
            real: set(dir.path(), "real", 3, 0),
            fake: set(dir.path(), "fake", 3, 50),
            network: FeatureNet::TestFormula(10),
            preset: Preset::AsGiven,
            num: None,
            batch: 2,
            cache: Some(dir.path().join("cache")),
            mmd: MmdEstimator::Biased,
            clamp: false,
            progress: false,
        };
        let device = Device::flex();
        let first = evaluate(&opts, &device).unwrap();
        assert!(first.fid.is_finite() && first.mmd >= 0.0, "{first:?}");
        assert_eq!((first.n_real, first.n_fake, first.features), (3, 3, 512));
        assert!(!first.real_features_cached);
        assert!(first.cache_file.as_ref().is_some_and(|f| f.is_file()));
        assert_eq!(first.preset.name, "none");
        let second = evaluate(&opts, &device).unwrap();
        assert!(second.real_features_cached);
        assert_eq!(second.fid, first.fid);
        // Without a cache nothing is read, and the report says so.
        let third = evaluate(&FidOptions { cache: None, ..opts.clone() }, &device).unwrap();
        assert!(!third.real_features_cached && third.cache_file.is_none());
        assert_eq!(third.fid, first.fid);

        // The JSON keeps its keys; `null`s stay.
        let v: serde_json::Value = serde_json::to_value(&third).unwrap();
        for key in [
            "fid",
            "mmd",
            "mmd2",
            "mmd_gamma",
            "mmd_estimator",
            "n_real",
            "n_fake",
            "features",
            "network",
            "weights",
            "preset",
            "real",
            "fake",
            "real_features_cached",
            "cache_file",
            "seconds",
            "time_unix",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert!(v["cache_file"].is_null() && v["weights"]["file"].is_null());

        // A preset's count is checked.
        let e = evaluate(&FidOptions { preset: Preset::Lidc, ..opts.clone() }, &device).unwrap_err();
        assert!(e.to_string().contains("uses 1000 volumes"), "{e}");
    }
}
