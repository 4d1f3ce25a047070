//! The pieces of a sampling step: patch extraction, the stage-1 and stage-2 forward, one DiT
//! block. Settings: `PRDIT_BENCH_DEVICE` (cpu), `PRDIT_BENCH_SIZE` (64), `PRDIT_BENCH_BATCH` (1),
//! `PRDIT_BENCH_MODEL` (PRDiT-B/12/4; its /0 sibling is the stage-1 case), `PRDIT_BENCH_ITERS`
//! (5), `PRDIT_BENCH_WARMUP` (1). One JSON line per case (the ratio to the official H100 time
//! where the case exists there, e.g. `fwd PRDiT-B/12/4 128^3 b8`).

use burn::tensor::{Distribution, Tensor};
use prdit::bench::{Bench, env_or};
use prdit::model::patch::extract_patches;
use prdit::{Prdit, PrditConfig};

fn main() {
    let bench = Bench::from_env(5);
    let device = &bench.device;
    let size: usize = env_or("PRDIT_BENCH_SIZE", 64);
    let batch: usize = env_or("PRDIT_BENCH_BATCH", 1);
    let name: String = env_or("PRDIT_BENCH_MODEL", "PRDiT-B/12/4".to_string());
    let cfg = PrditConfig::from_name(&name, size).unwrap_or_else(|e| panic!("{e}"));
    let stage1 = PrditConfig { depth: 0, ..cfg.clone() };
    let print = |r: prdit::Result<prdit::bench::CaseResult>| {
        let r = r.unwrap_or_else(|e| panic!("{e}"));
        println!("{}", serde_json::to_string(&r).expect("serialises"))
    };

    let x = Tensor::<5>::random([batch, 1, size, size, size], Distribution::Normal(0.0, 0.5), device);
    let case = format!("extract-patches {size}^3 b{batch}");
    print(bench.time(case, batch, || extract_patches(x.clone(), cfg.patch_size, cfg.stride, cfg.padding)));
    let m1 = Prdit::init(&stage1, 0, device).unwrap();
    print(bench.forward(&m1, &stage1.name(), size, batch));
    drop(m1);
    let m2 = Prdit::init(&cfg, 0, device).unwrap();
    print(bench.forward(&m2, &cfg.name(), size, batch));
    let t = vec![500.0f32; batch];
    if let (Some(fine), (_, Some(c))) = (&m2.fine, m2.t_embedder.forward(&t, device)) {
        let h = Tensor::<3>::random(
            [batch, cfg.num_tokens(), cfg.hidden_size],
            Distribution::Normal(0.0, 1.0),
            device,
        );
        let case = format!("dit-block {} {size}^3 b{batch}", cfg.name());
        print(bench.time(case, batch, || fine.blocks[0].forward(h.clone(), c.clone())));
    }
}
