//! Sampling throughput: one predictor–corrector step (network call, update, per-volume noise
//! from the host streams — everything a step of `prdit sample` does), extrapolated to
//! volumes per hour at 1000 steps, and the most device memory held. Settings:
//!
//! - `PRDIT_BENCH_DEVICE` (`cpu`; `cuda`, …), `PRDIT_BENCH_MODEL` (`PRDiT-B/12/4`)
//! - `PRDIT_BENCH_SIZES` edges of the base model (`64`; the paper's 128)
//! - `PRDIT_BENCH_HIGHRES=1` also times the refinement model at twice each size (256³ for 128)
//! - `PRDIT_BENCH_BATCH` (1), `PRDIT_BENCH_ITERS` (3), `PRDIT_BENCH_WARMUP` (1)

use std::time::Instant;

use burn::tensor::Device;
use prdit::PrditConfig;
use prdit::device::{DeviceSpec, select};
use prdit::diffusion::sampler::step;
use prdit::diffusion::{Denoiser, NoiseSource, Sampler};
use prdit::model::Prdit;
use prdit::model::highres::{PrditSr, SrConfig};
use prdit::sample::VolumeNoise;

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn time(device: &Device, name: &str, device_name: &str, model: &impl Denoiser, size: usize, batch: usize) {
    let (iters, warmup): (usize, usize) = (env("PRDIT_BENCH_ITERS", 3), env("PRDIT_BENCH_WARMUP", 1));
    let mut noise = VolumeNoise::new(0, (0..batch as u64).collect());
    let x = noise.draw([batch, 1, size, size, size], device).unwrap();
    let mut peak = 0u64;
    let mut once = || {
        let started = Instant::now();
        let (next, _) = step(model, x.clone(), (999, 998), Sampler::default(), &mut noise).unwrap();
        drop(next);
        device.sync().unwrap();
        if let Some(u) = device.memory_pool_usage() {
            peak = peak.max(u.bytes_reserved);
        }
        started.elapsed().as_secs_f64() * 1e3
    };
    let first = once();
    for _ in 0..warmup {
        once();
    }
    let mut t: Vec<f64> = (0..iters).map(|_| once()).collect();
    t.sort_by(f64::total_cmp);
    let ms = t[t.len() / 2];
    let s_per_volume = ms * 1000.0 / 1e3 / batch as f64;
    println!(
        "{}",
        serde_json::json!({
            "case": format!("sample {name} {size}^3 b{batch}"), "device": device_name, "ms_first": first,
            "ms_per_step": ms, "s_per_volume_1000_steps": s_per_volume, "volumes_per_hour": 3600.0 / s_per_volume,
            "peak_reserved_gib": (peak > 0).then(|| peak as f64 / (1u64 << 30) as f64),
        })
    );
}

fn main() {
    let spec: DeviceSpec = env("PRDIT_BENCH_DEVICE", DeviceSpec::Cpu);
    let selected = select(spec).unwrap_or_else(|e| panic!("{e}"));
    let device = selected.device.clone();
    let batch: usize = env("PRDIT_BENCH_BATCH", 1);
    let name: String = env("PRDIT_BENCH_MODEL", "PRDiT-B/12/4".to_string());
    let sizes: String = env("PRDIT_BENCH_SIZES", "64".to_string());
    let highres = env("PRDIT_BENCH_HIGHRES", 0) == 1;
    for size in sizes.split(',').map(|s| s.trim().parse::<usize>().expect("sizes are numbers")) {
        let cfg = PrditConfig::from_name(&name, size).unwrap_or_else(|e| panic!("{e}"));
        let model = Prdit::init(&cfg, 0, &device).unwrap();
        time(&device, &cfg.name(), &selected.name, &model, size, batch);
        if highres {
            let sr = SrConfig {
                base: cfg.clone(),
                target_size: 2 * size,
                sr_hidden_size: 768,
                sr_patch_size: 12,
                sr_stride: 8,
                sr_padding: 2,
            };
            let m = PrditSr::on_base(&sr, model, 1, &device).unwrap().freeze_base();
            time(&device, &sr.name(), &selected.name, &m, 2 * size, batch);
        }
    }
}
