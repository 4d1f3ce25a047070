//! One optimizer step — the hot path shared by the training loop and the benchmarks:
//! the two-term loss (in micro-batches when the batch does not fit at once, gradients summed),
//! the skip check, global-norm clipping, AdamW and the EMA update.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use super::ema::ema_update;
use super::optim::{AdamW, clip_factor, global_norm};
use crate::diffusion::training_loss;
use crate::model::network::Network;

/// Losses above this are treated like non-finite ones (skipped), as in the official loop.
pub const MAX_LOSS: f64 = 1e5;

/// The model, its EMA copy and the optimizer.
pub struct Trainer<N: Network> {
    /// On an autodiff device.
    pub model: N,
    /// On the base device.
    pub ema: N,
    pub optim: AdamW,
    /// Volumes per forward/backward pass (≤ the batch; the batch is split into these).
    pub micro_batch: usize,
    pub grad_clip: f64,
    pub ema_decay: f64,
}

/// What one step did.
pub enum StepOutcome {
    /// The loss was not finite or above [`MAX_LOSS`]: nothing changed.
    Skipped { loss: f64 },
    /// An update was applied. Losses are batch means; `grad_norm` stays on the device.
    Done { loss: f64, image: f64, noise: f64, grad_norm: Option<Box<Tensor<1>>> },
}

/// Adds every gradient of `more` into `acc` (parameters of `model`).
fn accumulate<M: Module>(model: &M, acc: &mut GradientsParams, more: &mut GradientsParams) {
    struct Add<'a> {
        acc: &'a mut GradientsParams,
        more: &'a mut GradientsParams,
    }
    impl ModuleVisitor for Add<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.more.remove::<D>(param.id) {
                let sum = match self.acc.remove::<D>(param.id) {
                    Some(a) => a + g,
                    None => g,
                };
                self.acc.register(param.id, sum);
            }
        }
    }
    model.visit(&mut Add { acc, more });
}

impl<N: Network> Trainer<N> {
    /// One step on a batch: `x0`, `noise` `[batch, 1, S, S, S]` on the model's device, one
    /// time per volume; `lr` the learning rate of this step.
    pub fn step(&mut self, x0: Tensor<5>, t: &[usize], noise: Tensor<5>, lr: f64) -> StepOutcome {
        let batch = t.len();
        let micro = self.micro_batch.clamp(1, batch);
        let mut grads: Option<GradientsParams> = None;
        let mut sums = [0.0f64; 3];
        for start in (0..batch).step_by(micro) {
            let n = micro.min(batch - start);
            let terms = training_loss(
                &self.model,
                x0.clone().narrow(0, start, n),
                &t[start..start + n],
                noise.clone().narrow(0, start, n),
            );
            let weight = n as f64 / batch as f64;
            let values: Vec<f32> = Tensor::cat(vec![terms.total.clone(), terms.image, terms.noise], 0)
                .into_data()
                .try_into_vec_as()
                .unwrap_or_default();
            for (s, v) in sums.iter_mut().zip(&values) {
                *s += *v as f64 * weight;
            }
            if !sums[0].is_finite() || values.iter().any(|v| !v.is_finite()) {
                return StepOutcome::Skipped { loss: f64::NAN };
            }
            let mut g = GradientsParams::from_grads((terms.total * weight).backward(), &self.model);
            match grads.as_mut() {
                Some(acc) => accumulate(&self.model, acc, &mut g),
                None => grads = Some(g),
            }
        }
        let [loss, image, noise] = sums;
        if loss > MAX_LOSS {
            return StepOutcome::Skipped { loss };
        }
        let mut grads = grads.expect("at least one micro-batch");
        let grad_norm = global_norm(&self.model, &grads);
        let scale = match (&grad_norm, self.grad_clip > 0.0) {
            (Some(n), true) => Some(clip_factor(n.clone(), self.grad_clip)),
            _ => None,
        };
        let model = std::mem::replace(&mut self.model, self.ema.clone());
        self.model = self.optim.step(model, &mut grads, lr, scale);
        self.ema = ema_update(self.ema.clone(), &self.model, self.ema_decay);
        StepOutcome::Done { loss, image, noise, grad_norm: grad_norm.map(Box::new) }
    }
}
