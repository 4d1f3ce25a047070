//! Data: NIfTI volumes, the built-in chest phantom, in-memory datasets, the batch loader and
//! preview images.

pub mod dataset;
pub mod loader;
pub mod nifti;
pub mod npz;
pub mod phantom;
pub mod preview;
pub mod pyrandom;
pub mod volume;

pub use volume::{Orientation, ValueRange, Volume, Window};
