//! Evaluation as the paper does it (spec §12): 3D-FID and MMD on MedicalNet ResNet features,
//! MS-SSIM diversity. Protocol presets pin the resolution fed to the network, the value
//! range and the number of volumes; real-set features are cached by the weights' hash and
//! the preset, so evaluating many checkpoints costs one pass over the real data.

pub mod diversity;
pub mod fid;
pub mod msssim;
pub mod resnet;
pub mod ssim;
pub mod stats;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::dataset::list_volumes;
use crate::data::nifti::read_volume;
use crate::data::volume::Volume;
use crate::error::{Error, Result};
use resnet::ResNet3d;
use stats::Features;

/// The two MedicalNet ResNet-50 releases, by SHA-256.
pub const KNOWN_WEIGHTS: [(&str, &str); 2] = [
    (
        "5b6189cafbee2f5604a7279b62bc163365aa6a86a377e1dc260a14275cacbd84",
        "resnet_50.pth (MedicalNet, named in PRDiT's README)",
    ),
    (
        "ff48a62219073fb977fd3f4ddfb8dc1367f0ec156c8d6f6c37e205bd683a246e",
        "resnet_50_23dataset.pth (MedicalNet, named by PRDiT-FM)",
    ),
];

/// What a set of volumes' intensities look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Range {
    /// Model space, [−1, 1].
    MinusOneOne,
    /// [0, 1] (e.g. the official RAD-ChestCT loader's output).
    ZeroOne,
    /// Hounsfield units.
    Hu,
    /// Something else.
    Other,
}

impl Range {
    /// Classifies a volume by its extremes.
    pub fn of(lo: f32, hi: f32) -> Self {
        if lo >= -0.05 && hi <= 1.05 {
            Range::ZeroOne
        } else if lo >= -1.05 && hi <= 1.05 {
            Range::MinusOneOne
        } else if lo < -200.0 || hi > 200.0 {
            Range::Hu
        } else {
            Range::Other
        }
    }

    /// The interval of a bounded range ([−1, 1], [0, 1]).
    pub fn bounds(self) -> Option<[f32; 2]> {
        match self {
            Range::MinusOneOne => Some([-1.0, 1.0]),
            Range::ZeroOne => Some([0.0, 1.0]),
            Range::Hu | Range::Other => None,
        }
    }

    /// How it reads in messages.
    pub fn describe(self) -> &'static str {
        match self {
            Range::MinusOneOne => "model space [-1, 1]",
            Range::ZeroOne => "[0, 1]",
            Range::Hu => "Hounsfield units",
            Range::Other => "an unrecognised range",
        }
    }
}

/// An overshoot of the expected range that counts as rounding, not as another scale.
pub const ROUNDING: f32 = 0.01;

/// A named protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// LIDC-IDRI: 128³, [−1, 1], 1000 volumes (the official evaluation with PRDiT-FM's
    /// loader fixes).
    Lidc,
    /// RAD-ChestCT: 128³, [0, 1] (the official RAD data, which its loader does not rescale;
    /// spec §11.3), 1000 volumes.
    RadChestct,
    /// The volumes as they are, all of them.
    #[value(name = "none")]
    #[serde(rename = "none")]
    AsGiven,
}

impl Preset {
    /// Its name (`lidc`, `rad-chestct`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::Lidc => "lidc",
            Preset::RadChestct => "rad-chestct",
            Preset::AsGiven => "none",
        }
    }
}

/// A protocol: what the network sees and how many volumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Protocol {
    pub name: String,
    /// Volumes are average-pooled to this edge (by an integer factor) before the network.
    pub size: Option<usize>,
    /// The range real volumes must have (fake ones are clamped into it).
    pub range: Option<Range>,
    /// The first N volumes of each set, in name order.
    pub num: Option<usize>,
}

impl Protocol {
    /// The protocol of a preset: `lidc` (128³, [−1, 1]) and `rad-chestct` (128³, [0, 1]), 1000
    /// volumes each, each in the range the official data loader gives (spec §11.3) — and
    /// `none` (volumes as they are).
    pub fn of(preset: Preset) -> Self {
        let p = |size, range, num| Protocol { name: preset.name().to_string(), size, range, num };
        match preset {
            Preset::Lidc => p(Some(128), Some(Range::MinusOneOne), Some(1000)),
            Preset::RadChestct => p(Some(128), Some(Range::ZeroOne), Some(1000)),
            Preset::AsGiven => p(None, None, None),
        }
    }
}

/// `size`³ from `v` by averaging blocks of an integer edge (the official `AvgPool3d(k)`).
fn pool_to(v: &Volume, size: usize, path: &Path) -> Result<Volume> {
    if v.dims == [size; 3] {
        return Ok(v.clone());
    }
    let k = v.dims[0] / size;
    if k == 0 || v.dims.iter().any(|&d| d != k * size) {
        return Err(Error::data(
            path,
            format!("shape {:?} does not pool to {size}³ by an integer factor", v.dims),
        ));
    }
    Ok(crate::prepare::ops::avg_pool(v, k))
}

/// The volumes of a set, read, validated and prepared as the protocol says.
/// Every bad file is listed (not only the first), and all volumes must have one shape.
/// A set of volumes ready for the feature network.
pub struct PreparedSet {
    pub files: Vec<PathBuf>,
    pub volumes: Vec<Volume>,
    /// The fraction of voxels clamped into the protocol's range (generated sets with clamping).
    pub clamped_fraction: f64,
}

/// Which set [`prepare_set`] reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SetRole {
    /// The real volumes: they must have the protocol's range exactly.
    Real,
    /// Generated volumes, clamped into `clamp` when given. Under a protocol with a range, an
    /// overshoot beyond rounding without `clamp` is an error that prints the values (rounding
    /// overshoot is clamped to the range).
    Generated { clamp: Option<[f32; 2]> },
}

/// The volumes of a set, read, validated and prepared as the protocol says.
pub fn prepare_set(source: &Path, protocol: &Protocol, role: SetRole) -> Result<PreparedSet> {
    let mut files = list_volumes(source)?;
    if protocol.num == Some(0) {
        return Err(Error::invalid("num", "the number of volumes to evaluate must be at least 1"));
    }
    if let Some(n) = protocol.num {
        if files.len() < n {
            return Err(Error::data(
                source,
                format!(
                    "the {} protocol uses {n} volumes, this set has {} (set a number of volumes to evaluate fewer)",
                    protocol.name,
                    files.len()
                ),
            ));
        }
        files.truncate(n);
    }
    let mut volumes = Vec::with_capacity(files.len());
    let mut problems = Vec::new();
    let (mut clamped, mut voxels) = (0usize, 0usize);
    for f in &files {
        match prepare_volume(f, protocol, role) {
            Ok((v, c, n)) => {
                clamped += c;
                voxels += n;
                volumes.push(v)
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty()
        && let Some(first) = volumes.first()
    {
        for (f, v) in files.iter().zip(&volumes) {
            if v.dims != first.dims {
                problems.push(format!(
                    "{}: shape {:?}, but {} has {:?} (a set has one shape)",
                    f.display(),
                    v.dims,
                    files[0].display(),
                    first.dims
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Files {
            what: format!("{} volumes in {}", files.len(), source.display()),
            problems,
        });
    }
    Ok(PreparedSet { files, volumes, clamped_fraction: clamped as f64 / voxels.max(1) as f64 })
}

/// One volume of a set, read, checked and prepared as the protocol says.
fn prepare_volume(f: &Path, protocol: &Protocol, role: SetRole) -> Result<(Volume, usize, usize)> {
    let mut v = read_volume(f)?;
    let voxels = v.data.len();
    if let Some(i) = v.first_non_finite() {
        return Err(Error::data(f, format!("voxel {i} is not a finite number")));
    }
    let (lo, hi) = v.min_max();
    let range = Range::of(lo, hi);
    let expected_range = protocol.range.filter(|r| r.bounds().is_some());
    if let Some(expected_range) = expected_range {
        let expected = expected_range.describe();
        let [elo, ehi] = expected_range.bounds().expect("bounded");
        match role {
            // Real volumes must have the protocol's range.
            SetRole::Real if range != expected_range => {
                return Err(Error::data(
                    f,
                    format!(
                        "values span [{lo}, {hi}] ({}), but the {} protocol evaluates real volumes in {expected}",
                        range.describe(),
                        protocol.name
                    ),
                ));
            }
            SetRole::Real => {}
            // Generated ones: the range, perhaps overshooting; another scale is an error.
            SetRole::Generated { clamp } => {
                let other_scale = match expected_range {
                    Range::MinusOneOne => range == Range::ZeroOne || range == Range::Hu,
                    // A [0, 1] model overshoots a little; reaching −0.5 is a [−1, 1] set.
                    _ => range == Range::Hu || lo < -0.5,
                };
                if other_scale {
                    return Err(Error::data(
                        f,
                        format!(
                            "values span [{lo}, {hi}] ({}), but the {} protocol evaluates {expected} (sample \
                             without --hu, from a model trained on data in {expected})",
                            range.describe(),
                            protocol.name
                        ),
                    ));
                }
                if (lo < elo - ROUNDING || hi > ehi + ROUNDING) && clamp.is_none() {
                    return Err(Error::data(
                        f,
                        format!(
                            "values span [{lo}, {hi}], beyond the {} protocol's {expected}: clamp the generated \
                             volumes into it explicitly (--clamp; the fraction clamped is reported)",
                            protocol.name
                        ),
                    ));
                }
            }
        }
    }
    // Generated volumes into the clamp bounds (under a ranged protocol at least its range).
    let bounds = match (role, expected_range) {
        (SetRole::Real, _) => None,
        (SetRole::Generated { clamp }, Some(r)) => Some(clamp.unwrap_or(r.bounds().expect("bounded"))),
        (SetRole::Generated { clamp }, None) => clamp,
    };
    let mut clamped = 0;
    if let Some([lo, hi]) = bounds {
        clamped = v.data.iter().filter(|x| **x < lo || **x > hi).count();
        v.data.iter_mut().for_each(|x| *x = x.clamp(lo, hi));
    }
    if let Some(size) = protocol.size {
        v = pool_to(&v, size, f)?;
    }
    Ok((v, clamped, voxels))
}

/// Checks that two sets are in the same intensity range (the error names an example).
pub fn check_same_range(
    real: &[Volume],
    real_files: &[PathBuf],
    fake: &[Volume],
    fake_files: &[PathBuf],
) -> Result<()> {
    let range = |v: &Volume| {
        let (lo, hi) = v.min_max();
        Range::of(lo, hi)
    };
    let kinds = |vs: &[Volume]| vs.iter().map(range).collect::<Vec<_>>();
    let (r, f) = (kinds(real), kinds(fake));
    let main = |k: &[Range]| {
        if k.contains(&Range::Hu) {
            Range::Hu
        } else if k.contains(&Range::MinusOneOne) {
            Range::MinusOneOne
        } else {
            k[0]
        }
    };
    let (rm, fm) = (main(&r), main(&f));
    if rm != fm {
        let example = f.iter().position(|x| *x != rm).unwrap_or(0);
        let (flo, fhi) = fake[example].min_max();
        let (rlo, rhi) = real[0].min_max();
        return Err(Error::data(
            &fake_files[example],
            format!(
                "the generated volumes span [{flo}, {fhi}] ({}) but the real ones ({} …) span [{rlo}, {rhi}] ({}): \
                 scores of sets in different ranges are meaningless{}",
                fm.describe(),
                real_files[0].display(),
                rm.describe(),
                if matches!(rm, Range::MinusOneOne | Range::ZeroOne) && fm == Range::Other {
                    " (generated volumes that overshoot a little can be clamped into the real range with --clamp)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(())
}

/// Features of volumes, `batch` at a time on `device`.
pub fn extract(
    net: &ResNet3d,
    volumes: &[Volume],
    batch: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Features> {
    let mut data = Vec::new();
    let mut d = 0;
    for (n, chunk) in volumes.chunks(batch.max(1)).enumerate() {
        let dims = chunk[0].dims;
        if chunk.iter().any(|v| v.dims != dims) {
            return Err(Error::invalid("volumes", "volumes of different shapes in one set"));
        }
        let flat: Vec<f32> = chunk.iter().flat_map(|v| v.data.iter().copied()).collect();
        let x = Tensor::<5>::from_data(
            TensorData::new(flat, [chunk.len(), 1, dims[0], dims[1], dims[2]]),
            device,
        );
        let f = net.forward(x);
        d = f.dims()[1];
        let values = crate::device::to_host(f, "features")?;
        data.extend(values.into_iter().map(|v| v as f64));
        progress((n + 1) * batch.max(1));
    }
    Ok(Features::new(volumes.len(), d, data))
}

/// The cache key of a real set's features: the weights, the protocol and every file's
/// name, size and modification time.
pub fn cache_key(weights_sha256: &str, protocol: &Protocol, files: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    h.update(weights_sha256.as_bytes());
    h.update(serde_json::to_string(protocol).expect("serialises").as_bytes());
    for f in files {
        h.update(f.display().to_string().as_bytes());
        if let Ok(m) = std::fs::metadata(f) {
            h.update(m.len().to_le_bytes());
            if let Ok(t) = m
                .modified()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).map_err(std::io::Error::other))
            {
                h.update(t.as_nanos().to_le_bytes());
            }
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads cached features (`None` when absent).
pub fn read_cache(path: &Path) -> Result<Option<Features>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::data(path, format!("unreadable feature cache: {e}")))?;
    let t = st.tensor("features").map_err(|e| Error::data(path, format!("unreadable feature cache: {e}")))?;
    let [n, d] = t.shape() else {
        return Err(Error::data(path, "the cached features are not a matrix"));
    };
    let data = t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
    Ok(Some(Features::new(*n, *d, data)))
}

/// Writes features to a cache file (atomically).
pub fn write_cache(path: &Path, f: &Features) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let bytes: Vec<u8> = f.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![f.n, f.d], &bytes)
        .map_err(|e| Error::data(path, format!("cannot encode features: {e}")))?;
    let encoded = safetensors::serialize(vec![("features", view)], None)
        .map_err(|e| Error::data(path, e.to_string()))?;
    crate::fsio::write_atomic(path, &encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `rad-chestct` protocol evaluates [0, 1] volumes (the official RAD data): real sets in
    /// [0, 1], generated ones clamped into it on request, a [−1, 1] set refused.
    #[test]
    fn rad_chestct_protocol_is_zero_one() {
        let dir = tempfile::tempdir().unwrap();
        let protocol = Protocol { size: None, ..Protocol::of(Preset::RadChestct) };
        assert_eq!(protocol.range, Some(Range::ZeroOne));
        let write = |name: &str, lo: f32, hi: f32| -> PathBuf {
            let f = dir.path().join(name);
            let data = (0..512).map(|i| lo + (hi - lo) * i as f32 / 511.0).collect();
            let v = Volume { dims: [8; 3], spacing: [1.0; 3], data };
            crate::data::nifti::write_volume(&f, &v, "").unwrap();
            f
        };
        let unit = write("unit.nii.gz", 0.0, 1.0);
        let signed = write("signed.nii.gz", -1.0, 1.0);
        let over = write("over.nii.gz", -0.1, 1.1);
        assert!(prepare_volume(&unit, &protocol, SetRole::Real).is_ok());
        let e = prepare_volume(&signed, &protocol, SetRole::Real).unwrap_err().to_string();
        assert!(e.contains("evaluates real volumes in [0, 1]"), "{e}");
        let e =
            prepare_volume(&signed, &protocol, SetRole::Generated { clamp: None }).unwrap_err().to_string();
        assert!(e.contains("from a model trained on data in [0, 1]"), "{e}");
        let e = prepare_volume(&over, &protocol, SetRole::Generated { clamp: None }).unwrap_err().to_string();
        assert!(e.contains("span [-0.1") && e.contains("--clamp"), "{e}");
        let (v, clamped, n) =
            prepare_volume(&over, &protocol, SetRole::Generated { clamp: Some([0.0, 1.0]) }).unwrap();
        assert_eq!(v.min_max(), (0.0, 1.0));
        assert!(clamped > 0 && clamped < n / 4, "{clamped} of {n}");
        // The lidc protocol still wants [−1, 1].
        let lidc = Protocol { size: None, ..Protocol::of(Preset::Lidc) };
        assert!(prepare_volume(&signed, &lidc, SetRole::Real).is_ok());
    }
}
