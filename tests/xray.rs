//! Parity of the sparse-view X-ray task with TF-PRDiT (`tests/fixtures/xray`, or
//! `PRDIT_XRAY_DIR`, made by `scripts/make-xray-fixture.py` from their `get_xrays_from_ct` on
//! DiffDRR 0.6.1 and their `XrayGuidedIaNDiffusion`): the rays DiffDRR traced, the DRRs of a
//! random volume and the adjoint (their autograd gradient) for each view count of the fixture,
//! then their guided sampler with injected noise on the parity network. Sizes, view counts and
//! the guided settings come from the fixture's `xray_meta.json`; the checks themselves are in
//! `tests/common/checks.rs`, shared with the GPU path (`tests/gpu_path.rs`).

mod common;

use burn::tensor::Device;

#[test]
fn projector_matches_diffdrr() {
    common::checks::xray_projector_matches_diffdrr(&Device::flex());
}

#[test]
fn guided_xray_sampler_matches_tf_prdit() {
    common::checks::guided_xray_sampler_matches_tf_prdit(&Device::flex());
}
