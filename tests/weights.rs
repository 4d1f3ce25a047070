//! Weight files: strict loading of official state dicts (every problem named), entry
//! selection, the legacy pickle layout, and exact round trips of prdit's own model files.

mod common;

use std::collections::BTreeMap;

use burn::tensor::Device;
use common::*;
use prdit::weights::{self, Entry, HostTensor, StateDict, checkpoint};
use prdit::{Prdit, PrditConfig};

fn fixture_tensors() -> BTreeMap<String, HostTensor> {
    read_fixture(parity_dir().join("parity_weights.safetensors"))
}

fn load_err(cfg: &PrditConfig, tensors: BTreeMap<String, HostTensor>) -> String {
    let sd = StateDict::from_host("test.safetensors", tensors);
    match weights::prdit_from_state_dict(cfg, &sd, &Device::flex()) {
        Ok(_) => panic!("the load should have failed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_unexpected_and_misshaped_keys_are_named() {
    let cfg = read_meta().config;
    let mut t = fixture_tensors();
    t.remove("fine.blocks.1.attn.qkv.bias").unwrap();
    let e = load_err(&cfg, t);
    assert!(e.contains("missing key `fine.blocks.1.attn.qkv.bias`"), "{e}");

    let mut t = fixture_tensors();
    t.insert("fine.blocks.9.attn.qkv.bias".into(), HostTensor { shape: vec![3], data: vec![0.0; 3] });
    let e = load_err(&cfg, t);
    assert!(e.contains("unexpected key `fine.blocks.9.attn.qkv.bias`"), "{e}");

    let mut t = fixture_tensors();
    let w = t.get_mut("coarse.mlp_denoise.linear_final.weight").unwrap();
    w.shape.reverse();
    let e = load_err(&cfg, t);
    assert!(e.contains("key `coarse.mlp_denoise.linear_final.weight` has shape"), "{e}");
    assert!(e.contains("nothing was loaded"), "{e}");
}

#[test]
fn weights_of_another_configuration_are_refused_with_a_description() {
    let mut cfg = read_meta().config;
    let depth = cfg.depth;
    assert!(depth >= 1, "the parity fixture is a stage-2 network");
    cfg.depth = depth - 1;
    let e = load_err(&cfg, fixture_tensors());
    // One block fewer: the file's last block (or, asking for stage 1, its whole fine branch) is
    // unexpected.
    let extra = if depth == 1 { "fine.".to_string() } else { format!("fine.blocks.{}.", depth - 1) };
    assert!(e.contains(&format!("unexpected key `{extra}")), "{e}");
    assert!(e.contains(&format!("depth {depth}")), "the error describes the file's network: {e}");
}

#[test]
fn full_checkpoint_entries_are_selected() {
    // A converted full checkpoint: `model.*`, `ema.*` and optimizer state side by side.
    let t = fixture_tensors();
    let mut full = BTreeMap::new();
    for (k, v) in &t {
        full.insert(format!("model.{k}"), v.clone());
        let half = HostTensor { shape: v.shape.clone(), data: v.data.iter().map(|x| x * 0.5).collect() };
        full.insert(format!("ema.module.{k}"), half);
    }
    full.insert("optimizer.state.0.exp_avg".into(), HostTensor { shape: vec![2], data: vec![1.0, 2.0] });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.safetensors");
    write_safetensors(&path, &full);

    let cfg = read_meta().config;
    let device = Device::flex();
    let key = "t_embedder.mlp.0.bias";
    for (entry, scale) in [(Entry::Auto, 0.5), (Entry::Ema, 0.5), (Entry::Model, 1.0)] {
        let sd = StateDict::open(&path, entry).unwrap();
        assert_eq!(sd.len(), t.len(), "{entry:?}: only the chosen entry, `module.` stripped");
        let m = weights::prdit_from_state_dict(&cfg, &sd, &device).unwrap();
        let got = &weights::export::state_dict(&m).unwrap()[key];
        let want: Vec<f32> = t[key].data.iter().map(|x| x * scale).collect();
        assert_eq!(got.data, want, "{entry:?}");
    }
    // A plain state dict has no entries to choose from.
    let plain = dir.path().join("plain.safetensors");
    write_safetensors(&plain, &t);
    let e = StateDict::open(&plain, Entry::Ema).err().unwrap().to_string();
    assert!(e.contains("plain state dict"), "{e}");
}

fn write_safetensors(path: &std::path::Path, tensors: &BTreeMap<String, HostTensor>) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.data.iter().flat_map(|x| x.to_le_bytes()).collect(), v.shape.clone()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, b, s)| {
            (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn legacy_and_zip_pytorch_layouts_read_the_same() {
    // MedicalNet release layout: {'state_dict': {'module.…'}}, once as zip, once legacy.
    let dir = med3d_dir();
    let zip = dir.join("medicalnet_layout_stem.pth");
    let legacy = dir.join("medicalnet_layout_stem_legacy.pth");
    assert_eq!(weights::detect(&zip).unwrap(), weights::FileKind::TorchZip);
    assert_eq!(weights::detect(&legacy).unwrap(), weights::FileKind::TorchLegacy);
    let a = StateDict::open(&zip, Entry::Auto).unwrap();
    let b = StateDict::open(&legacy, Entry::Auto).unwrap();
    assert_eq!(a.entry(), Some("state_dict"));
    assert!(!a.is_empty());
    let keys: Vec<&str> = a.keys().collect();
    assert_eq!(keys, b.keys().collect::<Vec<_>>());
    assert!(keys.iter().all(|k| !k.starts_with("module.")), "{keys:?}");
    for k in keys {
        assert_eq!(a.shape(k), b.shape(k), "{k}");
        if k.ends_with("num_batches_tracked") {
            // An integer counter, not a float parameter: reading it as one is refused by name.
            let e = a.read(k).err().unwrap().to_string();
            assert!(e.contains(k) && e.contains("expected floating point"), "{e}");
        } else {
            assert_eq!(a.read(k).unwrap(), b.read(k).unwrap(), "{k}");
        }
    }
}

#[test]
fn unreadable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("weights.pt");
    std::fs::write(&junk, b"this is not a checkpoint").unwrap();
    let e = StateDict::open(&junk, Entry::Auto).err().unwrap().to_string();
    assert!(e.contains("weights.pt") && e.contains("unrecognised"), "{e}");

    // A zip checkpoint cut in half.
    let pt = std::fs::read(parity_dir().join("parity_state_dict.pt")).unwrap();
    let cut = dir.path().join("cut.pt");
    std::fs::write(&cut, &pt[..pt.len() / 2]).unwrap();
    let e = StateDict::open(&cut, Entry::Auto).err().unwrap().to_string();
    assert!(e.contains("cut.pt"), "{e}");

    let missing = dir.path().join("nope.safetensors");
    let e = StateDict::open(&missing, Entry::Auto).err().unwrap().to_string();
    assert!(e.contains("nope.safetensors"), "{e}");
}

#[test]
fn model_files_round_trip_exactly() {
    let device = Device::flex();
    let cfg = read_meta().config;
    let sd = StateDict::open(&parity_dir().join("parity_weights.safetensors"), Entry::Auto).unwrap();
    let model = weights::prdit_from_state_dict(&cfg, &sd, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bpk");
    checkpoint::save_model(&model, &path).unwrap();
    assert_eq!(weights::detect(&path).unwrap(), weights::FileKind::Burnpack);
    assert_eq!(checkpoint::read_config::<Prdit>(&path).unwrap(), cfg);

    let loaded = checkpoint::load::<Prdit>(&path, &device).unwrap();
    assert_eq!(weights::export::state_dict(&loaded).unwrap(), weights::export::state_dict(&model).unwrap());
    let s = cfg.input_size;
    let x = burn::tensor::Tensor::<5>::random([1, 1, s, s, s], burn::tensor::Distribution::Default, &device);
    let a = host(model.forward(x.clone(), &[500.0]));
    let b = host(loaded.forward(x, &[500.0]));
    assert_eq!(a, b, "outputs are bit-identical");

    // A volume of another size is an error naming both shapes, not a panic inside Burn.
    let wrong = burn::tensor::Tensor::<5>::zeros([1, 1, s + 8, s + 8, s + 8], &device);
    let e = model.try_forward(wrong, &[500.0]).unwrap_err().to_string();
    assert!(e.contains(&format!("[batch, 1, {s}, {s}, {s}]")) && e.contains(&format!("{}", s + 8)), "{e}");

    // Asking for another configuration names the difference.
    let mut other = cfg.clone();
    other.depth = cfg.depth + 1;
    let e = checkpoint::load_expecting::<Prdit>(&path, &other, &device).err().unwrap().to_string();
    assert!(e.contains(&format!("depth: {} in the file, {} asked", cfg.depth, cfg.depth + 1)), "{e}");

    // A truncated model file is refused with its name.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.bpk");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let e = checkpoint::load::<Prdit>(&cut, &device).err().unwrap().to_string();
    assert!(e.contains("cut.bpk"), "{e}");
}

#[test]
fn seeded_initialisation_is_reproducible() {
    let device = Device::flex();
    let cfg = read_meta().config;
    let a = weights::export::state_dict(&Prdit::init(&cfg, 3, &device).unwrap()).unwrap();
    let b = weights::export::state_dict(&Prdit::init(&cfg, 3, &device).unwrap()).unwrap();
    let c = weights::export::state_dict(&Prdit::init(&cfg, 4, &device).unwrap()).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Zero-initialised layers (spec §4.5) and Xavier bounds.
    assert!(a["coarse.mlp_denoise.adaLN_modulation.1.weight"].data.iter().all(|v| *v == 0.0));
    assert!(a["fine.final_layer.linear.weight"].data.iter().all(|v| *v == 0.0));
    let w = &a["fine.blocks.0.attn.qkv.weight"];
    let bound = (6.0 / (w.shape[0] + w.shape[1]) as f64).sqrt() as f32;
    assert!(w.data.iter().all(|v| v.abs() <= bound) && w.data.iter().any(|v| v.abs() > 0.9 * bound));
    let g = weights::export::state_dict(&Prdit::init_with_gain(&cfg, 3, 0.1, &device).unwrap()).unwrap();
    let w01 = &g["fine.blocks.0.attn.qkv.weight"];
    assert!(w01.data.iter().all(|v| v.abs() <= 0.1 * bound + 1e-7));
}
