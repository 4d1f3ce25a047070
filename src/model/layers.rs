//! Small building blocks shared by both branches, and [`ParamSource`]: the one place that
//! decides where a parameter comes from (an initialiser, or a state dict by PyTorch key).

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::module::layer_norm;
use burn::tensor::{Device, Tensor, TensorData};
use chacha20::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::error::Result;

/// `x ⊙ (1 + scale) + shift`, with `shift`/`scale` broadcast over tokens.
/// - `x`: `[batch, tokens, width]`; `shift`, `scale`: `[batch, width]`
pub fn modulate(x: Tensor<3>, shift: Tensor<2>, scale: Tensor<2>) -> Tensor<3> {
    x * (scale.unsqueeze_dim::<3>(1) + 1.0) + shift.unsqueeze_dim::<3>(1)
}

/// GELU with the tanh approximation (timm's `approximate="tanh"`), computed as
/// `x·σ(2·√(2/π)·(x + 0.044715·x³))`, which equals `½x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`
/// (`1 + tanh z = 2σ(2z)`): one exponential and five cheap element-wise operations instead of
/// Burn's `gelu_approximate` (a power for x³, a tanh and three more); its backward is cheaper
/// too (a sigmoid's backward reuses its output). `cargo bench --bench stages` times both
/// (`docs/bench-vs-official.md`).
///
/// One autodiff operation that keeps only its input for the backward pass (`super::gelu`).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    super::gelu::gelu_tanh(x)
}

/// LayerNorm over the last dim without affine parameters (`LN₀`, eps 1e-6, biased variance).
/// - `x`: `[batch, tokens, width]` → same shape
pub fn layer_norm_plain(x: Tensor<3>) -> Tensor<3> {
    let width = x.dims()[2];
    let gamma = Tensor::<1>::ones([width], (&x.device(), x.dtype()));
    layer_norm(x, gamma, None, 1e-6)
}

/// How a freshly built parameter is initialised (spec §4.5, §5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Xavier-uniform: U(−a, a), a = gain·√(6 / (fan_in + fan_out)); bias 0. A source's gain
    /// (the stage-2 re-initialisation's 0.1) multiplies `gain`.
    Xavier { gain: f64 },
    /// Xavier-uniform with a gain that a source's gain does not scale: the patch embedder's
    /// skip, which the official code initialises at 0.1 whatever the re-initialisation's gain.
    XavierFixed { gain: f64 },
    /// Weight N(0, std²); bias 0.
    Normal { std: f64 },
    /// Weight and bias 0 (adaLN-Zero and output layers).
    Zeros,
    /// PyTorch's default `nn.Linear` initialisation: weight and bias U(−1/√fan_in, 1/√fan_in)
    /// (the refinement model's layers keep it).
    TorchDefault,
}

/// Where the parameters of a module come from while it is built. Every parameter is asked
/// for by its PyTorch state-dict key, so the key table of the official checkpoints lives in
/// the constructors and nowhere else.
pub trait ParamSource {
    /// Device the parameters are created on.
    fn device(&self) -> &Device;

    /// A linear layer `d_in → d_out` with key prefix `key` (`{key}.weight`, `{key}.bias`).
    fn linear(&mut self, key: &str, d_in: usize, d_out: usize, bias: bool, init: Init) -> Result<Linear>;

    /// A LayerNorm with affine weight/bias of width `width` (`{key}.weight`, `{key}.bias`).
    fn layer_norm(&mut self, key: &str, width: usize, eps: f64) -> Result<LayerNorm>;
}

/// Builds a [`Linear`] from host data: `weight` in Burn's `[d_in, d_out]` layout.
pub fn linear_from_host(
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    d_in: usize,
    d_out: usize,
    device: &Device,
) -> Linear {
    Linear {
        weight: Param::from_data(TensorData::new(weight, [d_in, d_out]), device),
        bias: bias.map(|b| Param::from_data(TensorData::new(b, [d_out]), device)),
    }
}

/// Builds an affine [`LayerNorm`] from host weight and bias.
pub fn layer_norm_from_host(weight: Vec<f32>, bias: Vec<f32>, eps: f64, device: &Device) -> LayerNorm {
    let width = weight.len();
    let mut ln = LayerNormConfig::new(width).with_epsilon(eps).init(device);
    ln.gamma = Param::from_data(TensorData::new(weight, [width]), device);
    ln.beta = Some(Param::from_data(TensorData::new(bias, [width]), device));
    ln
}

/// Initialises parameters from a seeded host generator (ChaCha8), so a seed gives the same
/// weights on every backend. `gain` multiplies every Xavier gain (the stage-2 re-init uses 0.1).
pub struct InitSource {
    device: Device,
    rng: ChaCha8Rng,
    gain: f64,
}

impl InitSource {
    /// A source with the constructor's gain 1.
    pub fn new(seed: u64, device: &Device) -> Self {
        Self::with_gain(seed, 1.0, device)
    }

    /// A source whose Xavier gains are scaled by `gain`.
    pub fn with_gain(seed: u64, gain: f64, device: &Device) -> Self {
        InitSource { device: device.clone(), rng: ChaCha8Rng::seed_from_u64(seed), gain }
    }
}

impl ParamSource for InitSource {
    fn device(&self) -> &Device {
        &self.device
    }

    fn linear(&mut self, _key: &str, d_in: usize, d_out: usize, bias: bool, init: Init) -> Result<Linear> {
        let n = d_in * d_out;
        let weight: Vec<f32> = match init {
            Init::Xavier { gain } | Init::XavierFixed { gain } => {
                let scale = if matches!(init, Init::Xavier { .. }) { self.gain } else { 1.0 };
                let a = (gain * scale * (6.0 / (d_in + d_out) as f64).sqrt()) as f32;
                (0..n).map(|_| self.rng.random_range(-a..=a)).collect()
            }
            Init::Normal { std } => (0..n)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut self.rng);
                    (z * std) as f32
                })
                .collect(),
            Init::Zeros => vec![0.0; n],
            Init::TorchDefault => {
                let a = (1.0 / (d_in as f64).sqrt()) as f32;
                let weight = (0..n).map(|_| self.rng.random_range(-a..=a)).collect();
                let bias = bias.then(|| (0..d_out).map(|_| self.rng.random_range(-a..=a)).collect());
                return Ok(linear_from_host(weight, bias, d_in, d_out, &self.device));
            }
        };
        let bias = bias.then(|| vec![0.0; d_out]);
        Ok(linear_from_host(weight, bias, d_in, d_out, &self.device))
    }

    fn layer_norm(&mut self, _key: &str, width: usize, eps: f64) -> Result<LayerNorm> {
        Ok(layer_norm_from_host(vec![1.0; width], vec![0.0; width], eps, &self.device))
    }
}

/// Allocates zero-filled parameters of the right shapes and nothing else: the fast way to
/// get a module whose values are about to be replaced (loading a prdit checkpoint).
pub struct PlaceholderSource {
    device: Device,
}

impl PlaceholderSource {
    /// Placeholders on `device`.
    pub fn new(device: &Device) -> Self {
        PlaceholderSource { device: device.clone() }
    }
}

impl ParamSource for PlaceholderSource {
    fn device(&self) -> &Device {
        &self.device
    }

    fn linear(&mut self, _key: &str, d_in: usize, d_out: usize, bias: bool, _init: Init) -> Result<Linear> {
        Ok(Linear {
            weight: Param::from_tensor(Tensor::zeros([d_in, d_out], &self.device)),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], &self.device))),
        })
    }

    fn layer_norm(&mut self, _key: &str, width: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNormConfig::new(width).with_epsilon(eps).init(&self.device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn gelu_is_the_tanh_approximation() {
        let device = Device::flex();
        let xs = [-30.0f32, -6.0, -3.0, -1.2, -0.3, 0.0, 0.7, 2.3, 4.0, 30.0];
        let got = values(gelu_tanh(Tensor::<1>::from_floats(xs, &device)));
        for (x, g) in xs.iter().zip(got) {
            let x = *x as f64;
            let want =
                0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!((g as f64 - want).abs() < 1e-6 * x.abs().max(1.0), "gelu({x}) = {g}, tanh form {want}");
        }
    }

    #[test]
    fn layer_norm_epsilons() {
        // A row with variance 1e-6: LN₀ (eps 1e-6) gives ±1/√2, an affine LN (eps 1e-5) ±1/√11.
        let device = Device::flex();
        let x = Tensor::<3>::from_floats([[[1.0f32 - 1e-3, 1.0 + 1e-3]]], &device);
        let plain = values(layer_norm_plain(x.clone()));
        assert!((plain[1] as f64 - 0.5f64.sqrt()).abs() < 2e-3, "{plain:?}");
        let affine = layer_norm_from_host(vec![1.0, 1.0], vec![0.0, 0.0], 1e-5, &device);
        let out = values(affine.forward(x));
        assert!((out[1] as f64 - (1.0f64 / 11.0).sqrt()).abs() < 2e-3, "{out:?}");
    }

    #[test]
    fn modulate_identity_and_broadcast() {
        let device = Device::flex();
        let x = Tensor::<3>::from_floats([[[1.0f32, 2.0], [3.0, 4.0]]], &device);
        let zero = Tensor::<2>::zeros([1, 2], &device);
        assert_eq!(values(modulate(x.clone(), zero.clone(), zero)), vec![1.0, 2.0, 3.0, 4.0]);
        let shift = Tensor::<2>::from_floats([[10.0f32, 20.0]], &device);
        let scale = Tensor::<2>::from_floats([[1.0f32, -1.0]], &device);
        assert_eq!(values(modulate(x, shift, scale)), vec![12.0, 20.0, 16.0, 20.0]);
    }
}
