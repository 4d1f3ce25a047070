//! One training step of stage 1 and stage 2 (loss, backward, clipping, AdamW, EMA) — the
//! hot path of `train-local` / `train-global` — via `prdit::bench` (as `prdit bench --what
//! train`). Settings: `PRDIT_BENCH_DEVICE` (cpu), `PRDIT_BENCH_MODEL` (PRDiT-B/12/4),
//! `PRDIT_BENCH_SIZES` (64; the paper's is 128), `PRDIT_BENCH_BATCH` (2; the official 16),
//! `PRDIT_BENCH_ITERS` (3), `PRDIT_BENCH_WARMUP` (1). One JSON line per case, with the ratio to
//! the official H100 time where the case exists there.

use prdit::PrditConfig;
use prdit::bench::{Bench, env_or};

fn main() {
    let bench = Bench::from_env(3);
    let batch: usize = env_or("PRDIT_BENCH_BATCH", 2);
    let name: String = env_or("PRDIT_BENCH_MODEL", "PRDiT-B/12/4".to_string());
    for size in env_or("PRDIT_BENCH_SIZES", "64".to_string())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes are numbers"))
    {
        let stage2 = PrditConfig::from_name(&name, size).unwrap_or_else(|e| panic!("{e}"));
        for cfg in [PrditConfig { depth: 0, ..stage2.clone() }, stage2] {
            let r = bench.train(&cfg, batch, batch).unwrap_or_else(|e| panic!("{e}"));
            println!("{}", serde_json::to_string(&r).expect("serialises"));
        }
    }
}
