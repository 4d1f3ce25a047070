//! Timestep embedder (shared trunk, coarse head, fine head; spec §3) and the fixed,
//! normalised 3D sin-cos position code of the global branch (spec §5.2).
//!
//! Python: `models/models.py::TimestepEmbedder`, `get_3d_sincos_pos_embed_normalized`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

use super::layers::{Init, ParamSource};
use crate::error::Result;

/// Maps diffusion time to the two stage-specific conditioning vectors.
#[derive(Module, Debug)]
pub struct TimestepEmbedder {
    /// Shared trunk `t_embedder.mlp.0`: frequency features → H (followed by SiLU).
    pub mlp0: Linear,
    /// `t_embedder.coarse_head`: H → D, conditions the local denoiser.
    pub coarse_head: Linear,
    /// `t_embedder.fine_head`: H → H, conditions the DiT (absent when depth = 0).
    pub fine_head: Option<Linear>,
    /// Width F of the sinusoidal features.
    frequency_size: usize,
}

impl TimestepEmbedder {
    /// Builds the embedder: trunk width `hidden`, coarse width `token_dim`, fine head if `fine`.
    pub fn build(
        src: &mut dyn ParamSource,
        prefix: &str,
        frequency_size: usize,
        hidden: usize,
        token_dim: usize,
        fine: bool,
    ) -> Result<Self> {
        let normal = Init::Normal { std: 0.02 };
        let mlp0 = src.linear(&format!("{prefix}.mlp.0"), frequency_size, hidden, true, normal)?;
        let coarse_head = src.linear(&format!("{prefix}.coarse_head"), hidden, token_dim, true, normal)?;
        let fine_head = if fine {
            Some(src.linear(&format!("{prefix}.fine_head"), hidden, hidden, true, normal)?)
        } else {
            None
        };
        Ok(TimestepEmbedder { mlp0, coarse_head, fine_head, frequency_size })
    }

    /// - `t`: one diffusion time per sample (integers in training and sampling; any float works)
    /// - returns `c_coarse` `[batch, D]` and, with a fine head, `c_fine` `[batch, H]`
    pub fn forward(&self, t: &[f32], device: &Device) -> (Tensor<2>, Option<Tensor<2>>) {
        let features = timestep_features(t, self.frequency_size); // [batch, F], cos first
        let features =
            Tensor::<2>::from_data(TensorData::new(features, [t.len(), self.frequency_size]), device);
        let trunk = silu(self.mlp0.forward(features)); // [batch, H]
        let c_coarse = self.coarse_head.forward(trunk.clone()); // [batch, D]
        let c_fine = self.fine_head.as_ref().map(|head| head.forward(trunk)); // [batch, H]
        (c_coarse, c_fine)
    }
}

/// The sinusoidal features `[cos(t·ω₀…), sin(t·ω₀…)]` of each time, `[batch, size]` row-major.
///
/// Computed on the host: the angles t·ω reach ~10³ rad, where the range reduction of a
/// fast device `cos` loses digits; here the float32 angle (rounded as PyTorch rounds it) is
/// evaluated in float64 and rounded once.
pub fn timestep_features(t: &[f32], size: usize) -> Vec<f32> {
    let freqs = frequencies(size / 2);
    let mut out = Vec::with_capacity(t.len() * size);
    for &time in t {
        let args: Vec<f64> = freqs.iter().map(|&w| (time * w) as f64).collect();
        out.extend(args.iter().map(|a| a.cos() as f32));
        out.extend(args.iter().map(|a| a.sin() as f32));
    }
    out
}

/// ω_k = exp(−ln(10000)·k / half) in float32 arithmetic, as PyTorch computes it, so the
/// angles t·ω_k of large t round the same way.
pub fn frequencies(half: usize) -> Vec<f32> {
    let scale = -(10_000f64.ln()) as f32;
    (0..half).map(|k| (((scale * k as f32) / half as f32) as f64).exp() as f32).collect()
}

/// The fixed position code, `[grid³, hidden]`, token order (depth, height, width) with width
/// fastest; per token `[sin(x·f), cos(x·f), sin(y·f), cos(y·f), sin(z·f), cos(z·f)]` with
/// x the width coordinate, coordinates `(i + ½)/grid` and `hidden/6` frequencies
/// `2π·f_max^{k/(F−1)}`, `f_max = 0.95·grid/2`.
pub fn position_code(grid: usize, hidden: usize, device: &Device) -> Tensor<2> {
    let nf = hidden / 6;
    let f_max = 0.95 * grid as f64 / 2.0;
    let freqs: Vec<f64> = (0..nf)
        .map(|k| {
            let e = if nf > 1 { k as f64 / (nf - 1) as f64 } else { 0.0 };
            2.0 * std::f64::consts::PI * f_max.powf(e)
        })
        .collect();
    let coord = |i: usize| (i as f64 + 0.5) / grid as f64;
    let mut out = Vec::with_capacity(grid.pow(3) * hidden);
    for a in 0..grid {
        for b in 0..grid {
            for c in 0..grid {
                for axis_coord in [coord(c), coord(b), coord(a)] {
                    out.extend(freqs.iter().map(|f| (axis_coord * f).sin() as f32));
                    out.extend(freqs.iter().map(|f| (axis_coord * f).cos() as f32));
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [grid.pow(3), hidden]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequency_endpoints() {
        let f = frequencies(128);
        assert_eq!(f[0], 1.0);
        assert!((f[127] as f64 - (-(10_000f64.ln()) * 127.0 / 128.0).exp()).abs() < 1e-9);
    }

    #[test]
    fn position_code_layout() {
        let device = Device::flex();
        let pe = position_code(2, 12, &device).into_data().try_into_vec_as::<f32>().unwrap();
        // Token 1 = (a, b, c) = (0, 0, 1): x (width) coordinate 0.75, y = z = 0.25.
        // F = 2 frequencies: 2π and 2π·0.95.
        let x = 0.75f64;
        let f1 = 2.0 * std::f64::consts::PI * 0.95;
        let tok = &pe[12..24];
        assert!((tok[0] as f64 - (x * 2.0 * std::f64::consts::PI).sin()).abs() < 1e-6);
        assert!((tok[1] as f64 - (x * f1).sin()).abs() < 1e-6);
        assert!((tok[3] as f64 - (x * f1).cos()).abs() < 1e-6);
        assert!((tok[4] as f64 - (0.25 * 2.0 * std::f64::consts::PI).sin()).abs() < 1e-6);
    }
}
