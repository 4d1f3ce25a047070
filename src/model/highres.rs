//! Stage 3, the high-resolution refinement (PRDiT↑256, spec §9; the authors' `SR` branch):
//! a frozen, complete lower-resolution PRDiT sees the nearest-downsampled input; its image
//! prediction is upsampled trilinearly and its noise prediction by nearest neighbour; a
//! second local MLP denoiser with its own timestep embedder adds a residual at the target
//! size. Keys: `base.*`, `t_embedder_sr.*`, `sr.mlp_denoise.*`.
//!
//! Python: `models/sr_pipeline.py::PRDiTSR`.

use burn::module::Module;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::embed::TimestepEmbedder;
use super::layers::{Init, InitSource, ParamSource, PlaceholderSource};
use super::local::MlpDenoiser;
use super::network::Network;
use super::patch::{extract_patches, unpatchify};
use super::resample::{nearest, trilinear};
use super::{Prdit, PrditConfig};
use crate::denoiser::{Denoiser, VelocityModel, split_prediction};
use crate::diffusion::{Process, flow};
use crate::error::{Error, Result};

/// The refinement model's shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrConfig {
    /// The complete lower-resolution model (its `input_size` is the base size).
    pub base: PrditConfig,
    /// Edge of the generated volumes (an integer multiple of the base size).
    pub target_size: usize,
    /// Trunk width of the refinement's timestep embedder.
    pub sr_hidden_size: usize,
    pub sr_patch_size: usize,
    pub sr_stride: usize,
    pub sr_padding: usize,
}

impl SrConfig {
    /// The refinement of `base` to `target_size` with the `[highres]` defaults (the official
    /// SR branch's width, windows, stride and padding), validated.
    pub fn with_defaults(base: PrditConfig, target_size: usize) -> Result<Self> {
        Self::from_section(base, &crate::config::HighresSection::defaults(target_size))
    }

    /// The refinement of `base` that a `[highres]` section describes, validated.
    pub fn from_section(base: PrditConfig, h: &crate::config::HighresSection) -> Result<Self> {
        let sr = SrConfig {
            base,
            target_size: h.target_size,
            sr_hidden_size: h.sr_hidden_size,
            sr_patch_size: h.sr_patch_size,
            sr_stride: h.sr_stride,
            sr_padding: h.sr_padding,
        };
        sr.validate()?;
        Ok(sr)
    }

    /// The refinement's local denoiser as a depth-0 PRDiT configuration at the target size.
    pub fn local(&self) -> PrditConfig {
        PrditConfig {
            input_size: self.target_size,
            in_channels: self.base.in_channels,
            out_channels: self.base.out_channels,
            patch_size: self.sr_patch_size,
            stride: self.sr_stride,
            padding: self.sr_padding,
            hidden_size: self.sr_hidden_size,
            num_heads: 1,
            depth: 0,
            mlp_ratio: 4.0,
            frequency_size: self.base.frequency_size,
        }
    }

    /// Checks the base, the size ratio and the refinement's patch grid.
    pub fn validate(&self) -> Result<()> {
        self.base.validate()?;
        let (b, t) = (self.base.input_size, self.target_size);
        if t <= b || !t.is_multiple_of(b) {
            return Err(Error::invalid(
                "highres.target_size",
                format!("{t} must be a multiple (×2, ×4, …) of the base model's size {b}"),
            ));
        }
        self.local().validate().map_err(|e| match e {
            Error::Invalid { key, reason } => Error::Invalid { key: format!("highres.sr_{key}"), reason },
            e => e,
        })
    }

    /// Parameters the refinement adds (and trains in phase 3a).
    pub fn sr_params(&self) -> usize {
        let c = self.local().param_counts();
        c.timestep_embedder + c.coarse
    }

    /// `PRDiT-B/12/4 64↑128` style name.
    pub fn name(&self) -> String {
        format!("{} {}↑{}", self.base.name(), self.base.input_size, self.target_size)
    }
}

/// The refinement model.
#[derive(Module, Debug)]
pub struct PrditSr {
    pub base: Prdit,
    pub t_embedder_sr: TimestepEmbedder,
    pub sr: MlpDenoiser,
    #[module(skip)]
    config: SrConfig,
    base_frozen: bool,
}

/// Routes `base.*` to one source and everything else to another, and gives the refinement
/// layers PyTorch's default initialisation (except the zero-initialised adaLN and output).
struct SrSource<'a> {
    base: &'a mut dyn ParamSource,
    own: &'a mut dyn ParamSource,
}

impl ParamSource for SrSource<'_> {
    fn device(&self) -> &Device {
        self.own.device()
    }

    fn linear(&mut self, key: &str, d_in: usize, d_out: usize, bias: bool, init: Init) -> Result<Linear> {
        match key.strip_prefix("base.") {
            Some(k) => self.base.linear(k, d_in, d_out, bias, init),
            None => {
                let init = if init == Init::Zeros { Init::Zeros } else { Init::TorchDefault };
                self.own.linear(key, d_in, d_out, bias, init)
            }
        }
    }

    fn layer_norm(&mut self, key: &str, width: usize, eps: f64) -> Result<LayerNorm> {
        match key.strip_prefix("base.") {
            Some(k) => self.base.layer_norm(k, width, eps),
            None => self.own.layer_norm(key, width, eps),
        }
    }
}

/// Prefixes every key with `base.` for the base network's constructor.
struct BasePrefix<'a>(&'a mut dyn ParamSource);

impl ParamSource for BasePrefix<'_> {
    fn device(&self) -> &Device {
        self.0.device()
    }
    fn linear(&mut self, key: &str, d_in: usize, d_out: usize, bias: bool, init: Init) -> Result<Linear> {
        self.0.linear(&format!("base.{key}"), d_in, d_out, bias, init)
    }
    fn layer_norm(&mut self, key: &str, width: usize, eps: f64) -> Result<LayerNorm> {
        self.0.layer_norm(&format!("base.{key}"), width, eps)
    }
}

impl PrditSr {
    /// Builds the model; base parameters come from `base`, the refinement's from `own`.
    pub fn build(cfg: &SrConfig, base: &mut dyn ParamSource, own: &mut dyn ParamSource) -> Result<Self> {
        cfg.validate()?;
        let mut src = SrSource { base, own };
        let base = Prdit::build(&cfg.base, &mut BasePrefix(&mut src))?;
        let local = cfg.local();
        let t_embedder_sr = TimestepEmbedder::build(
            &mut src,
            "t_embedder_sr",
            local.frequency_size,
            local.hidden_size,
            local.token_dim(),
            false,
        )?;
        let sr = MlpDenoiser::build(&mut src, "sr.mlp_denoise", local.token_dim(), local.out_dim())?;
        Ok(PrditSr { base, t_embedder_sr, sr, config: cfg.clone(), base_frozen: false })
    }

    /// A fresh refinement (seeded) on top of `base` (whose parameters are taken as they are).
    pub fn on_base(cfg: &SrConfig, base: Prdit, seed: u64, device: &Device) -> Result<Self> {
        if base.config() != &cfg.base {
            return Err(Error::invalid(
                "highres.base",
                format!("the base is {}, the config asks for {}", base.config().name(), cfg.base.name()),
            ));
        }
        let mut placeholder = PlaceholderSource::new(device);
        let mut init = InitSource::new(seed, device);
        let mut model = Self::build(cfg, &mut placeholder, &mut init)?;
        model.base = base;
        Ok(model)
    }

    /// Freezes the whole base (phase 3a): no gradient, output detached.
    pub fn freeze_base(mut self) -> Self {
        self.base = self.base.no_grad().freeze_stage1();
        self.base_frozen = true;
        self
    }

    /// Phase 3b: the base trains too — its transformer, fine head and the shared trunk — except
    /// its coarse branch and coarse head, which the official forward runs without gradient.
    pub fn finetune_base(mut self) -> Self {
        self.base = self.base.freeze_coarse_branch();
        self.base_frozen = false;
        self
    }

    /// - `x_t`: `[batch, 1, T, T, T]`; `t`: one network time per sample → `[batch, 2, T, T, T]`
    ///   (a flow refinement: `[batch, 1, T, T, T]`, the velocity; network time 1000·t)
    ///
    /// A flow base's velocity is split into the image and noise it implies at its time
    /// (`x̂ = x + (1 − t)·v̂`, `ẑ = x − t·v̂`), which are upsampled as the diffusion's heads are
    /// (image trilinear, noise nearest) and recombined, `v̂↑ = x̂↑ − ẑ↑`, before the refinement's
    /// residual velocity is added. (PRDiT-FM has no refinement stage; this is prdit's.)
    pub fn forward(&self, x_t: Tensor<5>, t: &[f32]) -> Tensor<5> {
        let cfg = &self.config;
        let (target, base_size) = (cfg.target_size, cfg.base.input_size);
        let x_lo = nearest(x_t.clone(), [base_size; 3]).detach(); // [b, 1, B, B, B], even voxels
        let base_out = self.base.forward(x_lo.clone(), t);
        let base_out = if self.base_frozen { base_out.detach() } else { base_out };
        let (c_sr, _) = self.t_embedder_sr.forward(t, &x_t.device());
        let local = cfg.local();
        let patches = extract_patches(x_t, local.patch_size, local.stride, local.padding).detach();
        let channels = local.out_channels;
        let y = unpatchify(self.sr.forward(patches, c_sr), local.grid(), local.stride, channels); // [b, C, T, T, T]
        match cfg.base.process() {
            Process::Ian => {
                let (eps_b, x0_b) = split_prediction(base_out);
                let x0_up = trilinear(x0_b, [target; 3]); // image: trilinear, align_corners=False
                let eps_up = nearest(eps_b, [target; 3]); // noise: nearest, deliberately
                let (eps_l, x0_l) = split_prediction(y);
                Tensor::cat(vec![eps_l + eps_up, x0_l + x0_up], 1)
            }
            Process::Flow => {
                let flow_t: Vec<f32> = t.iter().map(|&v| v / flow::EMBED_T_SCALE).collect();
                let (x_b, z_b) = flow::split(x_lo, base_out, &flow_t);
                y + trilinear(x_b, [target; 3]) - nearest(z_b, [target; 3])
            }
        }
    }
}

impl Denoiser for PrditSr {
    fn predict(&self, x_t: Tensor<5>, t: &[f32]) -> (Tensor<5>, Tensor<5>) {
        match self.config.base.process() {
            Process::Ian => split_prediction(self.forward(x_t, t)),
            Process::Flow => flow::denoise(self, x_t, t),
        }
    }
}

impl VelocityModel for PrditSr {
    fn velocity(&self, x_t: Tensor<5>, t: &[f32]) -> Tensor<5> {
        assert_eq!(self.config.base.process(), Process::Flow, "a diffusion refinement has no velocity head");
        self.forward(x_t, &flow::network_times(t))
    }
}

impl Network for PrditSr {
    type Config = SrConfig;
    const FORMAT: &'static str = "prdit-sr-model-1";

    fn config(&self) -> &SrConfig {
        &self.config
    }

    fn process(cfg: &SrConfig) -> Process {
        cfg.base.process()
    }

    fn name(cfg: &SrConfig) -> String {
        cfg.name()
    }

    fn volume_size(cfg: &SrConfig) -> usize {
        cfg.target_size
    }

    fn placeholder(cfg: &SrConfig, device: &Device) -> Result<Self> {
        let (mut a, mut b) = (PlaceholderSource::new(device), PlaceholderSource::new(device));
        Self::build(cfg, &mut a, &mut b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::export::state_dict;

    /// Adds 0.01 to every parameter (so zero-initialised layers carry signal).
    struct Shift;
    impl burn::module::ModuleMapper for Shift {
        fn map_float<const D: usize>(
            &mut self,
            p: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            let (id, t, mapper) = p.consume();
            burn::module::Param::from_mapped_value(id, t + 0.01, mapper)
        }
    }

    fn tiny() -> SrConfig {
        let mut base = PrditConfig::from_name("PRDiT-XS/4/0", 8).unwrap();
        (base.depth, base.stride, base.padding) = (1, 2, 1);
        SrConfig { base, target_size: 16, sr_hidden_size: 48, sr_patch_size: 4, sr_stride: 2, sr_padding: 1 }
    }

    #[test]
    fn paper_refinement_size() {
        let base = PrditConfig::from_name("PRDiT-B/12/4", 128).unwrap();
        let cfg = SrConfig {
            base,
            target_size: 256,
            sr_hidden_size: 768,
            sr_patch_size: 12,
            sr_stride: 8,
            sr_padding: 2,
        };
        cfg.validate().unwrap();
        assert_eq!(cfg.sr_params(), 39_156_160); // spec §9.2
        let bad = SrConfig { target_size: 192, ..cfg };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn keys_shapes_and_fresh_refinement_equals_upsampled_base() {
        let device = Device::flex();
        let cfg = tiny();
        let base = Prdit::init_with_gain(&cfg.base, 3, 1.0, &device).unwrap();
        // Give the base's zero-initialised output layers values, so it predicts something.
        let base = base.map(&mut Shift);
        let m = PrditSr::on_base(&cfg, base, 1, &device).unwrap().freeze_base();
        let keys = state_dict(&m).unwrap();
        assert!(keys.contains_key("base.fine.blocks.0.attn.qkv.weight"));
        assert!(
            keys.contains_key("t_embedder_sr.coarse_head.weight")
                && !keys.contains_key("t_embedder_sr.fine_head.weight")
        );
        assert!(keys.contains_key("sr.mlp_denoise.adaLN_modulation.1.weight"));
        use burn::module::Module as _;
        assert_eq!(m.num_params(), cfg.base.param_counts().total() + cfg.sr_params());
        // The refinement's output layer starts at zero: output = upsampled base prediction.
        let x =
            Tensor::<5>::random([1, 1, 16, 16, 16], burn::tensor::Distribution::Normal(0.0, 0.5), &device);
        let (eps, x0) = m.predict(x.clone(), &[500.0]);
        let (eb, xb) = m.base.predict(nearest(x, [8; 3]), &[500.0]);
        let diff = |a: Tensor<5>, b: Tensor<5>| (a - b).abs().max().into_scalar::<f32>();
        assert_eq!(diff(eps, nearest(eb, [16; 3])), 0.0);
        assert_eq!(diff(x0, trilinear(xb, [16; 3])), 0.0);
    }
}
