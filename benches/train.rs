//! Benchmark of one training step (loss, backward, global-norm clipping, AdamW, EMA) of
//! stage 1 and stage 2 — the hot path of `train-local` / `train-global`. Settings from the
//! environment:
//!
//! - `PRDIT_BENCH_DEVICE` (`cpu`; `cuda`, `cuda:N`, `wgpu`, `auto`)
//! - `PRDIT_BENCH_SIZES` volume edges, comma-separated (`64`; the paper's is 128)
//! - `PRDIT_BENCH_BATCH` (2; the official benchmark uses 16), `PRDIT_BENCH_MODEL` (`PRDiT-B/12/4`)
//! - `PRDIT_BENCH_ITERS` timed steps (3, median reported), `PRDIT_BENCH_WARMUP` (1)
//!
//! Output: one JSON line per case with ms/step, volumes/s and the most device memory the
//! allocator held (where the backend reports it), for comparison with
//! `../shared/bench/pytorch_official_h100.json` (`train PRDiT-B/12/0 128^3 b16`, …).

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use prdit::PrditConfig;
use prdit::device::{DeviceSpec, select};
use prdit::model::Prdit;
use prdit::train::optim::{AdamW, AdamWConfig};
use prdit::train::step::{StepOutcome, Trainer};

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let spec: DeviceSpec = env("PRDIT_BENCH_DEVICE", DeviceSpec::Cpu);
    let selected = select(spec).unwrap_or_else(|e| panic!("{e}"));
    let base = selected.device.clone();
    let ad = base.clone().autodiff();
    let batch: usize = env("PRDIT_BENCH_BATCH", 2);
    let iters: usize = env("PRDIT_BENCH_ITERS", 3);
    let warmup: usize = env("PRDIT_BENCH_WARMUP", 1);
    let name: String = env("PRDIT_BENCH_MODEL", "PRDiT-B/12/4".to_string());
    let sizes: String = env("PRDIT_BENCH_SIZES", "64".to_string());
    let adam = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    for size in sizes.split(',').map(|s| s.trim().parse::<usize>().expect("sizes are numbers")) {
        let stage2 = PrditConfig::from_name(&name, size).unwrap_or_else(|e| panic!("{e}"));
        let stage1 = PrditConfig { depth: 0, ..stage2.clone() };
        for (stage, cfg) in [(1, stage1), (2, stage2.clone())] {
            let model = if stage == 1 {
                Prdit::init(&cfg, 0, &ad).unwrap()
            } else {
                Prdit::init_with_gain(&cfg, 0, 0.1, &ad).unwrap().freeze_stage1()
            };
            let mut trainer = Trainer {
                ema: model.valid(),
                model,
                optim: AdamW::new(adam),
                micro_batch: batch,
                grad_clip: 1.0,
                ema_decay: 0.9999,
            };
            let shape = [batch, 1, size, size, size];
            let x0 = Tensor::<5>::random(shape, Distribution::Uniform(-1.0, 1.0), &ad);
            let noise = Tensor::<5>::random(shape, Distribution::Normal(0.0, 0.5), &ad);
            let t: Vec<usize> = (0..batch).map(|i| (137 + 311 * i) % 1000).collect();
            let mut peak = 0u64;
            let mut run = |trainer: &mut Trainer<Prdit>| {
                let started = Instant::now();
                let out = trainer.step(x0.clone(), &t, noise.clone(), 1e-4);
                base.sync().expect("device sync");
                if let Some(u) = base.memory_pool_usage() {
                    peak = peak.max(u.bytes_reserved);
                }
                assert!(matches!(out, StepOutcome::Done { .. }), "the benchmark step was skipped");
                started.elapsed().as_secs_f64() * 1e3
            };
            let first = run(&mut trainer);
            for _ in 0..warmup {
                run(&mut trainer);
            }
            let mut times: Vec<f64> = (0..iters).map(|_| run(&mut trainer)).collect();
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let line = serde_json::json!({
                "case": format!("train {} {size}^3 b{batch}", cfg.name()),
                "device": selected.name, "stage": stage, "ms_first": first, "ms_per_step": median,
                "volumes_per_s": batch as f64 / (median / 1e3),
                "peak_reserved_gib": if peak > 0 { Some(peak as f64 / (1u64 << 30) as f64) } else { None },
                "trainable_params": if stage == 1 { cfg.param_counts().stage1 } else { cfg.param_counts().stage2_trainable },
            });
            println!("{line}");
        }
    }
}
