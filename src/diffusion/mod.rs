//! The angular image-and-noise ("IaN") diffusion of PRDiT (spec §6): `x_t = cos φ(t)·x₀ +
//! sin φ(t)·ε` with `φ(t) = (π/2)·t/T`, `ε = 0.5·z`, T = 1000; the network predicts both ε
//! and x₀, and the loss is the sum of the two mean squared errors.
//!
//! Python: `diffusion/ian_diffusion.py`.

pub mod exact;
pub mod fit;
pub mod flow;
pub mod noise;
pub mod ode;
pub mod sampler;

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};

pub use noise::{InjectedNoise, NoiseSource, SeededNoise};
pub use sampler::{SampleOutput, Sampler, sample, time_grid};

pub use crate::denoiser::{Denoiser, VelocityModel, split_prediction};

/// The generative process a model is trained for. It fixes the network's output channels, so
/// a model file knows its process (`out_channels` of its configuration) and models of the two
/// kinds do not mix.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Process {
    /// PRDiT's image-and-noise diffusion: two output channels (ε̂, x̂₀), T = 1000 steps.
    #[default]
    Ian,
    /// PRDiT-FM's straight-line flow matching: one output channel, the velocity ([`flow`]).
    Flow,
}

impl Process {
    /// Output channels of its networks: 2 (noise, image) or 1 (velocity).
    pub fn out_channels(self) -> usize {
        match self {
            Process::Ian => 2,
            Process::Flow => 1,
        }
    }

    /// The process of a network with `out_channels` outputs.
    pub fn of_channels(out_channels: usize) -> Result<Self> {
        match out_channels {
            2 => Ok(Process::Ian),
            1 => Ok(Process::Flow),
            n => Err(Error::invalid(
                "out_channels",
                format!(
                    "is {n}: 2 is the image-and-noise diffusion (noise, image), 1 flow matching (velocity)"
                ),
            )),
        }
    }

    /// The name in run files and manifests (`ian`, `flow`).
    pub fn key(self) -> &'static str {
        match self {
            Process::Ian => "ian",
            Process::Flow => "flow",
        }
    }

    /// A readable name.
    pub fn describe(self) -> &'static str {
        match self {
            Process::Ian => "image-and-noise diffusion",
            Process::Flow => "flow matching",
        }
    }

    /// Standard deviation of the training noise: 0.5 (ε) or 1 (z).
    pub fn noise_std(self) -> f64 {
        match self {
            Process::Ian => NOISE_STD,
            Process::Flow => flow::FLOW_NOISE_STD,
        }
    }

    /// Draws one training time per volume: an integer step in 0..T (as a float) or a flow
    /// time in [0, 1).
    pub fn draw_times(self, rng: &mut chacha20::ChaCha8Rng, n: usize) -> Vec<f32> {
        use rand::RngExt;
        match self {
            Process::Ian => (0..n).map(|_| rng.random_range(0..NUM_TIMESTEPS) as f32).collect(),
            Process::Flow => (0..n).map(|_| rng.random::<f32>()).collect(),
        }
    }
}

/// The training loss of `process` for given times (integer steps for the diffusion, flow
/// times for flow matching) and noise of [`Process::noise_std`].
pub fn process_loss<M: Denoiser + VelocityModel>(
    process: Process,
    model: &M,
    x0: Tensor<5>,
    t: &[f32],
    noise: Tensor<5>,
) -> LossTerms {
    match process {
        Process::Ian => {
            debug_assert!(t.iter().all(|v| v.fract() == 0.0 && (0.0..NUM_TIMESTEPS as f32).contains(v)));
            let steps: Vec<usize> = t.iter().map(|&v| v as usize).collect();
            training_loss(model, x0, &steps, noise)
        }
        Process::Flow => flow::training_loss(model, x0, t, noise),
    }
}

/// Number of diffusion steps T.
pub const NUM_TIMESTEPS: usize = 1000;
/// Standard deviation of the diffusion noise ε (training, initial state, corrector).
pub const NOISE_STD: f64 = 0.5;

/// φ(t) = (π/2)·t/T.
pub fn angle(t: f64) -> f64 {
    std::f64::consts::FRAC_PI_2 * t / NUM_TIMESTEPS as f64
}

/// Integer diffusion times as the floats the network takes.
pub fn times(t: &[usize]) -> Vec<f32> {
    t.iter().map(|&v| v as f32).collect()
}

/// Per-sample coefficient `[batch, 1, 1, 1, 1]` from host values.
fn per_sample(values: Vec<f32>, device: &Device) -> Tensor<5> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n, 1, 1, 1, 1]), device)
}

/// The forward process: `x_t = cos φ(t)·x₀ + sin φ(t)·ε` per sample.
/// - `x0`, `noise` (already scaled, std 0.5): `[batch, C, S, S, S]`; `t`: one time per sample
pub fn q_sample(x0: Tensor<5>, t: &[usize], noise: Tensor<5>) -> Tensor<5> {
    let device = x0.device();
    let cos = per_sample(t.iter().map(|&v| angle(v as f64).cos() as f32).collect(), &device);
    let sin = per_sample(t.iter().map(|&v| angle(v as f64).sin() as f32).collect(), &device);
    x0 * cos + noise * sin
}

/// The training objective's terms. `total = image + noise` (equal weights).
pub struct LossTerms {
    /// Scalar `[1]`: mean over the batch of the per-sample total.
    pub total: Tensor<1>,
    /// Scalar `[1]`: mean over the batch of the per-sample image MSE.
    pub image: Tensor<1>,
    /// Scalar `[1]`: mean over the batch of the per-sample noise MSE.
    pub noise: Tensor<1>,
    /// `[batch]`: image MSE + noise MSE of each sample.
    pub per_sample: Tensor<1>,
}

/// The two-term loss of spec §6.2 for given times and noise.
/// - `x0`, `noise`: `[batch, 1, S, S, S]` (noise already scaled by 0.5); `t`: one per sample
pub fn training_loss(model: &impl Denoiser, x0: Tensor<5>, t: &[usize], noise: Tensor<5>) -> LossTerms {
    let x_t = q_sample(x0.clone(), t, noise.clone());
    let (eps_hat, x0_hat) = model.predict(x_t, &times(t));
    let mse = |a: Tensor<5>, b: Tensor<5>| (a - b).square().mean_dims(&[1, 2, 3, 4]).flatten::<1>(0, 4);
    let image = mse(x0_hat, x0); // [batch]
    let noise = mse(eps_hat, noise); // [batch]
    let per_sample = image.clone() + noise.clone();
    LossTerms { total: per_sample.clone().mean(), image: image.mean(), noise: noise.mean(), per_sample }
}
