//! One optimizer step — the hot path shared by the training loop and the benchmarks:
//! the two-term loss (in micro-batches when the batch does not fit at once, gradients summed),
//! the skip check, global-norm clipping, AdamW and the EMA update.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use super::ema::ema_update;
use super::optim::{AdamW, AdamWConfig, clip_factor, global_norm};
use crate::config::TrainSection;
use crate::device::to_host;
use crate::diffusion::training_loss;
use crate::error::Result;
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
    /// A trainer with `[train]`'s clipping, EMA decay and micro-batch: `model` on an autodiff
    /// device with its stage already set (what trains, what is frozen), `ema` on the base
    /// device, `optim` fresh or resumed.
    pub fn new(model: N, ema: N, optim: AdamW, t: &TrainSection) -> Self {
        Trainer {
            model,
            ema,
            optim,
            micro_batch: t.micro_batch.unwrap_or(t.batch_size),
            grad_clip: t.grad_clip,
            ema_decay: t.ema_decay,
        }
    }

    /// The trainer of a run at step 0: the EMA starts as a copy of the model, AdamW without
    /// state.
    pub fn start(model: N, t: &TrainSection) -> Self {
        let ema = model.valid();
        Self::new(model, ema, AdamW::new(AdamWConfig::from_train(t)), t)
    }

    /// One step on a batch: `x0`, `noise` `[batch, 1, S, S, S]` on the model's device, one
    /// time per volume; `lr` the learning rate of this step.
    /// An error only when the losses cannot be read back from the device.
    pub fn step(&mut self, x0: Tensor<5>, t: &[usize], noise: Tensor<5>, lr: f64) -> Result<StepOutcome> {
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
            let values =
                to_host(Tensor::cat(vec![terms.total.clone(), terms.image, terms.noise], 0), "the losses")?;
            for (s, v) in sums.iter_mut().zip(&values) {
                *s += *v as f64 * weight;
            }
            if !sums[0].is_finite() || values.iter().any(|v| !v.is_finite()) {
                return Ok(StepOutcome::Skipped { loss: f64::NAN });
            }
            let mut g = GradientsParams::from_grads((terms.total * weight).backward(), &self.model);
            match grads.as_mut() {
                Some(acc) => accumulate(&self.model, acc, &mut g),
                None => grads = Some(g),
            }
        }
        let [loss, image, noise] = sums;
        if loss > MAX_LOSS {
            return Ok(StepOutcome::Skipped { loss });
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
        Ok(StepOutcome::Done { loss, image, noise, grad_norm: grad_norm.map(Box::new) })
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use crate::model::{Prdit, PrditConfig};

    #[test]
    fn frozen_stage1_gets_no_gradient_no_optimizer_state_and_does_not_move() {
        use crate::diffusion::{NOISE_STD, NoiseSource, SeededNoise, training_loss};
        use crate::weights::export::state_dict;
        use burn::optim::{AdamWConfig, GradientsParams};

        let device = Device::flex().autodiff();
        let cfg = PrditConfig::tiny();
        let model = Prdit::init(&cfg, 1, &device).unwrap().freeze_stage1();
        let before = state_dict(&model);
        let mut noise = SeededNoise::new(2, NOISE_STD);
        let x0 = noise.draw([2, 1, 16, 16, 16], &device).unwrap();
        let eps = noise.draw([2, 1, 16, 16, 16], &device).unwrap();
        let loss = training_loss(&model, x0, &[10, 900], eps);
        let grads = GradientsParams::from_grads(loss.total.backward(), &model);
        // Trainable: fine head (2) + patch embedder (7) + 10 per block + final layer (4).
        let trainable = 2 + 7 + 10 * cfg.depth + 4;
        assert_eq!(grads.len(), trainable);
        let mut optim = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.0).init();
        let model = optim.step(1e-3, model, grads);
        // AdamW keeps two moments per trainable tensor and nothing for the frozen ones.
        let record = format!("{:?}", optim.to_record());
        assert!(record.contains(&format!("num_tensors: {}", 2 * trainable)), "{record}");
        let after = state_dict(&model);
        for (key, value) in &before {
            let frozen = !(key.starts_with("fine.") || key.starts_with("t_embedder.fine_head."));
            if frozen {
                assert_eq!(value, &after[key], "{key} is frozen and must not move");
            }
        }
        assert_ne!(before["fine.final_layer.linear.weight"], after["fine.final_layer.linear.weight"]);
    }
}
