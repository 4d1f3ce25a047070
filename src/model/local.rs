//! Stage 1, the local denoiser: a per-token MLP over raw 12³ patch tokens with two SwiGLU
//! blocks (inner affine LayerNorm), six adaLN vectors and one outer skip (spec §4.2).
//!
//! Python: `models/local_denoiser.py::MlpDenoiser` (keys `coarse.mlp_denoise.*`).

use burn::module::Module;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use super::layers::{Init, ParamSource, layer_norm_plain, modulate};
use crate::error::Result;

/// timm's split-gate SwiGLU with the LayerNorm between gate product and output projection.
#[derive(Module, Debug)]
pub struct SwiGlu {
    pub fc1_g: Linear,
    pub fc1_x: Linear,
    /// Affine LayerNorm, eps 1e-5.
    pub norm: LayerNorm,
    pub fc2: Linear,
}

impl SwiGlu {
    fn build(src: &mut dyn ParamSource, prefix: &str, width: usize) -> Result<Self> {
        let x = Init::Xavier { gain: 1.0 };
        Ok(SwiGlu {
            fc1_g: src.linear(&format!("{prefix}.fc1_g"), width, width, true, x)?,
            fc1_x: src.linear(&format!("{prefix}.fc1_x"), width, width, true, x)?,
            norm: src.layer_norm(&format!("{prefix}.norm"), width, 1e-5)?,
            fc2: src.linear(&format!("{prefix}.fc2"), width, width, true, x)?,
        })
    }

    /// - `u`: `[batch, tokens, D]` → `[batch, tokens, D]`
    pub fn forward(&self, u: Tensor<3>) -> Tensor<3> {
        let gated = silu(self.fc1_g.forward(u.clone())) * self.fc1_x.forward(u);
        self.fc2.forward(self.norm.forward(gated))
    }
}

/// The stage-1 network (the `coarse` branch).
#[derive(Module, Debug)]
pub struct MlpDenoiser {
    pub mlp1: SwiGlu,
    pub mlp2: SwiGlu,
    /// Output head D → s³·C_out (`linear_final`).
    pub linear_final: Linear,
    /// `adaLN_modulation.1`: D → 6D, chunks (β₁, γ₁, β₂, γ₂, β₃, γ₃).
    pub ada_ln: Linear,
}

impl MlpDenoiser {
    /// Builds the branch under key prefix `prefix` (`coarse.mlp_denoise` in PRDiT).
    pub fn build(src: &mut dyn ParamSource, prefix: &str, token_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(MlpDenoiser {
            mlp1: SwiGlu::build(src, &format!("{prefix}.mlp1"), token_dim)?,
            mlp2: SwiGlu::build(src, &format!("{prefix}.mlp2"), token_dim)?,
            linear_final: src.linear(
                &format!("{prefix}.linear_final"),
                token_dim,
                out_dim,
                true,
                Init::Zeros,
            )?,
            ada_ln: src.linear(
                &format!("{prefix}.adaLN_modulation.1"),
                token_dim,
                6 * token_dim,
                true,
                Init::Zeros,
            )?,
        })
    }

    /// - `x`: raw patch tokens `[batch, tokens, D]`; `c`: `c_coarse` `[batch, D]`
    /// - returns `[batch, tokens, s³·C_out]` (channel fastest)
    pub fn forward(&self, x: Tensor<3>, c: Tensor<2>) -> Tensor<3> {
        let m = self.ada_ln.forward(silu(c)).chunk(6, 1); // 6 × [batch, D]
        let h1 = self.mlp1.forward(modulate(layer_norm_plain(x.clone()), m[0].clone(), m[1].clone()));
        let h2 = self.mlp2.forward(modulate(layer_norm_plain(h1), m[2].clone(), m[3].clone()));
        let h3 = modulate(h2 + x, m[4].clone(), m[5].clone()); // one outer skip, no norm
        self.linear_final.forward(h3) // [batch, tokens, O]
    }
}
