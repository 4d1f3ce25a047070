//! Stage 2, the global residual DiT over the same raw patch tokens: MLP+skip patch embedder
//! with LayerNorm, fixed 3D sin-cos positions, adaLN-Zero blocks with full attention, and a
//! modulated final layer (spec §5).
//!
//! Python: `models/global_refiner.py` (keys `fine.*`).

use burn::module::Module;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use super::attention::attention;
use super::config::{PATCH_EMBED_RATIO, PrditConfig};
use super::embed::position_code;
use super::layers::{Init, ParamSource, gelu_tanh, layer_norm_plain, modulate};
use crate::error::Result;

/// `e = LN(W₂·GELU(W₁x + b₁) + b₂ + W_s x)`: tokens D → H.
#[derive(Module, Debug)]
pub struct PatchEmbedder {
    pub fc1: Linear,
    pub fc2: Linear,
    /// Bias-free skip projection D → H.
    pub skip: Linear,
    /// Affine LayerNorm, eps 1e-5.
    pub norm: LayerNorm,
}

impl PatchEmbedder {
    fn build(src: &mut dyn ParamSource, prefix: &str, token_dim: usize, hidden: usize) -> Result<Self> {
        let x = Init::Xavier { gain: 1.0 };
        let inner = PATCH_EMBED_RATIO * hidden;
        Ok(PatchEmbedder {
            fc1: src.linear(&format!("{prefix}.fc1"), token_dim, inner, true, x)?,
            fc2: src.linear(&format!("{prefix}.fc2"), inner, hidden, true, x)?,
            // Official `_init_fine_path`: the skip at Xavier gain 0.1 regardless of the
            // re-initialisation's gain.
            skip: src.linear(
                &format!("{prefix}.skip"),
                token_dim,
                hidden,
                false,
                Init::XavierFixed { gain: 0.1 },
            )?,
            norm: src.layer_norm(&format!("{prefix}.norm"), hidden, 1e-5)?,
        })
    }

    /// - `x`: `[batch, tokens, D]` → `[batch, tokens, H]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.fc2.forward(gelu_tanh(self.fc1.forward(x.clone())));
        self.norm.forward(h + self.skip.forward(x))
    }
}

/// Multi-head self-attention with a fused `qkv` projection (q | k | v, head-major inside).
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    num_heads: usize,
}

impl Attention {
    /// - `x`: `[batch, tokens, H]` → `[batch, tokens, H]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, tokens, hidden] = x.dims();
        let (heads, head_dim) = (self.num_heads, hidden / self.num_heads);
        let qkv = self
            .qkv
            .forward(x) // [b, n, 3H]
            .reshape([batch, tokens, 3, heads, head_dim])
            .permute([2, 0, 3, 1, 4]); // "bnphd->pbhnd"
        let part = |i: usize| qkv.clone().narrow(0, i, 1).squeeze_dim::<4>(0); // [b, h, n, d]
        // The backend's attention; under autodiff its backward recomputes the scores in blocks
        // instead of keeping them (`super::attention`).
        let out = attention(part(0), part(1), part(2));
        let out = out.swap_dims(1, 2).reshape([batch, tokens, hidden]); // "bhnd->bnhd" → [b, n, H]
        self.proj.forward(out)
    }
}

/// The transformer MLP: `W₂·GELU_tanh(W₁u + b₁) + b₂`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// adaLN-Zero DiT block.
#[derive(Module, Debug)]
pub struct DitBlock {
    pub attn: Attention,
    pub mlp: Mlp,
    /// `adaLN_modulation.1`: H → 6H, chunks (β_a, γ_a, α_a, β_m, γ_m, α_m).
    pub ada_ln: Linear,
}

impl DitBlock {
    fn build(src: &mut dyn ParamSource, prefix: &str, cfg: &PrditConfig) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.mlp_hidden());
        let x = Init::Xavier { gain: 1.0 };
        Ok(DitBlock {
            attn: Attention {
                qkv: src.linear(&format!("{prefix}.attn.qkv"), h, 3 * h, true, x)?,
                proj: src.linear(&format!("{prefix}.attn.proj"), h, h, true, x)?,
                num_heads: cfg.num_heads,
            },
            mlp: Mlp {
                fc1: src.linear(&format!("{prefix}.mlp.fc1"), h, m, true, x)?,
                fc2: src.linear(&format!("{prefix}.mlp.fc2"), m, h, true, x)?,
            },
            ada_ln: src.linear(&format!("{prefix}.adaLN_modulation.1"), h, 6 * h, true, Init::Zeros)?,
        })
    }

    /// - `x`: `[batch, tokens, H]`; `c`: `c_fine` `[batch, H]` → `[batch, tokens, H]`
    pub fn forward(&self, x: Tensor<3>, c: Tensor<2>) -> Tensor<3> {
        let m = self.ada_ln.forward(silu(c)).chunk(6, 1); // 6 × [batch, H]
        let gate = |i: usize| m[i].clone().unsqueeze_dim::<3>(1); // [batch, 1, H]
        let a = self.attn.forward(modulate(layer_norm_plain(x.clone()), m[0].clone(), m[1].clone()));
        let x = x + gate(2) * a;
        let u = modulate(layer_norm_plain(x.clone()), m[3].clone(), m[4].clone());
        let f = self.mlp.fc2.forward(gelu_tanh(self.mlp.fc1.forward(u)));
        x + gate(5) * f
    }
}

/// Modulated LayerNorm and linear head H → s³·C_out.
#[derive(Module, Debug)]
pub struct FinalLayer {
    pub linear: Linear,
    /// `adaLN_modulation.1`: H → 2H, chunks (β, γ).
    pub ada_ln: Linear,
}

/// The stage-2 network (the `fine` branch).
#[derive(Module, Debug)]
pub struct GlobalResidualDit {
    pub patch_embedder: PatchEmbedder,
    pub blocks: Vec<DitBlock>,
    pub final_layer: FinalLayer,
    /// Fixed position code `[1, tokens, H]` (a buffer: not a parameter, not saved).
    pos_embed: Tensor<3>,
}

impl GlobalResidualDit {
    /// Builds the branch under key prefix `prefix` (`fine` in PRDiT).
    pub fn build(src: &mut dyn ParamSource, prefix: &str, cfg: &PrditConfig) -> Result<Self> {
        let (h, o) = (cfg.hidden_size, cfg.out_dim());
        let patch_embedder =
            PatchEmbedder::build(src, &format!("{prefix}.patch_embedder"), cfg.token_dim(), h)?;
        let blocks = (0..cfg.depth)
            .map(|i| DitBlock::build(src, &format!("{prefix}.blocks.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        let final_layer = FinalLayer {
            linear: src.linear(&format!("{prefix}.final_layer.linear"), h, o, true, Init::Zeros)?,
            ada_ln: src.linear(
                &format!("{prefix}.final_layer.adaLN_modulation.1"),
                h,
                2 * h,
                true,
                Init::Zeros,
            )?,
        };
        let pos_embed = position_code(cfg.grid(), h, src.device()).unsqueeze_dim::<3>(0);
        Ok(GlobalResidualDit { patch_embedder, blocks, final_layer, pos_embed })
    }

    /// - `x`: raw patch tokens `[batch, tokens, D]`; `c`: `c_fine` `[batch, H]`
    /// - returns the residual `[batch, tokens, s³·C_out]`
    pub fn forward(&self, x: Tensor<3>, c: Tensor<2>) -> Tensor<3> {
        let mut h = self.patch_embedder.forward(x) + self.pos_embed.clone(); // [batch, tokens, H]
        for block in &self.blocks {
            h = block.forward(h, c.clone());
        }
        let m = self.final_layer.ada_ln.forward(silu(c)).chunk(2, 1); // 2 × [batch, H]
        let h = modulate(layer_norm_plain(h), m[0].clone(), m[1].clone());
        self.final_layer.linear.forward(h) // [batch, tokens, O]
    }
}
