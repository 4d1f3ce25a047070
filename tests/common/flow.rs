//! PRDiT-FM's flow-matching fixture (`PRDIT_FLOW_DIR`, else `tests/fixtures/flow`) and the parity
//! checks on it, on any device: `tests/flow.rs` runs them on the CPU, `tests/gpu_path.rs` on the
//! GPU path.

use burn::tensor::{Device, Tensor};
use prdit::PrditConfig;
use prdit::diffusion::flow::{self, FlowSolver};
use prdit::diffusion::{Process, VelocityModel};
use prdit::model::Prdit;
use prdit::train::stage2::is_stage1_key;
use prdit::weights::{self, Entry, StateDict};

use super::*;

// Tolerances, relative to the largest reference value, about ten times the largest error
// measured (2-core CPU machine, burn-flex, float32) on the shipped fixture and on one made with
// other arguments (24³, patch 6, stride 4, hidden 48, 2 heads, depth 1, batch 3):
// - the timestep embedder's heads: measured ≤ 1.9e-6 (their own float32 run differs from
//   float64 by 1.6e-5 there: a sinusoid of arguments up to 1000);
pub const HEAD_TOL: f64 = 2e-5;
// - velocities, the reconstruction and the samplers (up to ten network calls): ≤ 4.5e-7;
pub const FORWARD_TOL: f64 = 5e-6;
// - the losses: ≤ 7.8e-8;
pub const LOSS_TOL: f64 = 1e-6;
// - gradients, per tensor: ≤ 3.6e-6 on the shipped fixture, 1.2e-5 on the other (the shared
//   trunk's weight, whose gradient sums over the token grid and the sinusoid's 256 features).
pub const GRAD_TOL: f64 = 1e-4;

pub fn flow_dir() -> std::path::PathBuf {
    fixture_dir("PRDIT_FLOW_DIR", "flow")
}

pub struct FlowMeta {
    pub config: PrditConfig,
    pub batch: usize,
    pub t: Vec<f32>,
    pub euler_steps: usize,
    pub heun_steps: usize,
    pub trainable_stage2: Vec<String>,
}

pub fn read_flow_meta() -> FlowMeta {
    let path = flow_dir().join("flow_meta.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let config: PrditConfig = serde_json::from_value(v["config"].clone()).expect("config fields");
    config.validate().expect("fixture configuration is valid");
    assert_eq!(config.process(), Process::Flow, "a flow fixture has one output channel");
    assert_eq!(v["embed_t_scale"].as_f64(), Some(flow::EMBED_T_SCALE as f64), "fixture uses another t scale");
    let int = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {}", path.display())) as usize;
    FlowMeta {
        config,
        batch: int("batch"),
        t: v["t"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        euler_steps: int("euler_steps"),
        heun_steps: int("heun_steps"),
        trainable_stage2: v["trainable_stage2"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect(),
    }
}

/// The stage-2 model (the fixture's weights) and the stage-1 model (their stage-1 subset at
/// depth 0), both loaded strictly.
pub fn models(meta: &FlowMeta, device: &Device) -> (Prdit, Prdit) {
    let sd = StateDict::open(&flow_dir().join("flow_weights.safetensors"), Entry::Auto).unwrap();
    let stage2 = weights::prdit_from_state_dict(&meta.config, &sd, device).unwrap_or_else(|e| panic!("{e}"));
    let host = sd.keys().filter(|k| is_stage1_key(k)).map(|k| (k.to_string(), sd.read(k).unwrap())).collect();
    let sd1 = StateDict::from_host(sd.path(), host);
    let cfg1 = PrditConfig { depth: 0, ..meta.config.clone() };
    let stage1 = weights::prdit_from_state_dict(&cfg1, &sd1, device).unwrap_or_else(|e| panic!("{e}"));
    (stage1, stage2)
}

pub fn activations() -> std::collections::BTreeMap<String, prdit::weights::HostTensor> {
    read_fixture(flow_dir().join("flow_activations.safetensors"))
}

pub fn path_embedding_and_velocities_match(device: &Device) {
    let meta = read_flow_meta();
    let (stage1, stage2) = models(&meta, device);
    let a = activations();
    assert_eq!(a["x_data"].shape[0], meta.batch);
    assert_eq!(meta.t, a["t"].data, "meta times and the stored t agree");
    assert_eq!(flow::network_times(&meta.t), a["t_model"].data, "the embedder's input, t·1000 in float32");

    let x = tensor::<5>(&a["x_data"], device);
    let z = tensor::<5>(&a["noise"], device);
    assert_close("xt", &host(flow::interpolate(x.clone(), z.clone(), &meta.t)), &a["xt"], 1e-6);
    assert_close("target", &host(x - z), &a["target"], 1e-6);

    let xt = tensor::<5>(&a["xt"], device);
    let trace = stage2.forward_trace(xt.clone(), &flow::network_times(&meta.t));
    assert_close("c_coarse", &host(trace.c_coarse), &a["c_coarse"], HEAD_TOL);
    assert_close("c_fine", &host(trace.c_fine.unwrap()), &a["c_fine"], HEAD_TOL);
    assert_eq!(trace.out.dims()[1], 1, "one velocity channel");
    assert_close("v_stage2", &host(trace.out), &a["v_stage2"], FORWARD_TOL);
    assert_close(
        "v_stage2 (velocity)",
        &host(stage2.velocity(xt.clone(), &meta.t)),
        &a["v_stage2"],
        FORWARD_TOL,
    );
    assert_close("v_stage1", &host(stage1.velocity(xt, &meta.t)), &a["v_stage1"], FORWARD_TOL);
}

pub fn losses_and_gradients_of_both_stages_match(device: &Device) {
    let device = device.clone().autodiff();
    let meta = read_flow_meta();
    let (stage1, stage2) = models(&meta, &device);
    let a = activations();
    let want1 = read_fixture(flow_dir().join("flow_grads_stage1.safetensors"));
    let want2 = read_fixture(flow_dir().join("flow_grads_stage2.safetensors"));
    let mut trainable2 = meta.trainable_stage2.clone();
    trainable2.sort();
    assert_eq!(want2.keys().cloned().collect::<Vec<_>>(), trainable2, "the fixture's stage-2 gradients");
    for (name, model, want, loss_key) in
        [("stage 1", stage1, want1, "loss_stage1"), ("stage 2", stage2.freeze_stage1(), want2, "loss_stage2")]
    {
        let x = tensor::<5>(&a["x_data"], &device);
        let z = tensor::<5>(&a["noise"], &device);
        let terms = prdit::diffusion::process_loss(Process::Flow, &model, x, &meta.t, z);
        let value = host(terms.total.clone())[0] as f64;
        let reference = a[loss_key].data[0] as f64;
        let rel = (value - reference).abs() / reference;
        eprintln!("{name} loss: {value} vs {reference}, relative error {rel:.3e}");
        assert!(rel < LOSS_TOL, "{name} loss {value} vs {reference}");
        let grads = terms.total.backward();
        let got = weights::export::gradients(&model, &grads).unwrap();
        let mut got_keys: Vec<&String> = got.keys().collect();
        got_keys.sort();
        assert_eq!(got_keys, want.keys().collect::<Vec<_>>(), "{name}: which parameters train");
        for (key, w) in &want {
            assert_eq!(&got[key].shape, &w.shape, "{key}");
            assert_close(&format!("{name} {key}"), &got[key].data, w, GRAD_TOL);
        }
    }
}

pub fn validation_reconstruction_matches(device: &Device) {
    let meta = read_flow_meta();
    let (stage1, _) = models(&meta, device);
    let a = activations();
    let (recon, xt) =
        flow::reconstruct(&stage1, tensor(&a["x_data"], device), tensor(&a["noise"], device), flow::VAL_T);
    assert_close("xt at t = 0.5", &host(xt), &a["xt_t05"], 1e-6);
    assert_close("reconstruction at t = 0.5", &host(recon), &a["recon_t05"], FORWARD_TOL);
}

pub fn euler_and_heun_samplers_match(device: &Device) {
    let meta = read_flow_meta();
    let (stage1, stage2) = models(&meta, device);
    let a = activations();
    let start: Tensor<5> = tensor(&a["start_noise"], device);
    let (e, h) = (meta.euler_steps, meta.heun_steps);
    let run = |m: &Prdit, steps, solver| {
        let mut calls = 0;
        let out = flow::sample(m, start.clone(), steps, solver, &mut |done, _| calls = done).unwrap();
        assert_eq!(calls, flow::network_calls(solver, steps));
        host(out)
    };
    assert_close(
        &format!("euler {e}"),
        &run(&stage2, e, FlowSolver::Euler),
        &a[&format!("euler{e}_final")],
        FORWARD_TOL,
    );
    assert_close(
        &format!("heun {h}"),
        &run(&stage2, h, FlowSolver::Heun),
        &a[&format!("heun{h}_final")],
        FORWARD_TOL,
    );
    assert_close(
        &format!("euler {e}, stage 1"),
        &run(&stage1, e, FlowSolver::Euler),
        &a[&format!("euler{e}_stage1_final")],
        FORWARD_TOL,
    );
}
