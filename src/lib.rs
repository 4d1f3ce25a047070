//! prdit: PRDiT (Pixel-Level Residual Diffusion Transformer, ICLR 2026) on Burn — train and
//! sample 3D CT volumes at voxel level.
//!
//! - [`model`]: the network (stage-1 local denoiser, stage-2 global residual DiT).
//! - [`denoiser`]: the interface between networks and the diffusion (samplers, loss).
//! - [`diffusion`]: the angular image-and-noise process, its loss and both samplers.
//! - [`weights`]: official PyTorch / safetensors state dicts and prdit's own checkpoints.
//! - [`device`]: `--device auto|cpu|cuda[:N]|wgpu`.
//! - [`inspect`]: sizes and memory estimates of a configuration.

pub mod bench;
pub mod config;
pub mod data;
pub mod demo;
pub mod denoiser;
pub mod device;
pub mod diffusion;
pub mod draw;
pub mod error;
pub mod eval;
pub mod fsio;
pub mod inspect;
pub mod interrupt;
pub mod model;
pub mod prepare;
pub mod progress;
pub mod resolve;
pub mod restore;
pub mod sample;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
pub use model::{Prdit, PrditConfig};
