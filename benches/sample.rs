//! Sampling throughput: one predictor–corrector step (network call, update, per-volume host
//! noise) extrapolated to 1000 steps, and the no-grad forward alone, via `prdit::bench`.
//! Settings: `PRDIT_BENCH_DEVICE` (cpu), `PRDIT_BENCH_MODEL` (PRDiT-B/12/4), `PRDIT_BENCH_SIZES`
//! (64; the paper's 128), `PRDIT_BENCH_HIGHRES=1` to time the refinement at twice each size
//! (256³ for 128), `PRDIT_BENCH_BATCH` (1), `PRDIT_BENCH_ITERS` (3), `PRDIT_BENCH_WARMUP` (1).

use prdit::PrditConfig;
use prdit::bench::{Bench, CaseResult, env_or, seconds_per_volume_1000};
use prdit::model::Prdit;
use prdit::model::highres::{PrditSr, SrConfig};

fn print(r: &prdit::Result<CaseResult>) {
    let r = r.as_ref().unwrap_or_else(|e| panic!("{e}"));
    let mut v = serde_json::to_value(r).expect("serialises");
    v["s_per_volume_1000_steps"] = seconds_per_volume_1000(r).into();
    v["volumes_per_hour_1000_steps"] = (3600.0 / seconds_per_volume_1000(r)).into();
    println!("{v}");
}

fn main() {
    let bench = Bench::from_env(3);
    let device = &bench.device;
    let batch: usize = env_or("PRDIT_BENCH_BATCH", 1);
    let name: String = env_or("PRDIT_BENCH_MODEL", "PRDiT-B/12/4".to_string());
    let highres = env_or("PRDIT_BENCH_HIGHRES", 0) == 1;
    for size in env_or("PRDIT_BENCH_SIZES", "64".to_string())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes are numbers"))
    {
        let cfg = PrditConfig::from_name(&name, size).unwrap_or_else(|e| panic!("{e}"));
        let model = Prdit::init(&cfg, 0, device).unwrap();
        print(&bench.forward(&model, &cfg.name(), size, batch));
        print(&bench.sample_step(&model, &cfg.name(), size, batch));
        if highres {
            let sr = SrConfig {
                base: cfg.clone(),
                target_size: 2 * size,
                sr_hidden_size: 768,
                sr_patch_size: 12,
                sr_stride: 8,
                sr_padding: 2,
            };
            let m = PrditSr::on_base(&sr, model, 1, device).unwrap().freeze_base();
            print(&bench.sample_step(&m, &sr.name(), 2 * size, batch));
        }
    }
}
