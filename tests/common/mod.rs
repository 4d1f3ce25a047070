//! Fixture access shared by the integration tests.
#![allow(dead_code)]

pub mod checks;
pub mod flow;
pub mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use prdit::PrditConfig;
use prdit::weights::{Entry, HostTensor, StateDict};

/// The parity fixture folder: `PRDIT_PARITY_DIR`, else the project's copy `tests/fixtures/parity`.
pub fn parity_dir() -> PathBuf {
    fixture_dir("PRDIT_PARITY_DIR", "parity")
}

/// The extra fixture folder (samplers, resampling): `PRDIT_EXTRA_DIR`, else
/// `tests/fixtures/extra`.
pub fn extra_dir() -> PathBuf {
    fixture_dir("PRDIT_EXTRA_DIR", "extra")
}

/// The MedicalNet fixture folder: `PRDIT_MED3D_DIR`, else `tests/fixtures/med3d`.
pub fn med3d_dir() -> PathBuf {
    fixture_dir("PRDIT_MED3D_DIR", "med3d")
}

/// The training-loop fixture folder (five official optimizer steps):
/// `PRDIT_TRAIN_PARITY_DIR`, else `tests/fixtures/train`.
pub fn train_dir() -> PathBuf {
    fixture_dir("PRDIT_TRAIN_PARITY_DIR", "train")
}

/// The repository root, found at run time: cargo sets `CARGO_MANIFEST_DIR` in the environment
/// of every test process. Never the compile-time `env!` path, which a test binary reused from
/// a build in another checkout (a shared `CARGO_TARGET_DIR`) would carry from that checkout.
pub fn repo() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .expect("CARGO_MANIFEST_DIR is set (run the tests with cargo test)");
    assert!(dir.join("Cargo.toml").is_file(), "{} holds no Cargo.toml", dir.display());
    dir
}

/// A fixture folder: the variable `var` when set, else `tests/fixtures/NAME` of this checkout;
/// a missing folder fails the test with its path.
pub fn fixture_dir(var: &str, name: &str) -> PathBuf {
    let dir = match std::env::var_os(var) {
        Some(d) => PathBuf::from(d),
        None => repo().join("tests/fixtures").join(name),
    };
    assert!(
        dir.is_dir(),
        "fixture folder {} not found (set {var} to a folder of this format)",
        dir.display()
    );
    dir
}

/// All tensors of a safetensors fixture file, as f32 host tensors.
pub fn read_fixture(path: PathBuf) -> BTreeMap<String, HostTensor> {
    let sd = StateDict::open(&path, Entry::Auto).unwrap_or_else(|e| panic!("{e}"));
    sd.keys().map(|k| (k.to_string(), sd.read(k).unwrap())).collect()
}

/// Every tensor of a safetensors file exactly as stored (float32 or float64, as f64), with no
/// entry selection (keys may start with `ema.` or `model.` without meaning a checkpoint entry).
pub fn read_raw(path: PathBuf) -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    use safetensors::Dtype;
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st =
        safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.iter()
        .map(|(name, view)| {
            let b = view.data();
            let data: Vec<f64> = match view.dtype() {
                Dtype::F32 => {
                    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
                }
                Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
                other => panic!("{}: `{name}` is {other:?}", path.display()),
            };
            (name.to_string(), (view.shape().to_vec(), data))
        })
        .collect()
}

/// A host tensor on `device`.
pub fn tensor<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
    assert_eq!(t.shape.len(), D, "rank of a fixture tensor");
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

/// Host values of a tensor.
pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

/// max |a − b| / max |b|.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "element counts differ");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
    let diff = got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    diff / scale
}

/// Asserts `got` matches the fixture tensor within `tol` (relative to its largest value).
pub fn assert_close(name: &str, got: &[f32], want: &HostTensor, tol: f64) {
    let e = rel_err(got, &want.data);
    assert!(e <= tol, "{name}: relative error {e:.3e} > {tol:.0e}");
    eprintln!("{name}: relative error {e:.3e} (tolerance {tol:.0e})");
}

/// The fixture's model configuration, read from `parity_meta.json` (`config`), and the
/// batch size and timesteps.
pub struct Meta {
    pub config: PrditConfig,
    pub batch: usize,
    pub t: Vec<usize>,
    pub loss: f64,
}

pub fn read_meta() -> Meta {
    let path = parity_dir().join("parity_meta.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = &v["config"];
    let int = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("config.{k} missing")) as usize;
    let num = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("config.{k} missing"));
    // Settings prdit fixes by construction: a fixture with other values is not comparable.
    assert_eq!(num("layer_norm_eps"), 1e-6, "fixture uses another LayerNorm eps");
    assert_eq!(num("noise_std"), 0.5, "fixture uses another noise std");
    assert_eq!(int("num_timesteps"), 1000, "fixture uses another T");
    assert_eq!(num("local_mlp_ratio"), 1.0, "fixture uses another local MLP ratio");
    let config = PrditConfig {
        input_size: int("input_size"),
        in_channels: int("in_channels"),
        out_channels: int("out_channels"),
        patch_size: int("patch_size"),
        stride: int("stride"),
        padding: int("padding"),
        hidden_size: int("hidden_size"),
        num_heads: int("num_heads"),
        depth: int("depth"),
        mlp_ratio: num("mlp_ratio"),
        frequency_size: int("timestep_frequency_size"),
    };
    config.validate().expect("fixture configuration is valid");
    let t = v["t"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as usize).collect();
    Meta { config, batch: v["batch"].as_u64().unwrap() as usize, t, loss: v["loss"].as_f64().unwrap() }
}

/// The GPU-path device, as `--device` names it: `PRDIT_GPU_DEVICE`, else `wgpu`
/// (`scripts/test-gpu-path-cuda.sh` sets `cuda`).
pub fn gpu_spec() -> String {
    std::env::var("PRDIT_GPU_DEVICE").unwrap_or_else(|_| "wgpu".into())
}

/// The GPU-path device: Burn's wgpu backend (the CubeCL kernels the CUDA backend runs, up to
/// code generation) on the adapter `--device wgpu` picks, or the device `PRDIT_GPU_DEVICE`
/// names, with the kernel cache of the command line (`PRDIT_KERNEL_CACHE`, else
/// `~/.cache/prdit/cubecl`) so that autotune results carry over between runs. Prints the
/// adapter; `PRDIT_GPU_ADAPTER` (comma-separated) names what its description must contain,
/// e.g. `llvmpipe,Vulkan` in CI, where an OpenGL fallback would otherwise pass unnoticed.
pub fn gpu() -> Device {
    static DEVICE: std::sync::OnceLock<(Device, String)> = std::sync::OnceLock::new();
    let (device, name) = DEVICE.get_or_init(|| {
        prdit::device::configure_kernel_cache(None, true, None).unwrap_or_else(|e| panic!("{e}"));
        if let Some((file, report)) =
            prdit::device::import_asked_kernel_bundle(None).unwrap_or_else(|e| panic!("{e}"))
        {
            eprintln!("kernel bundle {}: {report}", file.display());
        }
        let spec: prdit::device::DeviceSpec = gpu_spec().parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !matches!(spec, prdit::device::DeviceSpec::Cpu | prdit::device::DeviceSpec::Auto),
            "PRDIT_GPU_DEVICE names a GPU (wgpu, cuda, cuda:N), not {spec}"
        );
        let selected = prdit::device::select(spec).unwrap_or_else(|e| panic!("{e}"));
        let name = if selected.name.starts_with("cuda") {
            format!("{}: {}", selected.name, prdit::device::describe(&selected.device))
        } else {
            selected.name
        };
        if let Ok(want) = std::env::var("PRDIT_GPU_ADAPTER") {
            for part in want.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                assert!(
                    name.contains(part),
                    "the GPU path ran on {name}, not on an adapter with `{part}` (PRDIT_GPU_ADAPTER={want})"
                );
            }
        }
        (selected.device, name)
    });
    eprintln!("GPU path on {name}");
    device.clone()
}
