//! Attention whose backward pass keeps no `[batch, heads, N, N]` score matrix.
//!
//! Burn's attention under autodiff is the op-by-op fallback softmax(QKᵀ/√d)·V, which keeps
//! three N × N tensors per call for the backward pass (the exponent's input, the
//! numerator and the probabilities): at the paper's stage 2 (4096 tokens, 12 heads, batch 16)
//! that is 9.7 GB per layer. This custom autodiff operation runs the backend's own attention
//! forward (Flex's flash kernel on the CPU, CubeCL's on a GPU) and keeps only q, k, v and the
//! output (`4·N·d` values per head); its backward recomputes the scores in blocks of query rows,
//! each block's softmax over its full rows, so at most a few `[batch, heads, rows, N]` tensors
//! exist at a time. The gradients are the exact ones of softmax attention:
//!
//! - `P = softmax(s·q kᵀ)` for a block of rows, `D = rowsum(dO ⊙ O)`,
//! - `dV += Pᵀ dO`, `dS = P ⊙ (dO vᵀ − D)`, `dQ = s·dS k`, `dK += s·dSᵀ q`.
//!
//! It is a Burn backend extension: the CPU backend (`Flex`) and the CubeCL backends (CUDA,
//! wgpu) run the forward, and `Autodiff` over either records the backward.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::AttentionModuleOptions;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Slice, TensorMetadata, backend_extension};
use burn::tensor::Tensor;

/// Bytes one `[batch, heads, rows, N]` float32 block of the backward may take: the block of
/// query rows is the largest multiple of [`ROW_MULTIPLE`] within it (at least one multiple,
/// at most all N rows). The backward holds about four such blocks at once.
pub const BLOCK_BYTES: usize = 256 << 20;
/// Query rows come in multiples of this (matmul tiles).
pub const ROW_MULTIPLE: usize = 16;

/// Query rows per block of the backward for `[batch, heads, tokens, ·]` attention: the largest
/// multiple of [`ROW_MULTIPLE`] whose `[batch, heads, rows, tokens]` float32 block fits in
/// [`BLOCK_BYTES`], between one multiple and all `tokens` rows.
pub fn block_rows(batch: usize, heads: usize, tokens: usize) -> usize {
    let per_row = block_bytes(batch, heads, tokens, 1).max(1) as usize;
    let rows = (BLOCK_BYTES / per_row) / ROW_MULTIPLE * ROW_MULTIPLE;
    rows.max(ROW_MULTIPLE).min(tokens.max(1))
}

/// Bytes of one `[batch, heads, rows, tokens]` float32 block of the backward.
pub fn block_bytes(batch: usize, heads: usize, tokens: usize, rows: usize) -> u64 {
    (batch * heads * rows * tokens * 4) as u64
}

/// softmax(q kᵀ/√d) v over `[batch, heads, tokens, head_dim]`, differentiable with a backward
/// that recomputes the scores in blocks of `rows` query rows.
#[backend_extension(Flex, Cube: cfg(any(feature = "cuda", feature = "wgpu")), Autodiff)]
pub trait BlockedAttention: Backend {
    /// The forward (the backend's own attention).
    fn blocked_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        rows: usize,
    ) -> FloatTensor<Self> {
        let _ = rows;
        backend_attention::<Self>(q, k, v)
    }
}

/// softmax(q kᵀ/√d)·v by the backend's own attention.
fn backend_attention<B: Backend>(q: FloatTensor<B>, k: FloatTensor<B>, v: FloatTensor<B>) -> FloatTensor<B> {
    B::attention(q, k, v, None, None, AttentionModuleOptions::default())
}

impl BlockedAttention for burn::backend::Flex {}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl BlockedAttention for burn::backend::Cube {}

#[derive(Debug)]
struct BlockedAttentionBackward;

impl<B: Backend> Backward<B, 3> for BlockedAttentionBackward {
    /// q, k, v, the output, and the rows per block.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_out = grads.consume::<B>(&ops.node);
        let (q, k, v, out, rows) = ops.state;
        let (dq, dk, dv) = attention_gradients::<B>(q, k, v, out, d_out, rows);
        if let Some(node) = node_q {
            grads.register::<B>(node.id, dq);
        }
        if let Some(node) = node_k {
            grads.register::<B>(node.id, dk);
        }
        if let Some(node) = node_v {
            grads.register::<B>(node.id, dv);
        }
    }
}

impl<B: Backend, C: CheckpointStrategy> BlockedAttention for Autodiff<B, C> {
    fn blocked_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        rows: usize,
    ) -> FloatTensor<Self> {
        let prep = BlockedAttentionBackward.prepare::<C>([q.node(), k.node(), v.node()]);
        let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
        match prep.compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = backend_attention::<B>(q.clone(), k.clone(), v.clone());
                prep.finish((q, k, v, out.clone(), rows), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(backend_attention::<B>(q, k, v)),
        }
    }
}

/// The exact gradients of softmax(s·q kᵀ)·v with respect to q, k and v, given the output and its
/// gradient, the scores recomputed `rows` query rows at a time.
fn attention_gradients<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    d_out: FloatTensor<B>,
    rows: usize,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let [_, _, n, d] = q.shape().dims::<4>();
    let scale = 1.0 / (d as f64).sqrt();
    let rows = rows.clamp(1, n.max(1));
    // D = rowsum(dO ⊙ O): [b, h, n, 1].
    let delta = B::float_sum_dim(B::float_mul(d_out.clone(), out), 3);
    let k_t = B::float_transpose(k.clone());
    let v_t = B::float_transpose(v);
    let mut dk: Option<FloatTensor<B>> = None;
    let mut dv: Option<FloatTensor<B>> = None;
    let mut dq = Vec::with_capacity(n.div_ceil(rows));
    let add = |acc: Option<FloatTensor<B>>, x: FloatTensor<B>| {
        Some(match acc {
            Some(a) => B::float_add(a, x),
            None => x,
        })
    };
    for start in (0..n).step_by(rows) {
        let end = (start + rows).min(n);
        let block =
            [Slice::full(), Slice::full(), Slice::new(start as isize, Some(end as isize), 1), Slice::full()];
        let q_i = B::float_slice(q.clone(), &block);
        let d_out_i = B::float_slice(d_out.clone(), &block);
        let delta_i = B::float_slice(delta.clone(), &block);
        // P = softmax(s·q_i kᵀ) over full rows, as the forward computed it.
        let scores = B::float_mul_scalar(B::float_matmul(q_i.clone(), k_t.clone()), scale.into());
        let max = B::float_max_dim(scores.clone(), 3);
        let e = B::float_exp(B::float_sub(scores, max));
        let p = B::float_div(e.clone(), B::float_sum_dim(e, 3)); // [b, h, rows, n]
        dv = add(dv, B::float_matmul(B::float_transpose(p.clone()), d_out_i.clone()));
        let d_s = B::float_mul(p, B::float_sub(B::float_matmul(d_out_i, v_t.clone()), delta_i));
        dq.push(B::float_mul_scalar(B::float_matmul(d_s.clone(), k.clone()), scale.into()));
        dk = add(dk, B::float_mul_scalar(B::float_matmul(B::float_transpose(d_s), q_i), scale.into()));
    }
    let dq = if dq.len() == 1 { dq.pop().expect("one block") } else { B::float_cat(dq, 2) };
    (dq, dk.expect("at least one block"), dv.expect("at least one block"))
}

/// softmax(q kᵀ/√d)·v over `[batch, heads, tokens, head_dim]` on any backend; under autodiff its
/// backward keeps no score matrix (see the module docs), with [`block_rows`] query rows per block.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let [batch, heads, tokens, _] = q.dims();
    attention_with_rows(q, k, v, block_rows(batch, heads, tokens))
}

/// [`attention`] with `rows` query rows per block of the backward.
pub fn attention_with_rows(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, rows: usize) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as BlockedAttention>::blocked_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        rows,
    ))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Tensor};

    use super::*;

    /// softmax(q kᵀ/√d)·v op by op (what Burn records under autodiff).
    fn plain(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
        let d = q.dims()[3];
        let scores = q.matmul(k.swap_dims(2, 3)) / (d as f64).sqrt();
        burn::tensor::activation::softmax(scores, 3).matmul(v)
    }

    fn max_rel(a: Tensor<4>, b: Tensor<4>) -> f64 {
        let scale = b.clone().abs().max().into_scalar::<f32>() as f64;
        (a - b).abs().max().into_scalar::<f32>() as f64 / scale.max(1e-30)
    }

    /// Forward and all three gradients equal plain attention's to float32 precision: tokens
    /// not a multiple of the block, one block, one head, many heads, batch 1 and 3.
    #[test]
    fn forward_and_gradients_equal_plain_attention() {
        let device = Device::flex().autodiff();
        for (batch, heads, tokens, dim, rows) in
            [(2, 4, 37, 8, 16), (1, 1, 50, 16, 16), (3, 12, 20, 4, 64), (2, 6, 64, 32, 16), (1, 2, 9, 3, 1)]
        {
            let shape = [batch, heads, tokens, dim];
            let input = |seed: f64| {
                Tensor::<4>::random(shape, Distribution::Normal(seed, 1.0), &device).require_grad()
            };
            let (q, k, v) = (input(0.0), input(0.1), input(-0.1));
            // A weighting of the output, so that every output element has its own gradient.
            let w = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let ours = attention_with_rows(q.clone(), k.clone(), v.clone(), rows);
            let reference = plain(q.clone(), k.clone(), v.clone());
            let case = format!("{shape:?}, {rows} rows");
            let e = max_rel(ours.clone(), reference.clone());
            eprintln!("{case}: forward {e:.2e}");
            assert!(e < 1e-5, "{case}: forward {e:.2e}");
            let g_ours = (ours * w.clone()).sum().backward();
            let g_ref = (reference * w).sum().backward();
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let e = max_rel(x.grad(&g_ours).unwrap(), x.grad(&g_ref).unwrap());
                eprintln!("{case}: d{name} {e:.2e}");
                assert!(e < 2e-5, "{case}: d{name} {e:.2e}");
            }
        }
    }

    #[test]
    fn blocks_fit_their_budget() {
        // The paper's stage 2: 4096 tokens, 12 heads, batch 16: 16·12·4096·4 B = 3 MiB per row.
        assert_eq!(block_rows(16, 12, 4096), 80);
        assert!(16 * 12 * 4096 * 4 * block_rows(16, 12, 4096) <= BLOCK_BYTES);
        // Small problems take all rows in one block; huge ones at least one multiple.
        assert_eq!(block_rows(2, 6, 512), 512);
        assert_eq!(block_rows(64, 64, 1 << 16), ROW_MULTIPLE);
    }
}
