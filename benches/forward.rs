//! Benchmarks of the hot paths of sampling: patch extraction, the stage-1 and stage-2
//! forward, one DiT block, and one predictor–corrector step. Every timed iteration ends with
//! a device sync. Settings from the environment:
//!
//! - `PRDIT_BENCH_DEVICE` (`cpu`; `cuda`, `cuda:N`, `wgpu`, `auto`)
//! - `PRDIT_BENCH_SIZE` volume edge (64), `PRDIT_BENCH_BATCH` (1)
//! - `PRDIT_BENCH_MODEL` stage-2 model (`PRDiT-B/12/4`; its `/0` sibling is the stage-1 case)
//! - `PRDIT_BENCH_ITERS` timed iterations (5, median reported), `PRDIT_BENCH_WARMUP` (1)
//!
//! Output: one JSON line per case (`cargo bench --bench forward`).

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use prdit::device::{DeviceSpec, select};
use prdit::diffusion::{self, NOISE_STD, Sampler, SeededNoise};
use prdit::model::patch::extract_patches;
use prdit::{Prdit, PrditConfig};

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Bench {
    device: Device,
    device_name: String,
    iters: usize,
    warmup: usize,
}

impl Bench {
    fn run<R>(&self, name: &str, extra: serde_json::Value, mut f: impl FnMut() -> R) {
        let sync = || self.device.sync().expect("device sync");
        let t = Instant::now();
        let r = f();
        sync();
        drop(r);
        let first_ms = t.elapsed().as_secs_f64() * 1e3;
        for _ in 0..self.warmup {
            drop(f());
            sync();
        }
        let mut times: Vec<f64> = (0..self.iters)
            .map(|_| {
                let t = Instant::now();
                let r = f();
                sync();
                drop(r);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let mut line = serde_json::json!({
            "case": name,
            "device": self.device_name,
            "ms_first": first_ms,
            "ms_median": median,
            "ms_min": times[0],
            "iters": self.iters,
        });
        if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
            l.extend(e.clone());
        }
        println!("{line}");
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is parsed.
    let spec: DeviceSpec = env("PRDIT_BENCH_DEVICE", DeviceSpec::Cpu);
    let selected = select(spec).unwrap_or_else(|e| panic!("{e}"));
    let size: usize = env("PRDIT_BENCH_SIZE", 64);
    let batch: usize = env("PRDIT_BENCH_BATCH", 1);
    let name: String = env("PRDIT_BENCH_MODEL", "PRDiT-B/12/4".to_string());
    let bench = Bench {
        device: selected.device.clone(),
        device_name: selected.name.clone(),
        iters: env("PRDIT_BENCH_ITERS", 5),
        warmup: env("PRDIT_BENCH_WARMUP", 1),
    };
    let device = &bench.device;
    let cfg = PrditConfig::from_name(&name, size).unwrap_or_else(|e| panic!("{e}"));
    let stage1 = PrditConfig { depth: 0, ..cfg.clone() };
    let info = |c: &PrditConfig| serde_json::json!({"model": c.name(), "size": size, "batch": batch});

    let x = Tensor::<5>::random([batch, 1, size, size, size], Distribution::Normal(0.0, 0.5), device);
    let t = vec![500.0f32; batch];

    bench.run("extract_patches", info(&cfg), || {
        extract_patches(x.clone(), cfg.patch_size, cfg.stride, cfg.padding)
    });

    let m1 = Prdit::init(&stage1, 0, device).unwrap();
    bench.run("forward_stage1", info(&stage1), || m1.forward(x.clone(), &t));
    drop(m1);

    let m2 = Prdit::init(&cfg, 0, device).unwrap();
    bench.run("forward_stage2", info(&cfg), || m2.forward(x.clone(), &t));

    if let (Some(fine), (_, Some(c))) = (&m2.fine, m2.t_embedder.forward(&t, device)) {
        let h = Tensor::<3>::random(
            [batch, cfg.num_tokens(), cfg.hidden_size],
            Distribution::Normal(0.0, 1.0),
            device,
        );
        bench.run("dit_block", info(&cfg), || fine.blocks[0].forward(h.clone(), c.clone()));
    }

    let mut noise = SeededNoise::new(0, NOISE_STD);
    // One network call plus the predictor–corrector update and its noise draw (t = 999 → 998).
    bench.run("pc_sampler_step", info(&cfg), || {
        diffusion::sampler::step(&m2, x.clone(), (999, 998), Sampler::default(), &mut noise).expect("step")
    });
}
