//! The only file that knows the NIfTI format: read `.nii`/`.nii.gz` into a [`Volume`] (with
//! the file's scaling applied), write float32 volumes with spacing and an axis-aligned affine.
//! Writes are atomic: a crash leaves no partial file under the final name.

use std::path::Path;

use nifti::{IntoNdArray, NiftiHeader, NiftiObject, NiftiType, ReaderOptions, writer::WriterOptions};

use super::volume::{Orientation, Volume};
use crate::error::{Error, Result};

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Data { path: path.to_path_buf(), reason: reason.into() }
}

/// A NIfTI library error in plain words (its I/O errors print as Rust debug text otherwise).
fn plain(e: &nifti::NiftiError) -> String {
    use std::io::ErrorKind;
    match e {
        nifti::NiftiError::Io(io) | nifti::NiftiError::MissingVolumeFile(io) => match io.kind() {
            ErrorKind::UnexpectedEof => "the file ends early (truncated, or an incomplete .gz)".into(),
            ErrorKind::InvalidData | ErrorKind::InvalidInput => {
                format!(
                    "corrupt data ({})",
                    io.get_ref().map_or_else(|| io.kind().to_string(), |inner| inner.to_string())
                )
            }
            _ => io.get_ref().map_or_else(|| io.kind().to_string(), |inner| inner.to_string()),
        },
        other => other.to_string(),
    }
}

/// Whether `path` names a NIfTI file (`.nii` or `.nii.gz`).
pub fn is_nifti(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// Direction × spacing of each voxel axis in RAS+ world coordinates (column `a` is axis `a`).
pub type Axes = [[f64; 3]; 3];

/// Reads a 3D NIfTI volume (a 4D/5D file is accepted when its extra axes have size 1), as
/// stored (no reorientation).
pub fn read_volume(path: &Path) -> Result<Volume> {
    read_volume_with_axes(path).map(|(v, _)| v)
}

/// The voxel axes of a header: the sform when set, else the qform, else the spacing alone.
fn axes(h: &NiftiHeader) -> Axes {
    let p = h.pixdim;
    if h.sform_code > 0 {
        let r = [h.srow_x, h.srow_y, h.srow_z];
        return [0, 1, 2].map(|w| [0, 1, 2].map(|a| r[w][a] as f64));
    }
    if h.qform_code > 0 {
        let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let rot = [
            [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
            [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
            [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ];
        let qfac = if p[0] < 0.0 { -1.0 } else { 1.0 };
        let scale = [p[1] as f64, p[2] as f64, qfac * p[3] as f64];
        return [0, 1, 2].map(|w| [0, 1, 2].map(|k| rot[w][k] * scale[k]));
    }
    [[p[1] as f64, 0.0, 0.0], [0.0, p[2] as f64, 0.0], [0.0, 0.0, p[3] as f64]]
}

/// [`read_volume`], with the orientation of its voxel axes.
pub fn read_volume_with_axes(path: &Path) -> Result<(Volume, Axes)> {
    if !path.is_file() {
        return Err(bad(path, "no such file"));
    }
    let obj = ReaderOptions::new()
        .read_file(path)
        .map_err(|e| bad(path, format!("cannot read as NIfTI: {}", plain(&e))))?;
    let header = obj.header().clone();
    let dim = header.dim().map_err(|e| bad(path, format!("invalid dimensions in the header: {e}")))?.to_vec();
    if dim.len() < 3 || dim[3..].iter().any(|&d| d != 1) {
        return Err(bad(path, format!("expected a 3D volume, the header says dimensions {dim:?}")));
    }
    let dims = [dim[0] as usize, dim[1] as usize, dim[2] as usize];
    let array = obj
        .into_volume()
        .into_ndarray::<f32>()
        .map_err(|e| bad(path, format!("cannot decode the voxel data: {}", plain(&e))))?;
    let data: Vec<f32> = array.iter().copied().collect(); // logical order: k fastest
    if data.len() != dims.iter().product::<usize>() {
        return Err(bad(path, format!("holds {} voxels, the header says {dims:?}", data.len())));
    }
    let p = header.pixdim;
    let spacing = [p[1].abs(), p[2].abs(), p[3].abs()];
    let spacing = if spacing.iter().all(|s| s.is_finite() && *s > 0.0) { spacing } else { [1.0; 3] };
    Ok((Volume { dims, spacing, data }, axes(&header)))
}

/// Writes `vol` as float32 NIfTI-1 (gzip when the name ends in `.gz`), spacing in the header
/// and an axis-aligned scanner affine (sform) declaring prdit's canonical orientation, LPS
/// (i → patient left, j → posterior, k → superior; DICOM's patient axes); `description` goes
/// into `descrip` (at most 79 bytes are kept).
pub fn write_volume(path: &Path, vol: &Volume, description: &str) -> Result<()> {
    write_volume_oriented(path, vol, description, Orientation::Lps)
}

/// [`write_volume`] declaring `orientation` (no affine at all for [`Orientation::Array`]).
pub fn write_volume_oriented(
    path: &Path,
    vol: &Volume,
    description: &str,
    orientation: Orientation,
) -> Result<()> {
    let [x, y, z] = vol.dims;
    let array = ndarray::Array3::from_shape_vec((x, y, z), vol.data.clone())
        .map_err(|e| bad(path, format!("volume data does not match its dimensions: {e}")))?;
    let [sx, sy, sz] = vol.spacing;
    let mut descrip = description.as_bytes().to_vec();
    descrip.truncate(79);
    descrip.resize(80, 0);
    let signs = orientation.ras_signs();
    let [gx, gy, gz] = signs.unwrap_or([1.0; 3]);
    let header = NiftiHeader {
        pixdim: [1.0, sx, sy, sz, 1.0, 1.0, 1.0, 1.0],
        xyzt_units: 2 | 8, // mm, s
        sform_code: if signs.is_some() { 1 } else { 0 },
        qform_code: 0,
        srow_x: [gx * sx, 0.0, 0.0, 0.0],
        srow_y: [0.0, gy * sy, 0.0, 0.0],
        srow_z: [0.0, 0.0, gz * sz, 0.0],
        descrip,
        ..NiftiHeader::default()
    };
    // The writer derives its output format from the file name (and mangles names with dots):
    // the scratch file is `out.nii[.gz]`.
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !(name.ends_with(".nii.gz") || name.ends_with(".nii")) {
        return Err(bad(path, "a NIfTI file name must end in .nii or .nii.gz"));
    }
    crate::fsio::write_atomic_with(path, |scratch| {
        WriterOptions::new(scratch)
            .reference_header(&header)
            .write_nifti_with_type(&array, NiftiType::Float32)
            .map_err(|e| bad(path, format!("cannot write: {}", plain(&e))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_values_layout_and_spacing() {
        let dir = tempfile::tempdir().unwrap();
        let dims = [3, 4, 5];
        let data: Vec<f32> = (0..60).map(|i| i as f32 * 0.5 - 7.0).collect();
        let vol = Volume { dims, spacing: [0.7, 0.8, 2.5], data };
        for name in ["v.nii", "v.nii.gz"] {
            let path = dir.path().join(name);
            write_volume(&path, &vol, "test").unwrap();
            let back = read_volume(&path).unwrap();
            assert_eq!(back, vol, "{name}");
        }
        // Nothing but the two files is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn corrupt_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let vol = Volume::filled([8, 8, 8], 0.25);
        let path = dir.path().join("a.nii.gz");
        write_volume(&path, &vol, "").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.nii.gz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = read_volume(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.nii.gz"), "{e}");
        assert!(!e.contains("Custom {") && !e.contains("kind:"), "plain words, not debug text: {e}");
        let junk = dir.path().join("junk.nii");
        std::fs::write(&junk, b"not a nifti file at all").unwrap();
        let e = read_volume(&junk).unwrap_err().to_string();
        assert!(e.contains("junk.nii"), "{e}");
    }
}
