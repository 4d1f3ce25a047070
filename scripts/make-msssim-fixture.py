#!/usr/bin/env python3
"""Reference 3D MS-SSIM values from the official evaluation's implementation.

PRDiT's `evaluations/ms_ssim.py` (github.com/Fredy-Zhang/PRDiT, line 24 imports and line 87
builds it) scores diversity with MONAI-Generative's

    MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=3)

called on [1, 1, D, H, W] tensors (line 98; batch size 1, one channel), in the environment of
`evaluations/eval_env.yml`: monai 1.3.2, monai-generative 0.2.3, torch 2.4.0, numpy 1.24.4,
Python 3.8. This script runs that class on a few pairs of small volumes and writes, into OUT_DIR:

  msssim_volumes.safetensors  the volumes, float16 (exactly the float32 values both
                              implementations are given: each volume is rounded to float16
                              and widened back, so the fixture is half the size)
  msssim_reference.json       the pairs and, per pair, the reference values (float64):
      ms_ssim               the official class as the evaluation runs it. Note that it computes
                            in float32 whatever the input dtype (`compute_ssim_and_cs` converts
                            both inputs to torch.float; its Gaussian kernel and the scale
                            weights are float32 too), on the CPU
      ms_ssim_float64_input the official class given float64 tensors of the same values: it
                            still computes each scale in float32, but pools the inputs between
                            scales in float64 (the loop pools its inputs, each scale converts),
                            so the number moves slightly
      ms_ssim_float64_code  the same code with float64 arithmetic (the input conversion and the
                            kernel in float64; its weights stay the float32-rounded
                            (0.0448, 0.2856, ...), as `torch.tensor(weights, dtype=torch.float)`
                            makes them)
      ms_ssim_float64       an independent float64 numpy transcription of the same formula with
                            the exact decimal weights: what an exact implementation computes
      ms_ssim_tf32_emulated the official code with each conv3d's inputs rounded to TF32 (10-bit
                            mantissa), as cuDNN may on an Ampere-or-newer GPU under torch's
                            default `torch.backends.cudnn.allow_tf32 = True`: how far the
                            official numbers from a GPU run may sit from the CPU ones
                            (informational; an emulation, not a GPU run)
    and `tolerance`: what separates float32 from float64 arithmetic on these pairs (see its
    `reasoning`).

Pairs: a 48^3 volume against a noisy copy (correlated), against an unrelated volume, and
against itself; a non-cubic pair with odd edges (49 x 53 x 61: every 2x2x2 pooling floors);
a [-1, 1] pair (the LIDC protocol's range, which the official script scores with
data_range=1.0 all the same). Volumes are smooth random fields (Gaussian-filtered noise) with
a body-like ellipsoid, in [0, 1] unless said otherwise.

Usage: make-msssim-fixture.py OUT_DIR [--seed N] [--cube EDGE] [--noncubic D,H,W]
Needs (in a virtualenv, e.g. /tmp/msssim-venv, Python 3.8):
  pip install numpy==1.24.4 torch==2.4.0 monai==1.3.2 monai-generative==0.2.3 scipy==1.10.1 \
      safetensors        (scipy only because generative.metrics imports it)
"""
import argparse
import json
import math
import os
import platform
import sys

import monai
import numpy as np
import safetensors
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

import generative
import generative.metrics.ssim as gssim
from generative.metrics import MultiScaleSSIMMetric

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("out")
p.add_argument("--seed", type=int, default=2026)
p.add_argument("--cube", type=int, default=48, help="edge of the cubic volumes (>= 48)")
p.add_argument("--noncubic", default="49,53,61", help="shape of the non-cubic pair")
args = p.parse_args()
cube = (args.cube,) * 3
noncubic = tuple(int(s) for s in args.noncubic.split(","))
rng = np.random.default_rng(args.seed)
torch.set_num_threads(1)


def smooth_field(shape, sigma):
    """Gaussian-filtered white noise (periodic, by FFT), scaled to unit standard deviation."""
    noise = rng.standard_normal(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    gain = np.exp(-2 * np.pi**2 * sigma**2 * sum(f**2 for f in freqs))
    f = np.real(np.fft.ifftn(np.fft.fftn(noise) * gain))
    return f / f.std()


def body(shape):
    """A CT-like volume in [0, 1]: air around an ellipsoid of tissue with smooth texture."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = (grid[0] / 0.85) ** 2 + (grid[1] / 0.7) ** 2 + (grid[2] / 0.9) ** 2
    inside = 1 / (1 + np.exp((r2 - 1) * 12))  # soft edge
    tissue = 0.55 + 0.12 * smooth_field(shape, 3.0) + 0.04 * smooth_field(shape, 1.0)
    return np.clip(0.02 + inside * tissue, 0, 1)


def as_f16(x):
    """Rounded to float16 (what the fixture stores), widened back to float32."""
    return np.asarray(x, dtype=np.float16)


vols = {}
vols["a"] = as_f16(body(cube))
a = vols["a"].astype(np.float64)
vols["b"] = as_f16(np.clip(a + 0.03 * rng.standard_normal(cube) + 0.03 * smooth_field(cube, 2.0), 0, 1))
vols["c"] = as_f16(body(cube))
vols["d"] = as_f16(body(noncubic))
d = vols["d"].astype(np.float64)
vols["e"] = as_f16(np.clip(d + 0.08 * rng.standard_normal(noncubic), 0, 1))
f = body(cube)
vols["f"] = as_f16(2 * f - 1)
vols["g"] = as_f16(np.clip(2 * (0.6 * f + 0.4 * body(cube)) - 1 + 0.05 * rng.standard_normal(cube), -1, 1))

C = "x".join(map(str, cube))
N = "x".join(map(str, noncubic))
pairs = [
    ("correlated", "a", "b", f"{C}, b = a + noise (white 0.03 + smooth 0.03), clipped to [0, 1]"),
    ("unrelated", "a", "c", f"{C}, independent textures in the same body outline"),
    ("identical", "a", "a", f"{C}, a volume against itself"),
    ("noncubic_correlated", "d", "e", f"{N}, e = d + white noise 0.08, clipped"),
    ("minus_one_one", "f", "g", f"{C} in [-1, 1] (the LIDC range), partly correlated, data_range 1"),
]


def official(x, y, dtype=np.float32):
    """The official metric, as ms_ssim.py line 87/98 call it ([1, 1, D, H, W], CPU)."""
    m = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=3)
    t = lambda v: torch.from_numpy(np.asarray(v, dtype=dtype))[None, None]
    return float(m(t(x), t(y)).item())


def official_float64(x, y):
    """The same class with float64 arithmetic: inputs kept float64 and the kernel built in float64."""
    orig_convert = gssim.convert_data_type
    orig_dtype = torch.get_default_dtype()

    def keep64(data, output_type=None, device=None, dtype=None, wrap_sequence=False, safe=False):
        return orig_convert(data, output_type=output_type, device=device, dtype=torch.float64)

    gssim.convert_data_type = keep64
    torch.set_default_dtype(torch.float64)  # torch.arange of the Gaussian kernel
    try:
        m = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=3)
        t = lambda v: torch.from_numpy(np.asarray(v, dtype=np.float64))[None, None]
        return float(m(t(x), t(y)).item())
    finally:
        gssim.convert_data_type = orig_convert
        torch.set_default_dtype(orig_dtype)


def official_tf32(x, y):
    """The official float32 code with conv3d inputs (image and kernel) rounded to TF32."""
    orig = F.conv3d

    def to_tf32(v):
        bits = v.contiguous().view(torch.int32)
        # round to nearest (ties away from zero, as cvt.rna.tf32.f32) on the 13 dropped bits
        bits = (bits + 0x1000) & ~0x1FFF
        return bits.view(torch.float32)

    def conv3d(inp, weight, *a, **k):
        return orig(to_tf32(inp), to_tf32(weight), *a, **k)

    F.conv3d = conv3d
    try:
        return official(x, y)
    finally:
        F.conv3d = orig


def numpy_float64(x, y):
    """The formula in float64 with exact weights (valid filtering, 2x2x2 average pool, ReLU)."""
    k = np.exp(-((np.arange(3) - 1.0) ** 2) / (2 * 1.5**2))
    k /= k.sum()

    def filt(v):
        for ax in range(3):
            n = v.shape[ax] - 2
            v = sum(w * np.take(v, range(i, i + n), axis=ax) for i, w in enumerate(k))
        return v

    def pool(v):
        s = [n // 2 * 2 for n in v.shape]
        v = v[: s[0], : s[1], : s[2]]
        return v.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(1, 3, 5))

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    c1, c2 = 0.01**2, 0.03**2
    terms = []
    for s in range(len(WEIGHTS)):
        mx, my = filt(x), filt(y)
        vx, vy, cxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
        cs = (2 * cxy + c2) / (vx + vy + c2)
        ssim = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs
        terms.append(max(cs.mean(), 0.0) if s < len(WEIGHTS) - 1 else max(ssim.mean(), 0.0))
        x, y = pool(x), pool(y)
    return float(np.prod([t**w for t, w in zip(terms, WEIGHTS)]))


results = []
for name, xa, ya, what in pairs:
    x, y = vols[xa].astype(np.float32), vols[ya].astype(np.float32)
    r = {
        "name": name,
        "x": xa,
        "y": ya,
        "shape": list(x.shape),
        "what": what,
        "ms_ssim": official(x, y),
        "ms_ssim_float64_input": official(x, y, np.float64),
        "ms_ssim_float64_code": official_float64(x, y),
        "ms_ssim_float64": numpy_float64(x, y),
        "ms_ssim_tf32_emulated": official_tf32(x, y),
        "ms_ssim_swapped": official(y, x),
    }
    r["float32_minus_float64"] = r["ms_ssim"] - r["ms_ssim_float64"]
    r["float64_input_minus_float32_input"] = r["ms_ssim_float64_input"] - r["ms_ssim"]
    r["weights_rounding_effect"] = r["ms_ssim_float64_code"] - r["ms_ssim_float64"]
    r["tf32_minus_float32"] = r["ms_ssim_tf32_emulated"] - r["ms_ssim"]
    results.append(r)
    print(json.dumps(r), file=sys.stderr)

# float32 arithmetic moves the result by at most `gap`; allow 10x that, and at least 1e-6.
gap = max(abs(r["float32_minus_float64"]) for r in results)
in_gap = max(abs(r["float64_input_minus_float32_input"]) for r in results)


def round_up(v):
    """v rounded up to one significant digit (1.43e-4 -> 2e-4)."""
    e = math.floor(math.log10(v))
    return float(f"{math.ceil(v / 10**e - 1e-9)}e{e}")


tol_official = round_up(max(10 * gap, 1e-6))
w_gap = max(abs(r["weights_rounding_effect"]) for r in results)
tolerance = {
    "vs_ms_ssim": tol_official,
    "vs_ms_ssim_float64": 1e-10,
    "vs_ms_ssim_float64_code": round_up(max(10 * w_gap, 1e-12)),
    "reasoning": (
        f"The official class computes every scale in float32 whatever the input dtype; float64 input "
        f"only changes the pooling between scales (moves the result by at most {in_gap:.2e} here). "
        f"On these pairs float32 arithmetic differs from float64 by at most {gap:.2e} "
        f"(float32_minus_float64, largest on the [-1, 1] pair); an implementation in float64 is "
        f"held to 10x that, rounded up, against ms_ssim. "
        f"Against the float64 transcription with exact weights it should agree to float64 rounding "
        f"of sums over ~1e5 voxels in another order (1e-10); against the float64 run of the "
        f"official code, whose weights are float32-rounded, to 10x the weights' effect "
        f"({w_gap:.2e})."
    ),
}
os.makedirs(args.out, exist_ok=True)
save_file(
    {k: np.ascontiguousarray(v) for k, v in vols.items()},
    os.path.join(args.out, "msssim_volumes.safetensors"),
    metadata={"format": "float16 volumes, C order [D, H, W]; widen to float32 before use"},
)
meta = {
    "official": {
        "repository": "github.com/Fredy-Zhang/PRDiT",
        "file": "evaluations/ms_ssim.py",
        "lines": {"import": 24, "construct": 87, "call": 98},
        "call": "MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=3)(x[1,1,D,H,W], y[1,1,D,H,W])",
        "environment": "evaluations/eval_env.yml: monai==1.3.2, monai-generative==0.2.3, torch 2.4.0",
    },
    "seed": args.seed,
    "volumes": {k: {"shape": list(v.shape), "dtype": "float16", "min": float(v.min()), "max": float(v.max())}
                for k, v in vols.items()},
    "pairs": results,
    "tolerance": tolerance,
    "versions": {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "monai-generative": getattr(generative, "__version__", "0.2.3"),
        "safetensors": safetensors.__version__,
    },
}
with open(os.path.join(args.out, "msssim_reference.json"), "w") as fh:
    json.dump(meta, fh, indent=2)
    fh.write("\n")
print(json.dumps(tolerance, indent=2), file=sys.stderr)
