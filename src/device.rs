//! `--device auto|cpu|cuda[:N]|wgpu`: the one place that turns a user's choice into a Burn
//! [`Device`]. Library code never names a backend.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, Tensor};

use crate::error::{Error, Result};

/// The values of `t` on the host as f32 — every device-to-host copy of the library goes through
/// here, so that a failed copy is an error naming `what` (never zeros).
pub fn to_host<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    t.into_data().try_into_vec_as::<f32>().map_err(|e| Error::transfer(what, e))
}

/// Keeps freed host memory for reuse instead of handing every large block back to the system.
///
/// glibc serves blocks of 128 KiB and more with a fresh `mmap` and unmaps them on free, so each
/// of the CPU backend's activations (a few MiB each) is new memory whose every page faults on
/// first touch — about a tenth of a 64³ forward on the 2-core machine. With the threshold at
/// glibc's maximum (32 MiB) and trimming off, they come from the heap and are reused. Peak
/// resident memory stays what the computation holds at its peak (measured in
/// `docs/bench-vs-official.md`). Called once at start by the command line and the benchmarks;
/// a no-op off glibc.
pub fn tune_host_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
    // allocates (the first thing `main` does) and the values are in glibc's documented ranges.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// A device as the user spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The first CUDA GPU, else the CPU (with a notice).
    #[default]
    Auto,
    /// Burn's pure-Rust CPU backend (`flex`).
    Cpu,
    /// CUDA GPU number N (CubeCL, kernels compiled by NVRTC at run time).
    Cuda(usize),
    /// The default WebGPU/Vulkan adapter (build with `--features wgpu`).
    Wgpu,
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Device { spec: s.to_string(), reason: reason.to_string() };
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" | "flex" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "wgpu" => Ok(DeviceSpec::Wgpu),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| bad("the GPU number after `cuda:` must be an integer")),
                None => Err(bad("expected auto, cpu, cuda, cuda:N or wgpu")),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Wgpu => f.write_str("wgpu"),
        }
    }
}

/// The device a run uses, with a human-readable name and, for `auto` falling back to the CPU,
/// the notice to print.
pub struct Selected {
    pub device: Device,
    pub name: String,
    pub notice: Option<String>,
}

/// Number of CUDA GPUs this process can use (0 without the CUDA feature or a driver).
pub fn cuda_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        Device::enumerate(burn::tensor::DeviceType::Cuda).len()
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}

/// Resolves `spec` to a device, checking that it exists.
pub fn select(spec: DeviceSpec) -> Result<Selected> {
    let err = |reason: String| Error::Device { spec: spec.to_string(), reason };
    match spec {
        DeviceSpec::Cpu => Ok(cpu(None)),
        DeviceSpec::Auto => {
            if cuda_count() > 0 {
                select(DeviceSpec::Cuda(0))
            } else {
                let why = if cfg!(feature = "cuda") { "no CUDA GPU found" } else { "built without CUDA" };
                Ok(cpu(Some(format!("{why}; running on the CPU (flex backend)"))))
            }
        }
        DeviceSpec::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                return Err(err("this prdit was built without the `cuda` feature".into()));
            }
            let count = cuda_count();
            if n >= count {
                return Err(err(if count == 0 {
                    "no CUDA GPU found (is the NVIDIA driver installed and libcuda.so.1 loadable?)".into()
                } else {
                    format!("only {count} CUDA GPU(s) found (cuda:0 … cuda:{})", count - 1)
                }));
            }
            #[cfg(feature = "cuda")]
            {
                Ok(Selected { device: Device::cuda(n), name: format!("cuda:{n}"), notice: None })
            }
            #[cfg(not(feature = "cuda"))]
            unreachable!("checked above")
        }
        DeviceSpec::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                Ok(Selected {
                    device: Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
                    name: "wgpu".into(),
                    notice: None,
                })
            }
            #[cfg(not(feature = "wgpu"))]
            {
                Err(err(
                    "this prdit was built without the `wgpu` feature (cargo build --features wgpu)".into()
                ))
            }
        }
    }
}

static KERNEL_CACHE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// The kernel cache folder set by [`configure_kernel_cache`], if any.
pub fn kernel_cache() -> Option<std::path::PathBuf> {
    KERNEL_CACHE.get().cloned().flatten()
}

/// Where compiled GPU kernels and autotune results persist between runs: `dir`, else
/// `$PRDIT_KERNEL_CACHE`, else `~/.cache/prdit/cubecl`. Must run before the first device
/// is used; without CUDA in the build it does nothing. Returns the folder in use. A folder
/// that was asked for (`dir` or the variable) and cannot be created is an error naming it;
/// the default one is skipped with a warning (kernels then compile afresh in each process).
pub fn configure_kernel_cache(
    dir: Option<std::path::PathBuf>,
    enabled: bool,
) -> Result<Option<std::path::PathBuf>> {
    let asked = dir.or_else(|| std::env::var_os("PRDIT_KERNEL_CACHE").map(std::path::PathBuf::from));
    if enabled && let Some(d) = &asked {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    #[cfg(feature = "cuda")]
    {
        use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
        // The asked-for folder exists (made above); the default one is made here, best effort.
        let default = || {
            let d = std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cache/prdit/cubecl");
            match std::fs::create_dir_all(&d) {
                Ok(()) => Some(d),
                Err(e) => {
                    tracing::warn!("no kernel cache: {}: {e}", d.display());
                    None
                }
            }
        };
        let used = if enabled { asked.or_else(default) } else { None };
        let mut cfg = CubeClRuntimeConfig::from_current_dir().override_from_env();
        cfg.compilation.cache = enabled;
        if !enabled {
            cfg.autotune.disable_cache = true;
        }
        if let Some(d) = &used {
            cfg.environment.path = CacheConfig::Directory(d.clone());
        }
        CubeClRuntimeConfig::set(cfg);
        let _ = KERNEL_CACHE.set(used.clone());
        Ok(used)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(None)
    }
}

fn cpu(notice: Option<String>) -> Selected {
    Selected { device: Device::flex(), name: "cpu".into(), notice }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("wgpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Wgpu);
        for bad in ["gpu", "cuda:x", "cuda:", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_always_works() {
        let s = select(DeviceSpec::Cpu).unwrap();
        assert_eq!(s.name, "cpu");
        assert!(s.notice.is_none());
    }
}
