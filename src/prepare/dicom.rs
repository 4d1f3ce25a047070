//! DICOM series → HU volume: files grouped by Series Instance UID, slices ordered by their
//! position along the slice normal, the modality LUT (rescale slope/intercept) applied by
//! dicom-pixeldata (uncompressed, RLE, JPEG and JPEG 2000 transfer syntaxes), spacing from
//! Pixel Spacing and the slice positions — a missing slice or an uneven stack is reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{OpenFileOptions, file::ReadPreamble};
use dicom_pixeldata::PixelDecoder;

use crate::data::nifti::Axes;
use crate::data::volume::Volume;
use crate::error::{Error, Result};

/// Whether a file looks like DICOM (the `DICM` marker after the preamble, or a `.dcm` name).
pub fn is_dicom(path: &Path) -> bool {
    use std::io::Read;
    if path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("dcm")) {
        return true;
    }
    let mut head = [0u8; 132];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head[128..] == b"DICM"
}

/// Series Instance UID → its files.
pub type Series = BTreeMap<String, Vec<PathBuf>>;

/// The series found among `files` (headers only are read), and the files that could not be
/// read with the reason.
pub fn group_series(files: &[PathBuf]) -> (Series, Vec<(PathBuf, String)>) {
    let mut series = Series::new();
    let mut bad = Vec::new();
    for f in files {
        match OpenFileOptions::new()
            .read_preamble(ReadPreamble::Auto)
            .read_until(tags::PIXEL_DATA)
            .open_file(f)
        {
            Ok(obj) => {
                let uid = obj
                    .get(tags::SERIES_INSTANCE_UID)
                    .and_then(|e| e.to_str().ok())
                    .map(|s| s.trim().to_string());
                series.entry(uid.unwrap_or_else(|| "(no series UID)".into())).or_default().push(f.clone());
            }
            Err(e) => bad.push((f.clone(), format!("not a readable DICOM file: {e}"))),
        }
    }
    (series, bad)
}

fn floats(
    obj: &dicom_object::DefaultDicomObject,
    tag: dicom_object::Tag,
    name: &str,
    path: &Path,
) -> Result<Vec<f64>> {
    obj.get(tag)
        .ok_or_else(|| Error::data(path, format!("missing {name}")))?
        .to_multi_float64()
        .map_err(|e| Error::data(path, format!("unreadable {name}: {e}")))
}

/// One slice: position along the normal, its HU values (row-major), header geometry.
struct Slice {
    path: PathBuf,
    along: f64,
    rows: usize,
    cols: usize,
    pixels: Vec<f32>,
}

/// What a series load reports besides the volume.
pub struct SeriesInfo {
    pub axes: Axes,
    pub warnings: Vec<String>,
    pub slices: usize,
}

/// Reads a series (its files, any order) into a volume with axes (column, row, slice).
pub fn read_series(files: &[PathBuf], name: &Path) -> Result<(Volume, SeriesInfo)> {
    if files.len() < 2 {
        return Err(Error::data(name, format!("a series of {} slice(s) is not a volume", files.len())));
    }
    let mut slices = Vec::with_capacity(files.len());
    let mut geometry: Option<([f64; 3], [f64; 3], [f64; 2])> = None;
    for f in files {
        let obj = OpenFileOptions::new()
            .read_preamble(ReadPreamble::Auto)
            .open_file(f)
            .map_err(|e| Error::data(f, format!("not a readable DICOM file: {e}")))?;
        let modality = obj.get(tags::MODALITY).and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string());
        if modality.as_deref() != Some("CT") {
            return Err(Error::data(
                f,
                format!(
                    "modality {}, not CT: only CT in Hounsfield units can be prepared",
                    modality.as_deref().unwrap_or("unknown")
                ),
            ));
        }
        let orient = floats(&obj, tags::IMAGE_ORIENTATION_PATIENT, "Image Orientation (Patient)", f)?;
        let pos = floats(&obj, tags::IMAGE_POSITION_PATIENT, "Image Position (Patient)", f)?;
        let spacing = floats(&obj, tags::PIXEL_SPACING, "Pixel Spacing", f)?;
        if orient.len() != 6 || pos.len() != 3 || spacing.len() != 2 {
            return Err(Error::data(f, "malformed geometry (orientation, position or pixel spacing)"));
        }
        let row = [orient[0], orient[1], orient[2]];
        let col = [orient[3], orient[4], orient[5]];
        let geo = (row, col, [spacing[0], spacing[1]]);
        match &geometry {
            None => geometry = Some(geo),
            Some(g) if (0..3).any(|k| (g.0[k] - row[k]).abs() > 1e-3 || (g.1[k] - col[k]).abs() > 1e-3) => {
                return Err(Error::data(f, "its orientation differs from the rest of the series"));
            }
            _ => {}
        }
        let normal = cross(row, col);
        let decoded = obj
            .decode_pixel_data()
            .map_err(|e| Error::data(f, format!("cannot decode the pixel data: {e}")))?;
        let (rows, cols) = (decoded.rows() as usize, decoded.columns() as usize);
        if decoded.number_of_frames() != 1 {
            return Err(Error::data(f, "multi-frame images are not supported (one slice per file expected)"));
        }
        let pixels: Vec<f32> = decoded
            .to_vec::<f32>()
            .map_err(|e| Error::data(f, format!("cannot convert the pixel data: {e}")))?;
        if pixels.len() != rows * cols {
            return Err(Error::data(f, format!("{} pixels for a {rows}×{cols} image", pixels.len())));
        }
        slices.push(Slice { path: f.clone(), along: dot(pos, normal), rows, cols, pixels });
    }
    let (row, col, ps) = geometry.expect("at least one slice");
    let (rows, cols) = (slices[0].rows, slices[0].cols);
    if let Some(s) = slices.iter().find(|s| (s.rows, s.cols) != (rows, cols)) {
        return Err(Error::data(
            &s.path,
            format!("{}×{} pixels, the series has {rows}×{cols}", s.rows, s.cols),
        ));
    }
    slices.sort_by(|a, b| a.along.total_cmp(&b.along));
    let gaps: Vec<f64> = slices.windows(2).map(|w| w[1].along - w[0].along).collect();
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let step = sorted[sorted.len() / 2];
    if step <= 1e-6 {
        return Err(Error::data(
            name,
            "slices at the same position: duplicate slices or more than one stack",
        ));
    }
    let mut warnings = Vec::new();
    for (i, g) in gaps.iter().enumerate() {
        if *g > 1.5 * step {
            return Err(Error::data(
                &slices[i + 1].path,
                format!(
                    "{g:.2} mm after the previous slice where the series steps {step:.2} mm: a slice is missing \
                     between {} and {}",
                    slices[i].path.display(),
                    slices[i + 1].path.display()
                ),
            ));
        }
        if *g < 0.5 * step {
            return Err(Error::data(
                &slices[i + 1].path,
                format!("only {g:.2} mm from the previous slice (step {step:.2} mm)"),
            ));
        }
    }
    let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
    if hi - lo > 0.01 * step {
        warnings
            .push(format!("slice spacing varies from {lo:.3} to {hi:.3} mm; resampled with {step:.3} mm"));
    }
    // Volume axes: (column, row, slice); row-major pixels are (row, column).
    let n = slices.len();
    let mut data = vec![0f32; cols * rows * n];
    for (s, slice) in slices.iter().enumerate() {
        for r in 0..rows {
            for c in 0..cols {
                data[(c * rows + r) * n + s] = slice.pixels[r * cols + c];
            }
        }
    }
    let spacing = [ps[1] as f32, ps[0] as f32, step as f32]; // Pixel Spacing is (row, column) spacing
    let normal = cross(row, col);
    // LPS patient axes → RAS+ world (negate x and y) for the shared reorientation code.
    let lps_cols = [row.map(|v| v * ps[1]), col.map(|v| v * ps[0]), normal.map(|v| v * step)];
    let axes: Axes = std::array::from_fn(|w| {
        std::array::from_fn(|a| if w < 2 { -lps_cols[a][w] } else { lps_cols[a][w] })
    });
    Ok((Volume { dims: [cols, rows, n], spacing, data }, SeriesInfo { axes, warnings, slices: n }))
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: Vec<f64>, b: [f64; 3]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
