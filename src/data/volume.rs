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
        self.min_hu + (x + 1.0) * 0.5 * (self.max_hu - self.min_hu)
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
    }
}
