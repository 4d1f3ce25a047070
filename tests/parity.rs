//! Parity with the official PyTorch implementation (`tests/fixtures/parity`, or the
//! folder in `PRDIT_PARITY_DIR`; `PRDIT_EXTRA_DIR` for the sampler fixture). The model is
//! built from the fixture's `parity_meta.json`, so any fixture of that format runs through
//! these tests unchanged. Runs on the CPU backend (f32).

mod common;

use burn::tensor::Device;
use common::checks::{self, model};
use common::*;
use prdit::weights::{self, Entry};

#[test]
fn forward_activations_match() {
    checks::forward_activations_match(&Device::flex());
}

#[test]
fn loss_and_stage2_gradients_match() {
    checks::loss_and_stage2_gradients_match(&Device::flex());
}

#[test]
fn deterministic_sampler_matches() {
    checks::deterministic_sampler_matches(&Device::flex());
}

#[test]
fn predictor_corrector_sampler_matches_with_injected_noise() {
    checks::predictor_corrector_sampler_matches_with_injected_noise(&Device::flex());
}

#[test]
fn five_official_stage2_optimizer_steps_match() {
    checks::five_official_stage2_optimizer_steps_match(&Device::flex());
}

#[test]
fn pytorch_zip_file_loads_the_same_weights() {
    let device = Device::flex();
    let meta = read_meta();
    let from_st = weights::export::state_dict(&model(&device).0).unwrap();
    let pt = parity_dir().join("parity_state_dict.pt");
    assert_eq!(weights::detect(&pt).unwrap(), weights::FileKind::TorchZip);
    let m = weights::load_official(&pt, Entry::Auto, &meta.config, &device).unwrap_or_else(|e| panic!("{e}"));
    let from_pt = weights::export::state_dict(&m).unwrap();
    assert_eq!(from_st.len(), meta_param_count(&meta));
    assert_eq!(from_st, from_pt);
}

fn meta_param_count(meta: &Meta) -> usize {
    37 + 10 * meta.config.depth - if meta.config.depth == 0 { 13 } else { 0 }
}

#[test]
fn resampling_matches_pytorch_interpolate() {
    use prdit::model::resample::{nearest, trilinear};
    let e = read_fixture(extra_dir().join("extra_reference.safetensors"));
    let device = Device::flex();
    // Output sizes come from the fixture's own shapes.
    let size = |key: &str| -> [usize; 3] {
        let shape = &e[key].shape;
        std::array::from_fn(|i| shape[shape.len() - 3 + i])
    };
    // Trilinear to an arbitrary size.
    let out = trilinear(tensor(&e["tri_a_in"], &device), size("tri_a_out_10x12x14"));
    assert_close("trilinear 5x6x7 -> 10x12x14", &host(out), &e["tri_a_out_10x12x14"], 1e-6);
    // Trilinear x2 and the input gradient of sum(out * weight).
    let ad = device.clone().autodiff();
    let x = tensor::<5>(&e["tri_b_in"], &ad).require_grad();
    let out = trilinear(x.clone(), size("tri_b_out_x2"));
    assert_close("trilinear x2", &host(out.clone()), &e["tri_b_out_x2"], 1e-6);
    let grads = (out * tensor::<5>(&e["tri_b_weight"], &ad)).sum().backward();
    assert_close("trilinear x2 input gradient", &host(x.grad(&grads).unwrap()), &e["tri_b_grad"], 1e-6);
    // Nearest x2 up and x0.5 down (even indices).
    let up = nearest(tensor(&e["tri_b_in"], &device), size("nearest_b_up_x2"));
    assert_close("nearest x2", &host(up), &e["nearest_b_up_x2"], 0.0);
    let down = nearest(tensor(&e["nearest_c_in"], &device), size("nearest_c_down_half"));
    assert_close("nearest x0.5", &host(down), &e["nearest_c_down_half"], 0.0);
}
