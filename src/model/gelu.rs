//! GELU (tanh approximation) as one autodiff operation that keeps only its input.
//!
//! `g(x) = x·σ(u)`, `u = c·(x + a·x³)`, `c = 2·√(2/π)`, `a = 0.044715`, which equals
//! `½x·(1 + tanh(√(2/π)·(x + a·x³)))`. Written as seven tensor operations, autodiff keeps four
//! intermediates of the input's size for the backward pass; in the DiT's MLPs (4·H values per
//! token) that was the largest part of stage 2's training memory after the attention scores.
//! This operation keeps x alone and recomputes σ(u) in the backward:
//! `g'(x) = σ(u) + x·σ(u)·(1 − σ(u))·c·(1 + 3a·x²)`.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;

const C: f64 = 2.0 * core::f64::consts::FRAC_2_SQRT_PI * core::f64::consts::FRAC_1_SQRT_2;
const A: f64 = 0.044715;

/// `u = c·(x + a·x³)`, computed as `(x·x·a + 1)·x·c`.
fn inner<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let x2 = B::float_mul(x.clone(), x.clone());
    let p = B::float_add_scalar(B::float_mul_scalar(x2, A.into()), 1.0.into());
    B::float_mul_scalar(B::float_mul(p, x), C.into())
}

/// `x·σ(u)` on the backend.
fn gelu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let s = B::sigmoid(inner::<B>(x.clone()));
    B::float_mul(x, s)
}

/// The tanh GELU; under autodiff its backward recomputes from the input alone.
#[backend_extension(Flex, Cube: cfg(any(feature = "cuda", feature = "wgpu")), Autodiff)]
pub trait GeluTanh: Backend {
    /// `x·σ(c·(x + a·x³))`.
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        gelu::<Self>(x)
    }
}

impl GeluTanh for burn::backend::Flex {}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl GeluTanh for burn::backend::Cube {}

#[derive(Debug)]
struct GeluTanhBackward;

impl<B: Backend> Backward<B, 1> for GeluTanhBackward {
    /// The input.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let Some(node) = node else { return };
        let x = ops.state;
        let s = B::sigmoid(inner::<B>(x.clone()));
        // σ(u)·(1 − σ(u))·c·(1 + 3a·x²)·x + σ(u)
        let ds = B::float_mul(s.clone(), B::float_add_scalar(B::float_neg(s.clone()), 1.0.into()));
        let x2 = B::float_mul(x.clone(), x.clone());
        let du = B::float_mul_scalar(
            B::float_add_scalar(B::float_mul_scalar(x2, (3.0 * A).into()), 1.0.into()),
            C.into(),
        );
        let d = B::float_add(B::float_mul(B::float_mul(ds, du), x), s);
        grads.register::<B>(node.id, B::float_mul(grad, d));
    }
}

impl<B: Backend, CS: CheckpointStrategy> GeluTanh for Autodiff<B, CS> {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluTanhBackward.prepare::<CS>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let out = gelu::<B>(x.clone());
                prep.finish(x, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(gelu::<B>(x.into_primitive())),
        }
    }
}

/// `x·σ(2·√(2/π)·(x + 0.044715·x³))` on any backend (see the module docs).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GeluTanh>::gelu_tanh(x.into_dispatch()))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Tensor};

    use super::*;

    /// The same function op by op, as autodiff records it.
    fn composed(x: Tensor<2>) -> Tensor<2> {
        let inner = (x.clone() * x.clone() * A + 1.0) * x.clone() * C;
        x * burn::tensor::activation::sigmoid(inner)
    }

    #[test]
    fn value_and_gradient_equal_the_composed_function() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::random([7, 300], Distribution::Normal(0.0, 3.0), &device).require_grad();
        let w = Tensor::<2>::random([7, 300], Distribution::Normal(0.0, 1.0), &device);
        let (ours, reference) = (gelu_tanh(x.clone()), composed(x.clone()));
        let diff = |a: Tensor<2>, b: Tensor<2>| (a - b).abs().max().into_scalar::<f32>();
        assert_eq!(diff(ours.clone(), reference.clone()), 0.0, "the same operations forward");
        let g_ours = x.grad(&(ours * w.clone()).sum().backward()).unwrap();
        let g_ref = x.grad(&(reference * w).sum().backward()).unwrap();
        let scale = g_ref.clone().abs().max().into_scalar::<f32>();
        let e = diff(g_ours, g_ref) / scale;
        eprintln!("gelu gradient: relative error {e:.2e}");
        assert!(e < 1e-5, "gradient {e:.2e}");
        // ½x·(1 + tanh(√(2/π)(x + a x³))) at a few points, in float64.
        let plain = Device::flex();
        let pts = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let got: Vec<f32> =
            gelu_tanh(Tensor::<1>::from_floats(pts, &plain)).into_data().try_into_vec_as::<f32>().unwrap();
        for (p, g) in pts.iter().zip(got) {
            let p = *p as f64;
            let want = 0.5 * p * (1.0 + ((2.0 / core::f64::consts::PI).sqrt() * (p + A * p.powi(3))).tanh());
            assert!((g as f64 - want).abs() < 1e-6, "g({p}) = {g}, want {want}");
        }
    }
}
