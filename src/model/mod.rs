//! PRDiT: a local MLP denoiser on overlapping 3D patches (stage 1) plus a global residual
//! DiT on the same patches (stage 2), summed in patch space and un-patchified into noise and
//! image predictions (spec §2).
//!
//! Python: `models/models.py::PRDiT`.

pub mod attention;
pub mod config;
pub mod embed;
pub mod gelu;
pub mod global;
pub mod highres;
pub mod layers;
pub mod local;
pub mod network;
pub mod patch;
pub mod resample;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

pub use config::{ParamCounts, PrditConfig};
use embed::TimestepEmbedder;
use global::GlobalResidualDit;
use layers::{InitSource, ParamSource};
use local::MlpDenoiser;
use patch::{extract_patches, unpatchify};

use crate::denoiser::{Denoiser, VelocityModel, split_prediction};
use crate::diffusion::{Process, flow};
use crate::error::{Error, Result};
use layers::PlaceholderSource;
use network::Network;

/// The whole network. Parameter names follow the official state-dict keys (see
/// [`Prdit::build`]); `fine` is absent for the stage-1 model (depth 0).
#[derive(Module, Debug)]
pub struct Prdit {
    pub t_embedder: TimestepEmbedder,
    /// Stage 1, `coarse.mlp_denoise.*`.
    pub coarse: MlpDenoiser,
    /// Stage 2, `fine.*` (depth > 0 only).
    pub fine: Option<GlobalResidualDit>,
    #[module(skip)]
    config: PrditConfig,
    /// Stage 1 is frozen: its parameters take no gradient and its output is detached.
    stage1_frozen: bool,
}

/// Every intermediate the parity fixtures record, from one forward pass.
pub struct ForwardTrace {
    /// `[batch, D]`
    pub c_coarse: Tensor<2>,
    /// `[batch, H]` (depth > 0)
    pub c_fine: Option<Tensor<2>>,
    /// `[batch, tokens, D]`
    pub patches: Tensor<3>,
    /// `[batch, tokens, O]`
    pub coarse_out: Tensor<3>,
    /// `[batch, tokens, O]` (depth > 0)
    pub fine_out: Option<Tensor<3>>,
    /// `[batch, 2, S, S, S]`: channel 0 noise, channel 1 image.
    pub out: Tensor<5>,
}

impl Prdit {
    /// Builds the network with parameters from `src`, asking for each by its official key.
    pub fn build(cfg: &PrditConfig, src: &mut dyn ParamSource) -> Result<Self> {
        cfg.validate()?;
        let (d, h, o) = (cfg.token_dim(), cfg.hidden_size, cfg.out_dim());
        let deep = cfg.depth > 0;
        Ok(Prdit {
            t_embedder: TimestepEmbedder::build(src, "t_embedder", cfg.frequency_size, h, d, deep)?,
            coarse: MlpDenoiser::build(src, "coarse.mlp_denoise", d, o)?,
            fine: if deep { Some(GlobalResidualDit::build(src, "fine", cfg)?) } else { None },
            config: cfg.clone(),
            stage1_frozen: false,
        })
    }

    /// The official initialisation (spec §4.5) from a seeded host generator.
    pub fn init(cfg: &PrditConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::build(cfg, &mut InitSource::new(seed, device))
    }

    /// The official initialisation with every Xavier gain scaled by `gain` (the stage-2
    /// trainer re-initialises with 0.1 before loading stage 1).
    pub fn init_with_gain(cfg: &PrditConfig, seed: u64, gain: f64, device: &Device) -> Result<Self> {
        Self::build(cfg, &mut InitSource::with_gain(seed, gain, device))
    }

    /// The configuration this network was built for.
    pub fn config(&self) -> &PrditConfig {
        &self.config
    }

    /// Freezes stage 1 (shared trunk, coarse head, local denoiser): no gradient, hence no
    /// optimizer state, and the branch runs outside the autodiff graph.
    pub fn freeze_stage1(mut self) -> Self {
        self.t_embedder.mlp0 = self.t_embedder.mlp0.no_grad();
        self.freeze_coarse_branch()
    }

    /// Freezes the coarse branch and its head only, leaving the shared trunk
    /// (`t_embedder.mlp.0`) trainable through the fine head: the base model of the joint
    /// refinement fine-tuning (phase 3b), where the official forward runs the coarse branch
    /// without gradient and every other base parameter trains.
    pub fn freeze_coarse_branch(mut self) -> Self {
        self.t_embedder.coarse_head = self.t_embedder.coarse_head.no_grad();
        self.coarse = self.coarse.no_grad();
        self.stage1_frozen = true;
        self
    }

    /// Whether [`freeze_stage1`](Self::freeze_stage1) was applied.
    pub fn is_stage1_frozen(&self) -> bool {
        self.stage1_frozen
    }

    /// - `x_t`: `[batch, C, S, S, S]`; `t`: one diffusion time per sample
    /// - returns `[batch, 2, S, S, S]`: channel 0 = ε̂ (noise), channel 1 = x̂₀ (image); a flow
    ///   network (`out_channels = 1`, network time 1000·t) returns `[batch, 1, S, S, S]`, v̂
    ///
    /// Panics, naming both shapes, on an input that does not fit (see [`check_input`](Self::check_input));
    /// [`try_forward`](Self::try_forward) returns that as an error instead.
    pub fn forward(&self, x_t: Tensor<5>, t: &[f32]) -> Tensor<5> {
        self.forward_trace(x_t, t).out
    }

    /// [`forward`](Self::forward) for inputs from outside: a volume of another size or channel
    /// count, or a time count other than the batch, is an error naming what was expected.
    pub fn try_forward(&self, x_t: Tensor<5>, t: &[f32]) -> Result<Tensor<5>> {
        self.check_input(x_t.dims(), t.len())?;
        Ok(self.forward(x_t, t))
    }

    /// Whether `[batch, C, S, S, S]` volumes with `times` diffusion times fit this network.
    pub fn check_input(&self, dims: [usize; 5], times: usize) -> Result<()> {
        let cfg = &self.config;
        let (c, s) = (cfg.in_channels, cfg.input_size);
        if dims[1..] != [c, s, s, s] {
            return Err(Error::invalid(
                "input",
                format!("{} takes volumes of shape [batch, {c}, {s}, {s}, {s}], given {dims:?}", cfg.name()),
            ));
        }
        if times != dims[0] {
            return Err(Error::invalid(
                "input",
                format!("{} volumes need one diffusion time each, given {times}", dims[0]),
            ));
        }
        Ok(())
    }

    /// [`forward`](Self::forward), keeping every intermediate.
    pub fn forward_trace(&self, x_t: Tensor<5>, t: &[f32]) -> ForwardTrace {
        if let Err(e) = self.check_input(x_t.dims(), t.len()) {
            panic!("{e}");
        }
        let cfg = &self.config;
        let (c_coarse, c_fine) = self.t_embedder.forward(t, &x_t.device()); // [b, D], [b, H]
        let patches = extract_patches(x_t, cfg.patch_size, cfg.stride, cfg.padding).detach(); // [b, N, D]
        let coarse_out = if self.stage1_frozen {
            self.coarse.forward(patches.clone(), c_coarse.clone().detach()).detach()
        } else {
            self.coarse.forward(patches.clone(), c_coarse.clone())
        }; // [b, N, O]
        let fine_out = match (&self.fine, &c_fine) {
            (Some(fine), Some(c)) => Some(fine.forward(patches.clone(), c.clone())), // [b, N, O]
            _ => None,
        };
        let sum = match &fine_out {
            Some(f) => coarse_out.clone() + f.clone(),
            None => coarse_out.clone(),
        };
        let out = unpatchify(sum, cfg.grid(), cfg.stride, cfg.out_channels); // [b, C_out, S, S, S]
        ForwardTrace { c_coarse, c_fine, patches, coarse_out, fine_out, out }
    }
}

impl Denoiser for Prdit {
    /// The two heads of a diffusion network; for a flow network, the image and noise its
    /// velocity implies at the matching flow time ([`crate::diffusion::flow::denoise`]).
    fn predict(&self, x_t: Tensor<5>, t: &[f32]) -> (Tensor<5>, Tensor<5>) {
        match self.config.process() {
            Process::Ian => split_prediction(self.forward(x_t, t)),
            Process::Flow => flow::denoise(self, x_t, t),
        }
    }
}

impl VelocityModel for Prdit {
    /// The flow network's output at `1000·t`. Panics on a diffusion network (two channels),
    /// which has no velocity head.
    fn velocity(&self, x_t: Tensor<5>, t: &[f32]) -> Tensor<5> {
        assert_eq!(self.config.process(), Process::Flow, "a diffusion network has no velocity head");
        self.forward(x_t, &flow::network_times(t))
    }
}

impl Network for Prdit {
    type Config = PrditConfig;
    const FORMAT: &'static str = "prdit-model-1";

    fn config(&self) -> &PrditConfig {
        &self.config
    }

    fn process(cfg: &PrditConfig) -> Process {
        cfg.process()
    }

    fn name(cfg: &PrditConfig) -> String {
        cfg.name()
    }

    fn volume_size(cfg: &PrditConfig) -> usize {
        cfg.input_size
    }

    fn placeholder(cfg: &PrditConfig, device: &Device) -> Result<Self> {
        Self::build(cfg, &mut PlaceholderSource::new(device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn module_parameter_count_matches_closed_form() {
        let device = Device::flex();
        let cfg = PrditConfig::from_name("PRDiT-XS/4/0", 16).unwrap();
        let m = Prdit::init(&cfg, 0, &device).unwrap();
        assert_eq!(m.num_params(), cfg.param_counts().total());
        let cfg = PrditConfig::tiny();
        let m = Prdit::init(&cfg, 0, &device).unwrap();
        assert_eq!(m.num_params(), cfg.param_counts().total());
    }

    #[test]
    fn fresh_model_outputs_zero() {
        let device = Device::flex();
        let cfg = PrditConfig { depth: 1, ..PrditConfig::tiny() };
        let m = Prdit::init(&cfg, 7, &device).unwrap();
        let x = Tensor::<5>::random([2, 1, 16, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let out = m.forward(x, &[3.0, 999.0]);
        assert_eq!(out.dims(), [2, 2, 16, 16, 16]);
        let max = out.abs().max().into_scalar::<f32>();
        assert_eq!(max, 0.0);
    }
}
