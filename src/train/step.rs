//! One optimizer step — the hot path shared by the training loop and the benchmarks:
//! the two-term loss (in micro-batches when the batch does not fit at once, gradients summed),
//! the skip check, global-norm clipping, AdamW and the EMA update.
//!
//! Data parallel ([`Trainer::replicas`]): the batch is split into one equal shard per worker
//! device, each worker computes its shard's losses and gradients on a replica of the model (a
//! thread per worker), and a [`Reducer`] combines them on worker 0, where the one decision to
//! skip, the clipping, AdamW and the EMA happen. The result equals one device taking the whole
//! batch in micro-batches of the shard size: the same inputs (the batch and its noise are drawn
//! once, independently of the device count) and the same sums in rank order.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use super::ema::ema_update;
use super::optim::{AdamW, AdamWConfig, clip_factor, global_norm};
use crate::config::TrainSection;
use crate::device::to_host;
use crate::diffusion::process_loss;
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
    /// Worker devices of data-parallel training, autodiff (worker 0 = the model's device);
    /// empty or one: the model's device alone.
    pub replicas: Vec<Device>,
    /// How workers' gradients and losses are combined.
    pub reducer: Reducer,
}

/// How the workers of a data-parallel step combine their gradients and losses. `Host`: on
/// worker 0's device, each worker's gradients moved there and summed in rank order — through
/// host memory between devices of a host backend, by Burn's device-to-device transfer between
/// GPUs. (Burn's NCCL collective is the CUDA alternative; see `docs/data-parallel.md`.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reducer {
    #[default]
    Host,
}

/// One worker's share of a step: its gradients (weighted by its share of the global batch)
/// and its weighted loss sums (total, image, noise); `None` gradients when a loss was not
/// finite.
struct Shard {
    grads: Option<GradientsParams>,
    sums: [f64; 3],
}

/// Test fault injection into one worker (`PRDIT_FAULT_INJECT`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// `nan-on-rank-R:N`: the worker's loss is NaN.
    Nan,
    /// `fail-on-rank-R:N`: the worker fails as a device that stopped answering would.
    Fail,
}

/// Losses and gradients of `x0[..]` in micro-batches of `micro` on `model`, each weighted by
/// its share of the global batch `total`.
fn shard_grads<N: Network>(
    model: &N,
    x0: Tensor<5>,
    t: &[f32],
    noise: Tensor<5>,
    micro: usize,
    total: usize,
    fault: Fault,
) -> Result<Shard> {
    if fault == Fault::Fail {
        return Err(crate::error::Error::transfer("a worker's gradients", "injected failure (fail-on-rank)"));
    }
    let batch = t.len();
    let device = x0.device(); // for the phase marks of `prdit bench --phases`
    let micro = micro.clamp(1, batch);
    let mut grads: Option<GradientsParams> = None;
    let mut sums = [0.0f64; 3];
    for start in (0..batch).step_by(micro) {
        let n = micro.min(batch - start);
        let terms = process_loss(
            N::process(model.config()),
            model,
            x0.clone().narrow(0, start, n),
            &t[start..start + n],
            noise.clone().narrow(0, start, n),
        );
        let weight = n as f64 / total as f64;
        let mut values =
            to_host(Tensor::cat(vec![terms.total.clone(), terms.image, terms.noise], 0), "the losses")?;
        crate::bench::phase("forward", &device);
        if fault == Fault::Nan {
            values[0] = f32::NAN;
        }
        for (s, v) in sums.iter_mut().zip(&values) {
            *s += *v as f64 * weight;
        }
        if !sums[0].is_finite() || values.iter().any(|v| !v.is_finite()) {
            return Ok(Shard { grads: None, sums: [f64::NAN; 3] });
        }
        let mut g = GradientsParams::from_grads((terms.total * weight).backward(), model);
        crate::bench::phase("backward", &device);
        match grads.as_mut() {
            Some(acc) => accumulate(model, acc, &mut g),
            None => grads = Some(g),
        }
    }
    Ok(Shard { grads, sums })
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
    accumulate_on(model, acc, more, None)
}

/// [`accumulate`], moving `more`'s gradients to `device` first when given.
fn accumulate_on<M: Module>(
    model: &M,
    acc: &mut GradientsParams,
    more: &mut GradientsParams,
    device: Option<&Device>,
) {
    struct Add<'a> {
        acc: &'a mut GradientsParams,
        more: &'a mut GradientsParams,
        device: Option<&'a Device>,
    }
    impl ModuleVisitor for Add<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.more.remove::<D>(param.id) {
                let g = match self.device {
                    Some(d) => g.to_device(d),
                    None => g,
                };
                let sum = match self.acc.remove::<D>(param.id) {
                    Some(a) => a + g,
                    None => g,
                };
                self.acc.register(param.id, sum);
            }
        }
    }
    model.visit(&mut Add { acc, more, device });
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
            replicas: Vec::new(),
            reducer: Reducer::Host,
        }
    }

    /// Data-parallel over `devices` (autodiff; the first must be the model's): the batch is
    /// split into one equal shard per device.
    pub fn with_replicas(mut self, devices: Vec<Device>) -> Self {
        self.replicas = devices;
        self
    }

    /// Devices the batch is split over (1 without data parallelism).
    pub fn workers(&self) -> usize {
        self.replicas.len().max(1)
    }

    /// The trainer of a run at step 0: the EMA starts as a copy of the model, AdamW without
    /// state.
    pub fn start(model: N, t: &TrainSection) -> Self {
        let ema = model.valid();
        Self::new(model, ema, AdamW::new(AdamWConfig::from_train(t)), t)
    }

    /// One step on a batch: `x0`, `noise` `[batch, 1, S, S, S]` on the model's device, one
    /// time per volume (a diffusion step, or a flow time, as the model's process takes); `lr` the learning rate of this step.
    /// An error only when the losses cannot be read back from the device.
    pub fn step(&mut self, x0: Tensor<5>, t: &[f32], noise: Tensor<5>, lr: f64) -> Result<StepOutcome> {
        self.step_at(x0, t, noise, lr, 0)
    }

    /// [`step`](Self::step), `step` numbering it for test fault injection
    /// (`PRDIT_FAULT_INJECT=nan-on-rank-R:N`: worker R's loss is NaN on the loop's N-th batch).
    pub fn step_at(
        &mut self,
        x0: Tensor<5>,
        t: &[f32],
        noise: Tensor<5>,
        lr: f64,
        step: u64,
    ) -> Result<StepOutcome> {
        let batch = t.len();
        let device = x0.device(); // for the phase marks of `prdit bench --phases`
        let workers = self.workers();
        if !batch.is_multiple_of(workers) {
            return Err(crate::error::Error::invalid(
                "train.batch_size",
                format!("{batch} volumes do not split evenly over {workers} devices"),
            ));
        }
        let shard = batch / workers;
        let poison = |rank: usize| {
            if super::run::fault_active(&format!("nan-on-rank-{rank}"), step) {
                Fault::Nan
            } else if super::run::fault_active(&format!("fail-on-rank-{rank}"), step) {
                Fault::Fail
            } else {
                Fault::None
            }
        };
        let shards: Vec<Shard> = if workers == 1 {
            vec![shard_grads(&self.model, x0, t, noise, self.micro_batch, batch, poison(0))?]
        } else {
            // One thread per worker, each on its replica; results in rank order.
            let jobs: Vec<_> = (0..workers)
                .map(|r| {
                    let d = &self.replicas[r];
                    let model = if r == 0 { self.model.clone() } else { self.model.clone().fork(d) };
                    let x = x0.clone().narrow(0, r * shard, shard).to_device(d);
                    let e = noise.clone().narrow(0, r * shard, shard).to_device(d);
                    (model, x, e, &t[r * shard..(r + 1) * shard], poison(r))
                })
                .collect();
            let micro = self.micro_batch;
            let results: Vec<Result<Shard>> = std::thread::scope(|s| {
                let handles: Vec<_> = jobs
                    .into_iter()
                    .map(|(model, x, e, ts, p)| {
                        s.spawn(move || shard_grads(&model, x, ts, e, micro, batch, p))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("a training worker panicked")).collect()
            });
            results.into_iter().collect::<Result<_>>()?
        };
        // The reduction: loss sums everywhere, gradients on worker 0, in rank order. One skip
        // decision for all workers.
        let mut sums = [0.0f64; 3];
        for sh in &shards {
            for (s, v) in sums.iter_mut().zip(sh.sums) {
                *s += v;
            }
        }
        if !sums[0].is_finite() || shards.iter().any(|s| s.grads.is_none()) {
            return Ok(StepOutcome::Skipped { loss: f64::NAN });
        }
        let device0 = (workers > 1).then(|| self.replicas[0].clone());
        let mut parts = shards.into_iter().map(|s| s.grads.expect("finite shards have gradients"));
        let mut grads = parts.next().expect("at least one worker");
        for mut g in parts {
            accumulate_on(&self.model, &mut grads, &mut g, device0.as_ref());
        }
        let [loss, image, noise] = sums;
        if loss > MAX_LOSS {
            return Ok(StepOutcome::Skipped { loss });
        }
        let grad_norm = global_norm(&self.model, &grads);
        let scale = match (&grad_norm, self.grad_clip > 0.0) {
            (Some(n), true) => Some(clip_factor(n.clone(), self.grad_clip)),
            _ => None,
        };
        crate::bench::phase("gradient norm", &device);
        let model = std::mem::replace(&mut self.model, self.ema.clone());
        self.model = self.optim.step(model, &mut grads, lr, scale);
        crate::bench::phase("AdamW", &device);
        self.ema = ema_update(self.ema.clone(), &self.model, self.ema_decay);
        crate::bench::phase("EMA", &device);
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
        let before = state_dict(&model).unwrap();
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
        let after = state_dict(&model).unwrap();
        for (key, value) in &before {
            let frozen = !(key.starts_with("fine.") || key.starts_with("t_embedder.fine_head."));
            if frozen {
                assert_eq!(value, &after[key], "{key} is frozen and must not move");
            }
        }
        assert_ne!(before["fine.final_layer.linear.weight"], after["fine.final_layer.linear.weight"]);
    }
}
