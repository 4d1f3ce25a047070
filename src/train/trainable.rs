//! How each kind of network enters training: built fresh (stage 1 from a seed, stage 2 on a
//! frozen stage 1, the refinement on a frozen base), what trains in its stage, and how many
//! parameters that is.

use burn::tensor::Device;

use super::TrainOptions;
use super::run::{self, Stage};
use super::stage2;
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::model::highres::{PrditSr, SrConfig};
use crate::model::network::Network;
use crate::model::{Prdit, PrditConfig};
use crate::weights::checkpoint::load_expecting;

/// How each kind of network enters training.
pub trait Trainable: Network + Sized {
    /// The network a run configuration describes.
    fn from_run(cfg: &RunConfig) -> Result<Self::Config>;
    /// A fresh model for step 0 on `device` (autodiff), with a description of its origin.
    fn fresh(
        cfg: &RunConfig,
        net: &Self::Config,
        opts: &TrainOptions,
        device: &Device,
    ) -> Result<(Self, String)>;
    /// What trains in this stage (freezing the rest); applied to fresh and resumed models.
    fn for_stage(self, cfg: &RunConfig, stage: Stage) -> Self;
    /// Parameters trained in this stage.
    fn trained(cfg: &RunConfig, net: &Self::Config, stage: Stage) -> usize;
    /// The predicted peak memory of a training step of this stage at `batch` volumes per pass
    /// (`prdit inspect`'s fit), where there is one.
    fn predicted_peak(cfg: &RunConfig, net: &Self::Config, stage: Stage, batch: usize) -> Option<u64>;
}

impl Trainable for Prdit {
    fn from_run(cfg: &RunConfig) -> Result<PrditConfig> {
        cfg.model_config()
    }

    fn fresh(
        cfg: &RunConfig,
        net: &PrditConfig,
        opts: &TrainOptions,
        device: &Device,
    ) -> Result<(Self, String)> {
        let seed = cfg.train.seed;
        if opts.stage == Stage::Local {
            return Ok((Prdit::init(net, seed, device)?, format!("initialised from seed {seed}")));
        }
        let source =
            opts.local.clone().or_else(|| cfg.global.as_ref().and_then(|g| g.local.clone())).ok_or_else(
                || {
                    Error::invalid(
                        "global.local",
                        "train-global needs the stage-1 weights (a stage-1 run folder, model file or official checkpoint)",
                    )
                },
            )?;
        let gain = cfg.global.as_ref().map_or(0.1, |g| g.init_gain);
        let (sd, what) = stage2::stage1_weights(&source, net)?;
        let m = stage2::build_stage2(net, &sd, seed, gain, device)?;
        Ok((m, format!("stage 1 from {what} (raw weights, frozen); stage 2 initialised with gain {gain}")))
    }

    fn for_stage(self, _cfg: &RunConfig, stage: Stage) -> Self {
        if stage == Stage::Global { self.freeze_stage1() } else { self }
    }

    fn trained(_cfg: &RunConfig, net: &PrditConfig, stage: Stage) -> usize {
        let c = net.param_counts();
        if stage == Stage::Local { c.stage1 } else { c.stage2_trainable }
    }

    fn predicted_peak(_cfg: &RunConfig, net: &PrditConfig, stage: Stage, batch: usize) -> Option<u64> {
        let p = crate::inspect::report(net, batch).training_peak;
        if stage == Stage::Local { Some(p.stage1) } else { p.stage2 }
    }
}

impl Trainable for PrditSr {
    fn from_run(cfg: &RunConfig) -> Result<SrConfig> {
        cfg.highres_config()
    }

    fn fresh(
        cfg: &RunConfig,
        net: &SrConfig,
        _opts: &TrainOptions,
        device: &Device,
    ) -> Result<(Self, String)> {
        let h = cfg.highres.as_ref().expect("checked by from_run");
        if let Some(init) = &h.init {
            let file = run::model_file(init, true)?;
            let m = load_expecting::<PrditSr>(&file, net, device)?;
            return Ok((m, format!("the whole refinement model from {} (raw weights)", file.display())));
        }
        let source = h.base.as_ref().ok_or_else(|| {
            Error::invalid(
                "highres.base",
                "the lower-resolution model to refine (a stage-2 run or model file) is missing",
            )
        })?;
        let (base, what) = stage2::full_weights(source, &net.base, device)?;
        let m = PrditSr::on_base(net, base, cfg.train.seed, device)?;
        Ok((
            m,
            format!(
                "base {} from {what} (raw weights); refinement initialised from seed {}",
                net.base.name(),
                cfg.train.seed
            ),
        ))
    }

    fn for_stage(self, cfg: &RunConfig, _stage: Stage) -> Self {
        if cfg.highres.as_ref().is_some_and(|h| h.finetune_base) {
            self.finetune_base()
        } else {
            self.freeze_base()
        }
    }

    fn trained(cfg: &RunConfig, net: &SrConfig, _stage: Stage) -> usize {
        let finetune = cfg.highres.as_ref().is_some_and(|h| h.finetune_base);
        // 3b trains the base's transformer, fine head and shared trunk.
        let b = &net.base;
        let trunk = b.hidden_size * b.frequency_size + b.hidden_size;
        net.sr_params() + if finetune { b.param_counts().stage2_trainable + trunk } else { 0 }
    }

    /// Phase 3a only: phase 3b (the base's transformer training too) has not been measured, so
    /// its runs keep the whole batch unless `[train] micro_batch` says otherwise.
    fn predicted_peak(cfg: &RunConfig, net: &SrConfig, _stage: Stage, batch: usize) -> Option<u64> {
        let finetune = cfg.highres.as_ref().is_some_and(|h| h.finetune_base);
        (!finetune).then(|| crate::inspect::refinement_peak(net, batch))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::weights::StateDict;
    use crate::weights::export::state_dict;

    fn max_abs(v: &[f32]) -> f64 {
        v.iter().fold(0f64, |m, x| m.max(x.abs() as f64))
    }

    /// Stage 2 starts as the official trainer's `initialize_weights(gain=0.1)` leaves it:
    /// fc1/fc2 and the blocks at Xavier × 0.1, the patch-embedder skip at Xavier gain 0.1 (not
    /// 0.01), adaLN and outputs zero, the fine head N(0, 0.02²) — and stage 1 as loaded.
    #[test]
    fn stage2_starts_like_the_official_reinitialisation() {
        let device = burn::tensor::Device::flex();
        let cfg = PrditConfig { hidden_size: 96, num_heads: 4, ..PrditConfig::tiny() };
        let stage1 = Prdit::init(&PrditConfig { depth: 0, ..cfg.clone() }, 3, &device).unwrap();
        let host: BTreeMap<_, _> = state_dict(&stage1).unwrap();
        let sd = StateDict::from_host("stage1", host.clone());
        let m = stage2::build_stage2(&cfg, &sd, 5, 0.1, &device).unwrap();
        let w = state_dict(&m).unwrap();
        let (h, d) = (cfg.hidden_size, cfg.token_dim());
        let xavier =
            |gain: f64, fan_in: usize, fan_out: usize| gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
        let check_bound = |key: &str, bound: f64| {
            let m = max_abs(&w[key].data);
            assert!(m <= bound * (1.0 + 1e-6) && m > 0.9 * bound, "{key}: max |w| {m:.5}, bound {bound:.5}");
        };
        check_bound("fine.patch_embedder.fc1.weight", xavier(0.1, d, 4 * h));
        check_bound("fine.patch_embedder.fc2.weight", xavier(0.1, 4 * h, h));
        check_bound("fine.patch_embedder.skip.weight", xavier(0.1, d, h));
        check_bound("fine.blocks.0.attn.qkv.weight", xavier(0.1, h, 3 * h));
        check_bound("fine.blocks.1.mlp.fc2.weight", xavier(0.1, 4 * h, h));
        for key in [
            "fine.blocks.0.adaLN_modulation.1.weight",
            "fine.blocks.1.adaLN_modulation.1.bias",
            "fine.final_layer.adaLN_modulation.1.weight",
            "fine.final_layer.linear.weight",
            "fine.final_layer.linear.bias",
            "fine.patch_embedder.fc1.bias",
        ] {
            assert_eq!(max_abs(&w[key].data), 0.0, "{key} starts at zero");
        }
        let head = &w["t_embedder.fine_head.weight"].data;
        let std = (head.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / head.len() as f64).sqrt();
        assert!((std - 0.02).abs() < 0.002, "fine head std {std}");
        for (key, t) in &host {
            assert_eq!(&w[key], t, "{key}: stage 1 as loaded");
        }
        assert!(m.is_stage1_frozen());
    }
}
