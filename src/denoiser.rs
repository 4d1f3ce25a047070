//! What samplers and the loss need of a network: one noisy volume in, predicted noise and image
//! out (or, for the flow-matching process, the velocity). It lives apart from both [`crate::model`] (which implements it) and
//! [`crate::diffusion`] (which uses it), so that neither depends on the other.

use burn::tensor::Tensor;

/// Anything that predicts noise and image from a noisy volume: the network, or an analytic
/// stand-in in tests.
pub trait Denoiser {
    /// - `x_t`: `[batch, 1, S, S, S]`; `t`: one diffusion time per sample
    /// - returns `(ε̂, x̂₀)`, each `[batch, 1, S, S, S]`
    fn predict(&self, x_t: Tensor<5>, t: &[f32]) -> (Tensor<5>, Tensor<5>);
}

/// Anything that predicts the flow-matching velocity `x − z` from a state of the flow path
/// `x_t = (1 − t)·z + t·x` (PRDiT-FM; [`crate::diffusion::flow`]).
pub trait VelocityModel {
    /// - `x_t`: `[batch, 1, S, S, S]`; `t`: one flow time in [0, 1] per sample
    /// - returns `v̂`, `[batch, 1, S, S, S]`
    fn velocity(&self, x_t: Tensor<5>, t: &[f32]) -> Tensor<5>;
}

/// Splits a network output `[batch, 2, …]` into (ε̂, x̂₀) = (channel 0, channel 1).
pub fn split_prediction(out: Tensor<5>) -> (Tensor<5>, Tensor<5>) {
    (out.clone().narrow(1, 0, 1), out.narrow(1, 1, 1))
}
