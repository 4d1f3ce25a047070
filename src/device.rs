//! `--device auto|cpu|cuda[:N]|wgpu`: the one place that turns a user's choice into a Burn
//! [`Device`]. Library code never names a backend.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, Tensor};

use crate::error::{Error, Result};

/// The values of `t` on the host as f32 — every device-to-host copy of the library goes through
/// here, so that a failed copy, or a failure of the device work that computed `t` (an
/// allocation the device refused), is an error naming `what` (never zeros, never a panic).
pub fn to_host<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    let data = t.try_into_data().map_err(|e| Error::transfer(what, e))?;
    data.try_into_vec_as::<f32>().map_err(|e| Error::transfer(what, e))
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
                let adapters = wgpu_adapters();
                if adapters.is_empty() {
                    return Err(err(
                        "no WebGPU adapter: no Vulkan (or OpenGL) driver found. Without a GPU, Mesa's \
                         lavapipe serves (Debian: apt-get install mesa-vulkan-drivers libvulkan1)"
                            .into(),
                    ));
                }
                let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
                let name = describe_among(&device, || adapters);
                Ok(Selected { device, name: format!("wgpu: {name}"), notice: None })
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

/// One adapter the graphics APIs offer, as wgpu reports it.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The graphics API: `Vulkan`, `Gl`, `Metal`, `Dx12`.
    pub api: String,
    pub name: String,
    /// `Cpu` for a software rasterizer (lavapipe), else the kind of GPU.
    pub kind: String,
    pub driver: String,
}

/// Every adapter of the graphics APIs this build has, in the order CubeCL tries the APIs
/// (Vulkan, DirectX 12, OpenGL; Metal on macOS). Opens no device.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapters() -> Vec<Adapter> {
    let apis = if cfg!(target_os = "macos") {
        vec![wgpu::Backend::Metal]
    } else {
        vec![wgpu::Backend::Vulkan, wgpu::Backend::Dx12, wgpu::Backend::Gl]
    };
    let mut found = Vec::new();
    for api in apis {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: api.into(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        for adapter in block_on(instance.enumerate_adapters(api.into())) {
            let info = adapter.get_info();
            found.push(Adapter {
                api: format!("{:?}", info.backend),
                name: info.name,
                kind: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
            });
        }
    }
    found
}

/// A future that is ready without waiting on anything (wgpu's native enumeration), run to
/// completion on this thread.
#[cfg(feature = "wgpu")]
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// How much memory a training step on `device` may plan for, in bytes: for a CubeCL device the
/// capacity its runtime reports (CUDA: the card's total memory; Burn's wgpu backend, which
/// compiles WGSL, reports none: CubeCL reads the Vulkan heaps only on its SPIR-V path); for the
/// CPU backend the memory the kernel says is available (`MemAvailable`, Linux). `None` where
/// nothing says.
pub fn memory_capacity(device: &Device) -> Option<u64> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if let burn::backend::DispatchDevice::Cube(cube) = device.clone().inner().as_dispatch() {
        return cube.client().properties().memory.max_memory();
    }
    let _ = device; // the CPU backend: the host's memory
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_available(&meminfo)
}

/// The memory a training step on `device` is planned for (`train::micro`), in bytes, with what
/// it is: `PRDIT_DEVICE_MEMORY` (GiB) when set, for a GPU shared with other work; else
/// [`memory_capacity`] and the device's name. An unreadable `PRDIT_DEVICE_MEMORY` is an error.
pub fn memory_to_plan(device: &Device) -> Result<Option<(u64, String)>> {
    if let Some(v) = std::env::var_os("PRDIT_DEVICE_MEMORY") {
        let v = v.to_string_lossy();
        let gib = v.trim().parse::<f64>().ok().filter(|g| g.is_finite() && *g > 0.0).ok_or_else(|| {
            Error::invalid("PRDIT_DEVICE_MEMORY", format!("expected a positive number of GiB, got `{v}`"))
        })?;
        return Ok(Some(((gib * (1u64 << 30) as f64) as u64, format!("PRDIT_DEVICE_MEMORY={v}"))));
    }
    Ok(memory_capacity(device).map(|b| (b, describe(device))))
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether `device` runs CubeCL kernels (CUDA, wgpu): the devices whose kernel launches
/// `prdit bench` counts.
pub fn is_gpu(device: &Device) -> bool {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return device.identity().is_some();
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = device;
        false
    }
}

/// What a CubeCL device runs on, for logs and test output: the adapter's name, and for wgpu
/// the graphics API and kind that adapter has (`llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan,
/// Cpu, llvmpipe Mesa 25.0.7…)`). Opens the device; `cpu` for the CPU backend.
pub fn describe(device: &Device) -> String {
    #[cfg(feature = "wgpu")]
    return describe_among(device, wgpu_adapters);
    #[cfg(not(feature = "wgpu"))]
    describe_among(device, Vec::new)
}

/// [`describe`], taking the wgpu adapters from `adapters` (called only for a CubeCL device).
fn describe_among(device: &Device, adapters: impl FnOnce() -> Vec<Adapter>) -> String {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if let Some(identity) = device.identity() {
        return match adapters().into_iter().find(|a| a.name == identity.name) {
            Some(a) => format!("{} ({}, {}, {})", a.name, a.api, a.kind, a.driver),
            None => identity.name,
        };
    }
    let _ = (device, adapters);
    "cpu".into()
}

static AUTOTUNE_LOG: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// The file CubeCL writes its autotune decisions to (one JSON line each), when
/// [`configure_kernel_cache`] was asked to record them.
pub fn autotune_log() -> Option<std::path::PathBuf> {
    AUTOTUNE_LOG.get().cloned()
}

static KERNEL_CACHE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// The kernel cache folder set by [`configure_kernel_cache`], if any.
pub fn kernel_cache() -> Option<std::path::PathBuf> {
    KERNEL_CACHE.get().cloned().flatten()
}

/// Where compiled GPU kernels and autotune results persist between runs: `dir`, else
/// `$PRDIT_KERNEL_CACHE`, else `~/.cache/prdit/cubecl`. Must run before the first device
/// is used; without a CubeCL backend (CUDA, wgpu) in the build it does nothing. Returns the folder in use. A folder
/// that was asked for (`dir` or the variable) and cannot be created is an error naming it;
/// the default one is skipped with a warning (kernels then compile afresh in each process).
///
/// `autotune_log`: a file (emptied here) where CubeCL records each autotune decision, which
/// the benchmarks count ([`autotune_log`]).
pub fn configure_kernel_cache(
    dir: Option<std::path::PathBuf>,
    enabled: bool,
    autotune_log: Option<std::path::PathBuf>,
) -> Result<Option<std::path::PathBuf>> {
    let asked = dir.or_else(|| std::env::var_os("PRDIT_KERNEL_CACHE").map(std::path::PathBuf::from));
    if enabled && let Some(d) = &asked {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
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
        // Where kernels are slow to compile and time (a software GPU: lavapipe), fewer samples
        // per autotune candidate; the choice is still the measured fastest.
        if let Some(n) = std::env::var("PRDIT_AUTOTUNE_SAMPLES").ok().and_then(|v| v.parse::<usize>().ok()) {
            cfg.autotune.bench.min_samples = n.max(1);
            cfg.autotune.bench.max_samples = n.max(1);
            cfg.autotune.bench.adaptive = false;
        }
        if let Some(log) = autotune_log {
            // CubeCL appends; start empty so that the lines are this process's decisions.
            match std::fs::remove_file(&log) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&log, e)),
                _ => {}
            }
            cfg.autotune.decisions.file = Some(log.clone());
            let _ = AUTOTUNE_LOG.set(log);
        }
        CubeClRuntimeConfig::set(cfg);
        let _ = KERNEL_CACHE.set(used.clone());
        Ok(used)
    }
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = autotune_log;
        Ok(None)
    }
}

/// Adds the entries of a kernel bundle (CubeCL's format for shipping warm caches: autotune
/// decisions, compiled kernels) to the kernel cache configured by [`configure_kernel_cache`].
/// Insert-only: an entry the cache has is kept. Entries of another CubeCL version are never
/// looked up; autotune entries are keyed by CubeCL's device id, not by the GPU model, so a
/// bundle belongs on the GPU model it was made on (elsewhere its choices would be valid but
/// slow). Returns what was imported, for the log.
pub fn import_kernel_bundle(file: &std::path::Path) -> Result<String> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    {
        if kernel_cache().is_none() {
            return Err(Error::invalid("--kernel-bundle", "there is no kernel cache to import it into"));
        }
        if !file.is_file() {
            return Err(Error::invalid("--kernel-bundle", format!("{}: no such file", file.display())));
        }
        let bundle = cubecl::bundle::open(file)
            .map_err(|e| Error::failed(format!("the kernel bundle {}", file.display()), e.to_string()))?;
        let r = cubecl::bundle::import(&*bundle);
        if r.failed > 0 {
            return Err(Error::failed(
                format!("the kernel bundle {}", file.display()),
                format!("{} of its entries could not be written into the kernel cache", r.failed),
            ));
        }
        Ok(format!("{} entries imported, {} already in the cache", r.imported, r.skipped))
    }
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        Err(Error::invalid("--kernel-bundle", format!("{}: this prdit has no GPU backend", file.display())))
    }
}

/// Imports the kernel bundle asked for: `file`, else `$PRDIT_KERNEL_BUNDLE` (empty: none), as
/// [`import_kernel_bundle`]. Returns the bundle and what was imported, `None` when none was asked.
pub fn import_asked_kernel_bundle(
    file: Option<std::path::PathBuf>,
) -> Result<Option<(std::path::PathBuf, String)>> {
    let file = file.or_else(|| std::env::var_os("PRDIT_KERNEL_BUNDLE").map(std::path::PathBuf::from));
    match file.filter(|f| !f.as_os_str().is_empty()) {
        Some(f) => import_kernel_bundle(&f).map(|report| Some((f, report))),
        None => Ok(None),
    }
}

/// Writes the kernel cache ([`configure_kernel_cache`]) to a bundle file named `name`, without
/// CubeCL's records of how it was built. Returns the number of entries written.
pub fn export_kernel_bundle(out: &std::path::Path, name: &str) -> Result<usize> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    {
        let dir = kernel_cache()
            .ok_or_else(|| Error::invalid("--export-bundle", "there is no kernel cache to export"))?;
        let options = cubecl::bundle::ExportOptions {
            name: name.to_string(),
            excluded_namespaces: vec!["records".into()],
            ..Default::default()
        };
        cubecl::bundle::export(&[&dir], out, &options)
            .map_err(|e| Error::failed(format!("the kernel bundle {}", out.display()), e.to_string()))?;
        let bundle = cubecl::bundle::open(out)
            .map_err(|e| Error::failed(format!("the kernel bundle {}", out.display()), e.to_string()))?;
        let mut n = 0;
        for ns in bundle.namespaces() {
            bundle.scan(&ns, &mut |_, _| n += 1);
        }
        Ok(n)
    }
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = name;
        Err(Error::invalid("--export-bundle", format!("{}: this prdit has no GPU backend", out.display())))
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

    #[test]
    fn available_memory_from_meminfo() {
        let text = "MemTotal:       24634400 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(meminfo_available(text), Some(20_000_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 5 kB\n"), None);
        // This machine's CPU backend reports something.
        assert!(memory_capacity(&Device::flex()).is_some_and(|b| b > 0) || !cfg!(target_os = "linux"));
    }
}
