//! A 3D volume on the host and the intensity window between Hounsfield units and model space.

use serde::{Deserialize, Serialize};

/// A scalar 3D volume. `data[(a·dims[1] + b)·dims[2] + c]` is voxel (i, j, k) = (a, b, c) of
/// the NIfTI grid, which the model reads as (depth, height, width), as the official
/// pipeline does (nibabel's array fed straight into the network).
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub dims: [usize; 3],
    /// Voxel size in mm along i, j, k.
    pub spacing: [f32; 3],
    pub data: Vec<f32>,
}

impl Volume {
    /// A volume of `dims` filled with `value`, spacing 1 mm.
    pub fn filled(dims: [usize; 3], value: f32) -> Self {
        Volume { dims, spacing: [1.0; 3], data: vec![value; dims.iter().product()] }
    }

    /// Flat index of voxel (a, b, c).
    pub fn index(&self, a: usize, b: usize, c: usize) -> usize {
        (a * self.dims[1] + b) * self.dims[2] + c
    }

    /// Smallest and largest value (NaN-free volumes only; NaN is reported by `check_finite`).
    pub fn min_max(&self) -> (f32, f32) {
        self.data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    }

    /// Index of the first non-finite voxel, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        self.data.iter().position(|v| !v.is_finite())
    }
}

/// The HU window that maps to model space [−1, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub min_hu: f32,
    pub max_hu: f32,
}

impl Window {
    /// HU → model space, clipping to the window.
    pub fn to_model(&self, hu: f32) -> f32 {
        let x = (hu.clamp(self.min_hu, self.max_hu) - self.min_hu) / (self.max_hu - self.min_hu);
        2.0 * x - 1.0
    }

    /// Model space → HU (no clipping).
    pub fn to_hu(&self, x: f32) -> f32 {
        self.to_hu_from(x, ValueRange::MinusOneOne)
    }

    /// A value of a dataset stored in `range` → HU (no clipping).
    pub fn to_hu_from(&self, x: f32, range: ValueRange) -> f32 {
        let [lo, hi] = range.bounds();
        self.min_hu + (x - lo) / (hi - lo) * (self.max_hu - self.min_hu)
    }
}

impl From<[f32; 2]> for Window {
    /// `[min, max]` in HU, as `dataset.json` and `data.json` record windows.
    fn from([min_hu, max_hu]: [f32; 2]) -> Self {
        Window { min_hu, max_hu }
    }
}

/// The value range a dataset's volumes are stored in, which the model learns and samples:
/// [−1, 1] (the official LIDC loader's 2x − 1, prdit's default) or [0, 1] (the official
/// RAD-ChestCT data, which its loader leaves as preprocessed; spec §11.3). Recorded in
/// `dataset.json` by `prepare`, carried into a run's `data.json` and a sample manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ValueRange {
    #[default]
    #[serde(rename = "[-1, 1]")]
    MinusOneOne,
    #[serde(rename = "[0, 1]")]
    ZeroOne,
}

impl ValueRange {
    /// The interval's ends.
    pub fn bounds(self) -> [f32; 2] {
        match self {
            ValueRange::MinusOneOne => [-1.0, 1.0],
            ValueRange::ZeroOne => [0.0, 1.0],
        }
    }

    /// `[-1, 1]` or `[0, 1]`.
    pub fn describe(self) -> &'static str {
        match self {
            ValueRange::MinusOneOne => "[-1, 1]",
            ValueRange::ZeroOne => "[0, 1]",
        }
    }
}

/// Which anatomical direction a dataset's array axes run toward, written into the affine of
/// every volume prdit writes for it. `LPS` (i → patient left, j → posterior, k → superior) is
/// prdit's canonical order; `LAS` is the order of the official LIDC data (dicom2nifti's arrays
/// of axial series, used as they are), in which official checkpoints generate; `array` is an
/// array without a known orientation (a RAD-ChestCT `.npz` holds no affine), written without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum Orientation {
    #[default]
    #[serde(rename = "LPS")]
    #[value(name = "lps")]
    Lps,
    #[serde(rename = "LAS")]
    #[value(name = "las")]
    Las,
    #[serde(rename = "array")]
    #[value(skip)]
    Array,
}

impl Orientation {
    /// The signs of the axis-aligned affine's diagonal in RAS+ world terms (NIfTI's), or
    /// `None` for an array without orientation.
    pub fn ras_signs(self) -> Option<[f32; 3]> {
        match self {
            Orientation::Lps => Some([-1.0, -1.0, 1.0]),
            Orientation::Las => Some([-1.0, 1.0, 1.0]),
            Orientation::Array => None,
        }
    }

    /// `LPS`, `LAS` or `array`.
    pub fn code(self) -> &'static str {
        match self {
            Orientation::Lps => "LPS",
            Orientation::Las => "LAS",
            Orientation::Array => "array",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_round_trip() {
        let w = Window { min_hu: -1000.0, max_hu: 1000.0 };
        assert_eq!(w.to_model(-1000.0), -1.0);
        assert_eq!(w.to_model(1000.0), 1.0);
        assert_eq!(w.to_model(-2000.0), -1.0);
        assert_eq!(w.to_model(0.0), 0.0);
        assert!((w.to_hu(w.to_model(-850.0)) + 850.0).abs() < 1e-3);
        // A [0, 1] dataset maps its ends onto the window's.
        assert_eq!(w.to_hu_from(0.0, ValueRange::ZeroOne), -1000.0);
        assert_eq!(w.to_hu_from(0.5, ValueRange::ZeroOne), 0.0);
        assert_eq!(w.to_hu_from(1.0, ValueRange::ZeroOne), 1000.0);
    }

    #[test]
    fn range_and_orientation_keep_their_recorded_names() {
        let j = serde_json::to_string(&(ValueRange::ZeroOne, Orientation::Las, Orientation::Array)).unwrap();
        assert_eq!(j, r#"["[0, 1]","LAS","array"]"#);
        let back: (ValueRange, Orientation) = serde_json::from_str(r#"["[-1, 1]","LPS"]"#).unwrap();
        assert_eq!(back, (ValueRange::MinusOneOne, Orientation::Lps));
    }
}
