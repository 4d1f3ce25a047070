//! What the training loop, model files and samplers need of a network, implemented by the
//! 128³ PRDiT ([`Prdit`](super::Prdit)) and the refinement model ([`PrditSr`](super::highres::PrditSr)).

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::denoiser::{Denoiser, VelocityModel};
use crate::diffusion::Process;
use crate::error::Result;

/// A trainable, savable, sampleable network.
pub trait Network: Module + Denoiser + VelocityModel + 'static {
    /// The shapes-fixing configuration, embedded in model files.
    type Config: Clone + PartialEq + std::fmt::Debug + Serialize + DeserializeOwned;
    /// The `prdit.format` value of this network's model files.
    const FORMAT: &'static str;

    /// The configuration it was built for.
    fn config(&self) -> &Self::Config;

    /// The generative process a configuration's network is for.
    fn process(cfg: &Self::Config) -> Process;

    /// A readable name of a configuration.
    fn name(cfg: &Self::Config) -> String;

    /// Edge of the volumes it denoises.
    fn volume_size(cfg: &Self::Config) -> usize;

    /// Zero-filled parameters of the right shapes (to be overwritten by a record).
    fn placeholder(cfg: &Self::Config, device: &Device) -> Result<Self>;
}
