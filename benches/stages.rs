//! Where the time of a sampling step and of a training step goes: the forward split into its
//! stages (time embedding, patch extraction, each part of the stage-1 MLP, the stage-2 patch
//! embedder, attention and MLP of a block, un-patchify), a few single operations next to the
//! Burn operations they replace, and a training step of each stage split into forward + loss,
//! backward, AdamW and the EMA update. Prints markdown tables (`docs/bench-vs-official.md` holds
//! them). Settings: `PRDIT_BENCH_DEVICE` (cpu), `PRDIT_BENCH_MODEL` (PRDiT-XS/12/4; its /0
//! sibling is the stage-1 case), `PRDIT_BENCH_SIZE` (64), `PRDIT_BENCH_BATCH` (2),
//! `PRDIT_BENCH_ITERS` (5), `PRDIT_BENCH_WARMUP` (1).

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::activation::{gelu_approximate, silu};
use burn::tensor::module::attention;
use burn::tensor::{Distribution, Tensor};
use prdit::bench::{Bench, env_or};
use prdit::config::TrainSection;
use prdit::diffusion::training_loss;
use prdit::model::layers::{gelu_tanh, layer_norm_plain, modulate};
use prdit::model::patch::{extract_patches, unpatchify};
use prdit::train::ema::ema_update;
use prdit::train::optim::{AdamW, AdamWConfig};
use prdit::{Prdit, PrditConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let bench = Bench::from_env(5);
    let device = &bench.device;
    let size: usize = env_or("PRDIT_BENCH_SIZE", 64);
    let batch: usize = env_or("PRDIT_BENCH_BATCH", 2);
    let name: String = env_or("PRDIT_BENCH_MODEL", "PRDiT-XS/12/4".to_string());
    let cfg = PrditConfig::from_name(&name, size).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.depth > 0, "PRDIT_BENCH_MODEL must be a stage-2 model (depth > 0)");
    let (patch, stride, pad) = (cfg.patch_size, cfg.stride, cfg.padding);
    let rows = std::cell::RefCell::new(Vec::<(String, f64)>::new());
    let time = |label: &str, f: &mut dyn FnMut()| {
        let r = bench.time(label.to_string(), batch, f).unwrap_or_else(|e| panic!("{e}"));
        rows.borrow_mut().push((label.to_string(), r.ms_median));
    };
    let table = |title: &str, total: f64| {
        println!("\n#### {title} ({size}³, batch {batch}, {})\n", bench.device_name);
        println!("| part | ms | share of the whole |\n|---|---|---|");
        for (label, ms) in rows.borrow_mut().drain(..) {
            println!("| {label} | {ms:.1} | {:.0} % |", 100.0 * ms / total);
        }
    };

    // The no-grad forward (a sampling step), stage by stage.
    let model = Prdit::init(&cfg, 1, device).unwrap_or_else(|e| panic!("{e}"));
    let x = Tensor::<5>::random([batch, 1, size, size, size], Distribution::Normal(0.0, 0.5), device);
    let t: Vec<f32> = (0..batch).map(|i| 100.0 + 600.0 * i as f32).collect();
    let whole = bench
        .time("whole".into(), batch, || model.forward(x.clone(), &t))
        .unwrap_or_else(|e| panic!("{e}"))
        .ms_median;
    let (cc, cf) = model.t_embedder.forward(&t, device);
    let cf = cf.expect("a stage-2 model has a fine head");
    let p = extract_patches(x.clone(), patch, stride, pad);
    let c = &model.coarse;
    let m = c.ada_ln.forward(silu(cc.clone())).chunk(6, 1);
    let u = modulate(layer_norm_plain(p.clone()), m[0].clone(), m[1].clone());
    let h1 = c.mlp1.forward(u.clone());
    let fine = model.fine.as_ref().expect("depth > 0");
    let e = fine.patch_embedder.forward(p.clone());
    let block = &fine.blocks[0];
    let y = c.forward(p.clone(), cc.clone());
    time("time embedding (both heads)", &mut || drop(model.t_embedder.forward(&t, device)));
    time("patch extraction (reflect pad, unfold)", &mut || {
        drop(extract_patches(x.clone(), patch, stride, pad))
    });
    time("stage 1: adaLN (6 vectors)", &mut || drop(c.ada_ln.forward(silu(cc.clone())).chunk(6, 1)));
    time("stage 1: LayerNorm + modulation", &mut || {
        drop(modulate(layer_norm_plain(p.clone()), m[0].clone(), m[1].clone()))
    });
    time("stage 1: one SwiGLU (3 matmuls D×D)", &mut || drop(c.mlp1.forward(u.clone())));
    time("stage 1: output head (D → 1024)", &mut || drop(c.linear_final.forward(h1.clone())));
    time("stage 1: whole", &mut || drop(c.forward(p.clone(), cc.clone())));
    time("stage 2: patch embedder", &mut || drop(fine.patch_embedder.forward(p.clone())));
    time("stage 2: one block's attention", &mut || drop(block.attn.forward(e.clone())));
    time("stage 2: one block", &mut || drop(block.forward(e.clone(), cf.clone())));
    time("stage 2: whole", &mut || drop(fine.forward(p.clone(), cf.clone())));
    time("un-patchify", &mut || drop(unpatchify(y.clone(), cfg.grid(), stride, cfg.out_channels)));
    rows.borrow_mut().push(("whole forward".into(), whole));
    table(&format!("The forward of {} (one sampling step), by stage", cfg.name()), whole);

    // Single operations at the sizes the forward has (shares against the whole forward).
    let wide =
        Tensor::<3>::random([batch, cfg.num_tokens(), 4 * cfg.hidden_size], Distribution::Default, device);
    let heads = cfg.num_heads;
    let q = Tensor::<4>::random(
        [batch, heads, cfg.num_tokens(), cfg.hidden_size / heads],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let g = c.mlp1.fc1_g.forward(u.clone());
    time("GELU (tanh), Burn's gelu_approximate, [b, N, 4H]", &mut || drop(gelu_approximate(wide.clone())));
    time("GELU (tanh), prdit's gelu_tanh, [b, N, 4H]", &mut || drop(gelu_tanh(wide.clone())));
    time("SiLU [b, N, D]", &mut || drop(silu(g.clone())));
    time("product [b, N, D]", &mut || drop(g.clone() * g.clone()));
    time("matmul [b·N, D] × [D, D]", &mut || drop(c.mlp1.fc1_g.forward(u.clone())));
    time("attention op [b, h, N, H/h]", &mut || {
        drop(attention(q.clone(), q.clone(), q.clone(), None, None, Default::default()))
    });
    table(&format!("Single operations at {}'s sizes (share: of its forward)", cfg.name()), whole);
    drop((model, p, u, h1, e, y, g, wide, q));

    // A training step of each stage, split.
    let ad = device.clone().autodiff();
    for stage_cfg in [PrditConfig { depth: 0, ..cfg.clone() }, cfg.clone()] {
        let mut model = Prdit::init(&stage_cfg, 1, &ad).unwrap_or_else(|e| panic!("{e}"));
        if stage_cfg.depth > 0 {
            model = model.freeze_stage1();
        }
        let mut ema = model.valid();
        // The `[train]` defaults: the official recipe's optimizer and EMA.
        let recipe = TrainSection::default();
        let mut optim = AdamW::new(AdamWConfig::from_train(&recipe));
        let x0 = Tensor::<5>::random([batch, 1, size, size, size], Distribution::Uniform(-1.0, 1.0), &ad);
        let noise = Tensor::<5>::random([batch, 1, size, size, size], Distribution::Normal(0.0, 0.5), &ad);
        let ts: Vec<usize> = (0..batch).map(|i| 100 + 600 * i).collect();
        let mut parts: [Vec<f64>; 5] = Default::default();
        let warmup = env_or("PRDIT_BENCH_WARMUP", 1);
        for it in 0..warmup + env_or("PRDIT_BENCH_ITERS", 5) {
            let lap = Instant::now();
            let mut at = Vec::with_capacity(4);
            let loss = training_loss(&model, x0.clone(), &ts, noise.clone());
            let _: f32 = loss.total.clone().into_scalar();
            at.push(lap.elapsed());
            let mut grads = GradientsParams::from_grads(loss.total.backward(), &model);
            ad.sync().expect("device sync");
            at.push(lap.elapsed());
            model = optim.step(model, &mut grads, 1e-4, None);
            ad.sync().expect("device sync");
            at.push(lap.elapsed());
            ema = ema_update(ema, &model, recipe.ema_decay);
            device.sync().expect("device sync");
            at.push(lap.elapsed());
            if it >= warmup {
                let ms: Vec<f64> = at.iter().map(|d| d.as_secs_f64() * 1e3).collect();
                for (k, v) in
                    [ms[0], ms[1] - ms[0], ms[2] - ms[1], ms[3] - ms[2], ms[3]].into_iter().enumerate()
                {
                    parts[k].push(v);
                }
            }
        }
        let [fwd, bwd, adamw, ema_ms, total] = parts.map(median);
        let frozen = if stage_cfg.depth > 0 { " (stage 1 frozen)" } else { "" };
        for (label, ms) in [
            (format!("forward + loss{frozen}"), fwd),
            ("backward".to_string(), bwd),
            (format!("AdamW ({} parameter tensors)", optim.len()), adamw),
            ("EMA update".to_string(), ema_ms),
            ("whole step".to_string(), total),
        ] {
            rows.borrow_mut().push((label, ms));
        }
        let title = format!("A training step of {} (medians of parts; no clipping)", stage_cfg.name());
        table(&title, total);
    }
}
