//! `prdit eval-diversity`: the mean MS-SSIM over all pairs of a set of generated volumes
//! (lower = more diverse), as the official script computes it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::dataset::list_volumes;
use crate::data::nifti::read_volume;
use crate::error::Result;

/// What MS-SSIM is computed as.
pub const NOTE: &str = "MONAI MS-SSIM, 3D, kernel 3, sigma 1.5, 5 scales, data_range 1 (as the official script; lower = more diverse)";

/// What `prdit eval-diversity` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiversityReport {
    /// Mean MS-SSIM over the pairs.
    pub ms_ssim: f64,
    pub pairs: usize,
    pub volumes: usize,
    pub data_range: f64,
    /// How it is computed ([`NOTE`]).
    pub note: String,
}

/// The diversity of the volumes of `source` (a folder or a list file): the first `num` of
/// them, or all.
pub fn evaluate(source: &Path, num: Option<usize>) -> Result<DiversityReport> {
    let mut files = list_volumes(source)?;
    if let Some(n) = num {
        files.truncate(n);
    }
    let vols = files.iter().map(|f| read_volume(f)).collect::<Result<Vec<_>>>()?;
    let (ms_ssim, pairs) = super::msssim::diversity(&vols)?;
    Ok(DiversityReport { ms_ssim, pairs, volumes: files.len(), data_range: 1.0, note: NOTE.into() })
}
