#!/usr/bin/env python3
"""Parity fixture for the flow-matching follow-up of PRDiT (PRDiT-FM), made with its own code.

PRDiT-FM trains the unchanged PRDiT network (its `models/` are byte-identical to the original
PRDiT's) as a velocity model with straight-line flow matching. This script imports PRDiT-FM's
classes from a source tree (`--repo`, put first on `sys.path`), builds a small random model on
the CPU in float32 and records what their code computes, so that prdit's flow-matching path can
be checked tensor for tensor. Nothing of their code is copied here: every number below comes from
calling it.

Environment (what the checked-in fixture was made with: Python 3.11.7, torch 2.4.0 from PyPI,
which is the CUDA build but runs here on the CPU only; timm 1.0.15; torchvision only because
`import timm` needs it):

    python3 -m venv /tmp/fm-venv
    /tmp/fm-venv/bin/pip install torch==2.4.0 torchvision==0.19.0 timm==1.0.15 safetensors \
        "numpy<2" pyyaml
    # (the CPU wheels from https://download.pytorch.org/whl/cpu are equivalent where reachable)
    cd /work/main && /tmp/fm-venv/bin/python scripts/make-flow-fixture.py --repo /tmp/fmread

Import-only stubs. Their `models/models.py` imports `util` (for `requires_grad`), and `util.py`
imports, at module level, `wandb` and the repo's own `datasets` package (which pulls nibabel,
cv2, monai, tqdm, scipy). Neither is used by anything this script calls (they serve W&B logging
and the data loaders), so when the real module cannot be imported an empty stand-in is put in
`sys.modules` (`datasets.get_voxel_dataset` raises if ever called). `yaml` and `PIL` (also
imported by util.py) are real packages of the environment. The stubs used are listed in
`flow_meta.json` (`stubbed_modules`).

Where each number comes from (their file:function):

- model: `models/models.py:PRDiT.__init__` with the keyword arguments that
  `models/__init__.py:create_prdit_model` + `load_model` pass (depth, hidden_size, patch_size,
  stride, padding, num_heads, mlp_ratio, input_size, in_channels, num_classes,
  learn_sigma=(out_channels == 2) -> False, flash_attn=False), given explicitly because no
  registered preset has hidden 48. out_channels = in_channels = 1 (the velocity head).
- weights: every parameter (the zero-initialised ones too) overwritten with N(0, 0.05^2), drawn
  from one `torch.Generator` seeded with `--seed`, in `named_parameters()` order of the depth-L
  model. The depth-0 (stage-1) model gets the subset of keys it has (strict load).
- random draws after the weights, same generator, in this order: `x_data` (uniform in [-1, 1):
  `rand*2-1`), `noise` (randn, [B,1,S,S,S]), `start_noise` (randn, [1,1,S,S,S]).
- `xt`, `target`: `diffusion/flow_matching.py:FlowMatching.interpolate(x_data, noise, t)`.
- `t_model` = `FlowMatching._model_t(t)` = t * embed_t_scale (float32 tensor times 1000.0).
- `c_coarse`, `c_fine`: `models/models.py:TimestepEmbedder.forward(t_model)` of the stage-2 model.
- `v_stage1`, `v_stage2`: `PRDiT.forward(xt, t_model)`; `v_stage2_coarse`, `v_stage2_fine`: the
  same call with `return_intermediate=True` (unpatchified branch outputs; v = coarse + fine).
- `loss_stage1`, `loss_stage2`: `FlowMatching.training_losses(model, x_data, t=t)` (per-sample
  mean over C,D,H,W of (v - (x_data - noise))^2), reduced as `train.py:train_step` reduces it
  (`loss_dict["loss"].mean()`), with `torch.randn_like` inside that call returning `noise`
  (the only random draw there; it is checked to be called exactly once).
- stage-1 gradients: backward of that loss on the depth-0 model with the trainability
  `train.py:Trainer._setup_model` gives it (all parameters; its `fine_head.requires_grad_(False)`
  is applied and is a no-op, the depth-0 fine head being `nn.Identity`).
- stage-2 gradients: the depth-L model made trainable exactly as in their stage 2:
  `PRDiT.__init__` calls `freeze_coarse_path`, then `util.py:initialize_model_with_pretrained`
  (called for real, on a stage-1 checkpoint this script writes in a temporary folder) reloads the
  stage-1 part, re-freezes coarse.*, t_embedder.mlp.*, t_embedder.coarse_head.* and makes the
  rest trainable; the fixture weights are then loaded over all keys. `PRDiT.forward` runs the
  coarse branch under `torch.no_grad()` when depth > 0. Gradients are the raw ones before
  `train_step`'s `clip_grad_norm_` (its pre-clip total norm is in the meta).
- `xt_t05`, `recon_t05`: `FlowMatching.predict_x_data(stage1_model, x_data, t_value=0.5)` (as
  `train.py:_evaluate_reconstruction` calls it), with `torch.randn_like` inside it returning
  `noise` (so xt_t05 = 0.5*noise + 0.5*x_data and recon = xt_t05 + 0.5*v).
- `euler{E}_final`, `heun{H}_final`, `euler{E}_stage1_final`:
  `FlowMatching.sample(model, x_noise=start_noise, num_steps=N, solver=...)` in eval mode (also
  checked equal to `p_sample_loop`, the entry point train.py and sample.py use, for Euler).
- `flow_checkpoint.pt`: the dict `train.py:Trainer.save_checkpoint` writes (without the optional
  optimizer state), `config` being `util.py:Config.to_dict()` of their `configs/global/lidc.yaml`
  with the fixture's values put in.

Numerics: float32, `torch.set_num_threads(2)`, deterministic algorithms, no TF32. As an
informational measure of float32 rounding, the same computations are repeated in float64 (their
`TimestepEmbedder.timestep_embedding` hard-codes float32, so for that run only it is replaced by
the same formula in the input's dtype) and the largest relative differences go into the meta
(`f32_vs_f64`).
"""
import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import types


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repo", default="/tmp/fmread", help="PRDiT-FM source tree")
    p.add_argument("--out", default="tests/fixtures/flow", help="output folder")
    p.add_argument("--input-size", type=int, default=16)
    p.add_argument("--patch", type=int, default=4, help="extraction patch edge")
    p.add_argument("--stride", type=int, default=2, help="stride = output patch edge")
    p.add_argument("--padding", type=int, default=1, help="reflect padding")
    p.add_argument("--hidden", type=int, default=48)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--depth", type=int, default=2, help="transformer depth of stage 2 (> 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--times", default="0.137,0.842", help="one t in [0,1] per batch element")
    p.add_argument("--euler-steps", type=int, default=10)
    p.add_argument("--heun-steps", type=int, default=5)
    p.add_argument("--weight-std", type=float, default=0.05)
    p.add_argument("--skip-f64", action="store_true", help="skip the float64 comparison run")
    a = p.parse_args()
    a.t = [float(s) for s in a.times.split(",") if s.strip()]
    if len(a.t) != a.batch:
        p.error(f"--times has {len(a.t)} values but --batch is {a.batch}")
    if any(not (0.0 <= t <= 1.0) for t in a.t):
        p.error("--times must lie in [0, 1]")
    if a.depth < 1:
        p.error("--depth must be >= 1 (the stage-2 model); the stage-1 model is depth 0")
    if a.hidden % 6:
        p.error("--hidden must be divisible by 6 (their get_normalized_3d_pos_enc requires it)")
    if a.hidden % a.heads:
        p.error("--hidden must be divisible by --heads")
    if a.input_size % a.stride:
        p.error("--input-size must be divisible by --stride (unpatchify grid)")
    grid = (a.input_size + 2 * a.padding - a.patch) // a.stride + 1
    if grid != a.input_size // a.stride:
        p.error(f"extraction grid {grid} != output grid {a.input_size // a.stride}: "
                "choose patch/stride/padding with (S + 2*pad - patch)/stride + 1 = S/stride")
    if a.padding >= a.input_size:
        p.error("reflect padding must be smaller than the input size")
    return a


def install_import_only_stubs():
    """Stand-ins for modules util.py imports at module level but this script never uses."""
    stubbed = []
    try:
        import wandb  # noqa: F401
    except ImportError:
        sys.modules["wandb"] = types.ModuleType("wandb")
        stubbed.append("wandb")
    try:
        import datasets  # noqa: F401  (the repo's package: nibabel, cv2, monai, tqdm, scipy)
        if not hasattr(datasets, "get_voxel_dataset"):
            raise ImportError("not the repo's datasets package")
    except ImportError:
        for name in [m for m in sys.modules if m == "datasets" or m.startswith("datasets.")]:
            del sys.modules[name]
        mod = types.ModuleType("datasets")

        def get_voxel_dataset(*_a, **_k):
            raise RuntimeError("datasets is an import-only stub in make-flow-fixture.py")

        mod.get_voxel_dataset = get_voxel_dataset
        sys.modules["datasets"] = mod
        stubbed.append("datasets")
    return stubbed


@contextlib.contextmanager
def randn_like_returns(torch, value):
    """Within the block, torch.randn_like(x) returns `value` (cast to x's dtype); once only."""
    original = torch.randn_like
    calls = []

    def fake(x, *args, **kwargs):
        if tuple(x.shape) != tuple(value.shape):
            raise RuntimeError(f"randn_like shape {tuple(x.shape)} != fixture noise {tuple(value.shape)}")
        calls.append(tuple(x.shape))
        return value.to(dtype=x.dtype, device=x.device).clone()

    torch.randn_like = fake
    try:
        yield calls
    finally:
        torch.randn_like = original
    if len(calls) != 1:
        raise RuntimeError(f"expected exactly one randn_like call, got {len(calls)}")


@contextlib.contextmanager
def embedding_in_input_dtype(TimestepEmbedder, torch):
    """Their timestep_embedding formula evaluated in t's dtype (only for the float64 run)."""
    original = TimestepEmbedder.__dict__["timestep_embedding"]

    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype) / half)
        args = t[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    TimestepEmbedder.timestep_embedding = staticmethod(timestep_embedding)
    try:
        yield
    finally:
        TimestepEmbedder.timestep_embedding = original


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    a = parse_args()
    repo = os.path.abspath(a.repo)
    out = os.path.abspath(a.out)
    sys.path.insert(0, repo)
    stubbed = install_import_only_stubs()

    import numpy as np  # noqa: F401  (their models/utils.py imports it)
    import torch
    import timm
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    import util
    import models  # noqa: F401  (registers their presets; we call PRDiT with explicit kwargs)
    from models.models import PRDiT, TimestepEmbedder
    from diffusion.flow_matching import FlowMatching

    S, B = a.input_size, a.batch
    in_channels, out_channels = 1, 1
    learn_sigma = out_channels == 2  # models/__init__.py:load_model

    def build(depth):
        return PRDiT(
            input_size=S, patch_size=a.patch, stride=a.stride, padding=a.padding,
            in_channels=in_channels, hidden_size=a.hidden, depth=depth, num_heads=a.heads,
            mlp_ratio=4.0, num_classes=1, learn_sigma=learn_sigma, flash_attn=False,
        )

    # ---- weights -------------------------------------------------------------------------
    gen = torch.Generator().manual_seed(a.seed)
    model2 = build(a.depth)
    assert model2.out_channels == out_channels
    with torch.no_grad():
        for _, p in model2.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * a.weight_std)
    sd2 = {k: v.detach().clone() for k, v in model2.state_dict().items()}
    param_names2 = [k for k, _ in model2.named_parameters()]
    assert sorted(param_names2) == sorted(sd2), "state dict has buffers or misses parameters"

    model1 = build(0)
    keys1 = list(model1.state_dict().keys())
    model1.load_state_dict({k: sd2[k] for k in keys1}, strict=True)
    for k in keys1:
        assert k.startswith(("coarse.", "t_embedder.mlp.0.", "t_embedder.coarse_head.")), k

    # ---- inputs --------------------------------------------------------------------------
    shape = (B, in_channels, S, S, S)
    x_data = torch.rand(shape, generator=gen, dtype=torch.float32) * 2.0 - 1.0
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    start_noise = torch.randn((1, in_channels, S, S, S), generator=gen, dtype=torch.float32)
    t = torch.tensor(a.t, dtype=torch.float32)

    # ---- their config object (for the checkpoint and for initialize_model_with_pretrained) --
    config = util.load_config(os.path.join(repo, "configs", "global", "lidc.yaml"))
    config.data.image_size = S
    config.model.name = (f"fixture: PRDiT(hidden={a.hidden}, patch={a.patch}, stride={a.stride}, "
                         f"padding={a.padding}, depth={a.depth}, heads={a.heads}) - not a registered preset")
    config.model.in_channels = in_channels
    config.model.out_channels = out_channels
    config.model.num_sampling_steps = a.euler_steps
    config.model.flash_attn = False
    config.model.pretrained_path = "stage1.pt"
    config.model.checkpoint = ""
    config.model.from_scratch = False  # train.py:main sets this; stage 2 is not from scratch

    # ---- stage 2 trainability, done by their own code ------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        stage1_ckpt = os.path.join(tmp, "stage1.pt")
        torch.save({"model": model1.state_dict(), "ema": model1.state_dict()}, stage1_ckpt)
        cfg_tmp = copy.deepcopy(config)
        cfg_tmp.model.pretrained_path = stage1_ckpt
        model2, pretrained_flag, new_names = util.initialize_model_with_pretrained(
            model=model2, config=cfg_tmp, device="cpu", gain=0.1, rank=1)
    assert pretrained_flag
    model2.load_state_dict(sd2, strict=True)  # fixture weights over everything; flags unchanged
    for k, v in model2.state_dict().items():
        assert torch.equal(v, sd2[k]), k
    trainable2 = [k for k, p in model2.named_parameters() if p.requires_grad]
    frozen2 = [k for k, p in model2.named_parameters() if not p.requires_grad]

    # stage 1 trainability as train.py:Trainer._setup_model leaves it (from scratch)
    if hasattr(model1.t_embedder, "fine_head"):
        model1.t_embedder.fine_head.requires_grad_(False)  # nn.Identity at depth 0: no-op
    trainable1 = [k for k, p in model1.named_parameters() if p.requires_grad]

    fm = FlowMatching(num_sampling_steps=a.euler_steps, loss_type="l2")  # diffusion/__init__.py
    E, H = a.euler_steps, a.heun_steps

    def compute(m1, m2, dtype):
        xd, nz, sn, tt = (v.to(dtype) for v in (x_data, noise, start_noise, t))
        r, g1, g2, info = {}, {}, {}, {}
        xt, target = fm.interpolate(xd, nz, tt)
        t_model = fm._model_t(tt)
        r.update(xt=xt, target=target, t_model=t_model)
        with torch.no_grad():
            c_coarse, c_fine = m2.t_embedder(t_model)
        r.update(c_coarse=c_coarse, c_fine=c_fine)

        for tag, m, grads in (("stage1", m1, g1), ("stage2", m2, g2)):
            m.train()
            with torch.no_grad():
                r[f"v_{tag}"] = m(xt, t_model)
            m.zero_grad(set_to_none=True)
            with randn_like_returns(torch, nz):
                loss_dict = fm.training_losses(m, xd, t=tt)
            # train.py:train_step: no noise_loss/img_loss keys -> loss_dict["loss"].mean()
            assert "noise_loss" not in loss_dict and "img_loss" not in loss_dict
            total = loss_dict["loss"].mean()
            per_sample = (r[f"v_{tag}"] - target).pow(2).mean(dim=(1, 2, 3, 4))
            info[f"loss_{tag}_per_sample"] = loss_dict["loss"].detach().double().tolist()
            info[f"loss_{tag}_recomputed_absdiff"] = float((per_sample.mean() - total).abs())
            total.backward()
            for k, p in m.named_parameters():
                if p.grad is not None:
                    grads[k] = p.grad.detach().clone()
            info[f"grad_norm_{tag}"] = float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(gr, 2) for gr in grads.values()]), 2))
            r[f"loss_{tag}"] = total.detach().reshape(1)
            m.zero_grad(set_to_none=True)

        m2.eval()
        with torch.no_grad():
            coarse, fine = m2(xt, t_model, return_intermediate=True)
        r.update(v_stage2_coarse=coarse, v_stage2_fine=fine)
        m2.train()
        with torch.enable_grad():
            c_out, f_out = m2(xt, t_model, return_intermediate=True)
            info["coarse_requires_grad_in_train_forward"] = bool(c_out.requires_grad)
            info["fine_requires_grad_in_train_forward"] = bool(f_out.requires_grad)

        m1.eval()
        with randn_like_returns(torch, nz):
            recon, xt05 = fm.predict_x_data(m1, xd, t_value=0.5)
        r.update(xt_t05=xt05, recon_t05=recon)

        m1.eval()
        m2.eval()
        x_e, _, nfe_e = fm.sample(m2, x_noise=sn, num_steps=E, solver="euler")
        x_h, _, nfe_h = fm.sample(m2, x_noise=sn, num_steps=H, solver="heun")
        x_e1, _, nfe_e1 = fm.sample(m1, x_noise=sn, num_steps=E, solver="euler")
        r[f"euler{E}_final"], r[f"heun{H}_final"], r[f"euler{E}_stage1_final"] = x_e, x_h, x_e1
        info.update(nfe_euler=nfe_e, nfe_heun=nfe_h, nfe_euler_stage1=nfe_e1)
        fm_loop = FlowMatching(num_sampling_steps=E, loss_type="l2")
        _, x_loop = fm_loop.p_sample_loop(m2.forward, sn.shape, sn, new_sampling=False)
        info["p_sample_loop_equals_sample"] = bool(torch.equal(x_loop, x_e))
        return r, g1, g2, info

    res, grads1, grads2, info = compute(model1, model2, torch.float32)
    assert info["p_sample_loop_equals_sample"], "p_sample_loop and sample disagree"
    assert sorted(grads1) == sorted(trainable1), "stage-1 gradients != stage-1 trainable set"
    assert sorted(grads2) == sorted(trainable2), "stage-2 gradients != stage-2 trainable set"
    assert info["coarse_requires_grad_in_train_forward"] is False

    acts = {"x_data": x_data, "noise": noise, "t": t}
    acts.update({k: res[k] for k in ("t_model", "xt", "target", "c_coarse", "c_fine",
                                     "v_stage1", "v_stage2", "v_stage2_coarse", "v_stage2_fine",
                                     "loss_stage1", "loss_stage2", "xt_t05", "recon_t05")})
    acts["start_noise"] = start_noise
    for k in (f"euler{E}_final", f"heun{H}_final", f"euler{E}_stage1_final"):
        acts[k] = res[k]
    for k, v in list(acts.items()):
        assert v.dtype == torch.float32, k
        acts[k] = v.detach().contiguous()

    # ---- float64 comparison (informational) ------------------------------------------------
    f64 = None
    if not a.skip_f64:
        m1d, m2d = copy.deepcopy(model1).double(), copy.deepcopy(model2).double()
        with embedding_in_input_dtype(TimestepEmbedder, torch):
            rd, g1d, g2d, _ = compute(m1d, m2d, torch.float64)

        def rel(x32, x64):
            x32, x64 = x32.double(), x64.double()
            return float((x32 - x64).abs().max() / x64.abs().max().clamp_min(1e-30))

        f64 = {"note": "max|f32 - f64| / max|f64| per tensor (f64: same code, their embedding "
                       "formula evaluated in float64)"}
        for k in acts:
            if k in rd:
                f64[k] = rel(acts[k], rd[k])
        f64["grads_stage1_max"] = max(rel(grads1[k], g1d[k]) for k in grads1)
        f64["grads_stage2_max"] = max(rel(grads2[k], g2d[k]) for k in grads2)

    # ---- checkpoint as train.py:Trainer.save_checkpoint writes it -------------------------
    ema = copy.deepcopy(model2)
    util.requires_grad(ema, False)
    util.update_ema(ema, model2, decay=0)  # Trainer._setup_training_state
    checkpoint = {
        "model": model2.state_dict(),
        "ema": ema.state_dict(),
        "config": config.to_dict(),
        "epoch": 0,
        "train_steps": 0,
    }

    # ---- write -----------------------------------------------------------------------------
    os.makedirs(out, exist_ok=True)
    st_meta = {"format": "pt"}
    save_file({k: v.contiguous() for k, v in sd2.items()},
              os.path.join(out, "flow_weights.safetensors"), metadata=st_meta)
    torch.save(checkpoint, os.path.join(out, "flow_checkpoint.pt"))
    save_file(acts, os.path.join(out, "flow_activations.safetensors"), metadata=st_meta)
    save_file({k: v.contiguous() for k, v in grads1.items()},
              os.path.join(out, "flow_grads_stage1.safetensors"), metadata=st_meta)
    save_file({k: v.contiguous() for k, v in grads2.items()},
              os.path.join(out, "flow_grads_stage2.safetensors"), metadata=st_meta)

    for name in os.listdir(out):
        if name.startswith("flow_"):
            os.chmod(os.path.join(out, name), 0o644)

    commit = None
    try:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip() or None
    except Exception:
        commit = None
    used_files = ["diffusion/flow_matching.py", "diffusion/__init__.py", "models/models.py",
                  "models/__init__.py", "models/local_denoiser.py", "models/global_refiner.py",
                  "models/classes.py", "models/utils.py", "util.py", "train.py",
                  "configs/global/lidc.yaml"]
    grid = S // a.stride
    token_dim = in_channels * a.patch ** 3
    meta = {
        "config": {
            "input_size": S,
            "in_channels": in_channels,
            "out_channels": model2.out_channels,
            "patch_size": a.patch,
            "stride": a.stride,
            "padding": a.padding,
            "hidden_size": a.hidden,
            "num_heads": a.heads,
            "depth": a.depth,
            "mlp_ratio": float(model2.fine.blocks[0].mlp.fc1.out_features / a.hidden),
            "frequency_size": int(model2.t_embedder.frequency_embedding_size),
        },
        "model_details": {
            "grid": grid,
            "num_tokens": grid ** 3,
            "token_dim": token_dim,
            "output_per_token": a.stride ** 3 * out_channels,
            "pad_mode": "reflect",
            "coarse_swiglu_hidden": int(model2.coarse.mlp_denoise.mlp1.fc1_x.out_features),
            "coarse_swiglu_norm_eps": float(model2.coarse.mlp_denoise.mlp1.norm.eps),
            "coarse_pre_norm_eps": float(model2.coarse.mlp_denoise.norm1.eps),
            "patch_embed_hidden": int(model2.fine.patch_embedder.fc1.out_features),
            "patch_embed_norm_eps": float(model2.fine.patch_embedder.norm.eps),
            "block_norm_eps": float(model2.fine.blocks[0].norm1.eps),
            "pos_embed": "non-persistent buffer (not in the state dict): "
                         "models/utils.py:get_normalized_3d_pos_enc(grid, hidden)",
        },
        "batch": B,
        "t": a.t,
        "seed": a.seed,
        "weight_std": a.weight_std,
        "draw_order": ["parameters (named_parameters order of the depth-L model)",
                       "x_data = rand*2-1", "noise = randn", "start_noise = randn"],
        "euler_steps": E,
        "heun_steps": H,
        "nfe": {"euler": info["nfe_euler"], "heun": info["nfe_heun"],
                "euler_stage1": info["nfe_euler_stage1"]},
        "embed_t_scale": fm.embed_t_scale,
        "loss_stage1": float(acts["loss_stage1"][0]),
        "loss_stage2": float(acts["loss_stage2"][0]),
        "loss_stage1_per_sample": info["loss_stage1_per_sample"],
        "loss_stage2_per_sample": info["loss_stage2_per_sample"],
        "loss_reduction": "FlowMatching.training_losses returns loss[b] = mean over (C,D,H,W) of "
                          "(v - target)^2; train.py:train_step backpropagates loss.mean() over "
                          "the batch (no noise_loss/img_loss keys in the flow-matching dict)",
        "grad_norm_stage1_preclip": info["grad_norm_stage1"],
        "grad_norm_stage2_preclip": info["grad_norm_stage2"],
        "gradient_clip": float(config.training.gradient_clip),
        "stage1_keys": keys1,
        "trainable_stage1": trainable1,
        "trainable_stage2": trainable2,
        "frozen_stage2": frozen2,
        "stage2_coarse_under_no_grad": not info["coarse_requires_grad_in_train_forward"],
        "checkpoint": {"top_level_keys": list(checkpoint.keys()),
                       "epoch": checkpoint["epoch"], "train_steps": checkpoint["train_steps"],
                       "ema_equals_model": True, "optimizer": "absent (save_optimizer=False)"},
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "python_version": platform.python_version(),
        "num_threads": torch.get_num_threads(),
        "repo_commit": commit,
        "repo_files_sha256": {f: sha256(os.path.join(repo, f)) for f in used_files
                              if os.path.exists(os.path.join(repo, f))},
        "stubbed_modules": stubbed,
        "command": " ".join([sys.executable, os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "shapes": {k: list(v.shape) for k, v in acts.items()},
        "param_shapes": {k: list(v.shape) for k, v in sd2.items()},
        "f32_vs_f64": f64,
    }
    with open(os.path.join(out, "flow_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(readme(a, meta, acts, grads1, grads2, sd2, E, H))
    print(f"wrote {out}: loss_stage1={meta['loss_stage1']:.6g} loss_stage2={meta['loss_stage2']:.6g} "
          f"params={len(sd2)} grads1={len(grads1)} grads2={len(grads2)}")


def readme(a, meta, acts, grads1, grads2, sd2, E, H):
    c, d = meta["config"], meta["model_details"]
    B, S = a.batch, a.input_size
    vol = f"[{B},1,{S},{S},{S}]"
    one = f"[1,1,{S},{S},{S}]"
    t_list = ", ".join(f"{x:g}" for x in a.t)
    f64 = meta["f32_vs_f64"]
    if f64:
        smp = max(f64[k] for k in (f"euler{E}_final", f"heun{H}_final", f"euler{E}_stage1_final"))
        grd = max(f64["grads_stage1_max"], f64["grads_stage2_max"])
        emb = max(f64["c_coarse"], f64["c_fine"])
        fwd = max(f64[k] for k in ("xt", "v_stage1", "v_stage2", "v_stage2_fine", "recon_t05"))
        measured = textwrap.fill(
            f"Measured against the same code run in float64 (`f32_vs_f64` in the meta, "
            f"max|diff| / max|value| per tensor): the embedder heads {emb:.1e}, the other "
            f"forward tensors up to {fwd:.1e}, the samplers up to {smp:.1e}, the gradients up "
            f"to {grd:.1e} (per tensor).", 96) + "\n\n"
    else:
        measured = ""
    n_coarse = sum(1 for k in sd2 if k.startswith("coarse."))
    n_fine = sum(1 for k in sd2 if k.startswith("fine."))
    return f"""# Flow fixture: PRDiT-FM (flow matching) on a small configuration

Produced by `scripts/make-flow-fixture.py`, which imports the authors' flow-matching follow-up
(PRDiT-FM, whose network code is byte-identical to PRDiT's) and records, on the CPU in float32
(torch {meta['torch_version']}, timm {meta['timm_version']}, Python {meta['python_version']},
{meta['num_threads']} threads, deterministic algorithms, no TF32, `flash_attn=False` so attention
is the plain fp32 softmax path), what its own classes compute. Command (from the repository
root, environment as in the script's docstring):

    {meta['command']}

Every parameter, including those the constructor zero-initialises, was overwritten with
N(0, {a.weight_std}²) from a `torch.Generator` seeded with {a.seed}, in `named_parameters()` order
of the depth-{a.depth} model; the same generator then drew `x_data`, `noise`, `start_noise`.

Configuration (`config` in `flow_meta.json`): input {S}³, 1 channel in, 1 out (the velocity
head: `learn_sigma` false), extraction patch {a.patch}, stride {a.stride} (= output patch edge),
reflect padding {a.padding}, hidden {a.hidden}, {a.heads} heads, MLP ratio {c['mlp_ratio']:g},
sinusoidal frequency size {c['frequency_size']}, transformer depth {a.depth} (stage 2; stage 1
is the same model at depth 0). Token grid {d['grid']}³ = {d['num_tokens']} tokens of width
{d['token_dim']}, {d['output_per_token']} outputs per token. Coarse SwiGLU hidden LayerNorm
eps {d['coarse_swiglu_norm_eps']:g} (timm default), patch-embedder LayerNorm eps
{d['patch_embed_norm_eps']:g}, the modulated norms eps {d['block_norm_eps']:g}. The positional
encoding is a non-persistent buffer (`get_normalized_3d_pos_enc`), not in any file.

## Conventions (PRDiT-FM's `diffusion/flow_matching.py`)

- t ∈ [0, 1]; t = 0 is noise, t = 1 is data: `x_t = (1 − t)·noise + t·x_data`.
- The model predicts the velocity `v = x_data − noise`; loss per sample = mean over (C,D,H,W) of
  `(v_pred − v)²`; the training step backpropagates the batch mean of that (`train.py`).
- The timestep embedder is fed `t · embed_t_scale` = `t · {meta['embed_t_scale']:g}` (a float32
  tensor times 1000.0, computed in float32; the exact values are in `t_model`). The sinusoidal
  embedding is computed in float32 whatever the model's dtype.
- Euler: N steps of dt = 1/N from t = 0: `x ← x + dt·v(x, k·dt)`.
- Heun: `x_pred = x + dt·v(x, k·dt)`, `x ← x + (dt·0.5)·(v + v(x_pred, min((k+1)·dt, 1)))`, so
  every step evaluates its end point, the last one at t = 1 (2N evaluations). The step times
  `k·dt` and `(k+1)·dt`, dt = 1/N, are float64 products rounded to float32 when put in a tensor.
- Stage 1 (depth 0): everything trainable. Stage 2 (depth {a.depth}): `coarse.*`,
  `t_embedder.mlp.0.*`, `t_embedder.coarse_head.*` frozen (`requires_grad` false, by
  `PRDiT.freeze_coarse_path` and again by `util.initialize_model_with_pretrained`), and the
  coarse branch runs under `torch.no_grad()` inside `PRDiT.forward`; `fine.*` and
  `t_embedder.fine_head.*` train.

## Files (safetensors, all float32; parameter names are the official state-dict keys)

- `flow_weights.safetensors`: the stage-2 model, all {len(sd2)} parameters ({n_coarse} `coarse.*`,
  {n_fine} `fine.*`, 6 `t_embedder.*`). The stage-1 model is its {len(meta['stage1_keys'])}
  `coarse.*`, `t_embedder.mlp.0.*`, `t_embedder.coarse_head.*` entries.
- `flow_checkpoint.pt`: the same weights, written as `train.py:Trainer.save_checkpoint` writes a
  checkpoint (`torch.save` zip/pickle): a dict with `model` (state dict, an `OrderedDict` of tensors with
  the official keys, as `model.module.state_dict()` gives), `ema` (another state dict, separate
  tensors, equal to `model` as right after `update_ema(ema, model, decay=0)`), `config` (a plain
  nested dict of str/int/float/bool: `Config.to_dict()` of their `configs/global/lidc.yaml` with
  this fixture's values; its `model.name` is a description, not a registered preset), `epoch`
  (int 0) and `train_steps` (int 0). Their checkpoints every 5000 steps and the final one also
  carry `optimizer` (an AdamW `state_dict()`); this one has none. Their `sample.py` reads `ema`,
  stage-2 initialisation reads `model`.
- `flow_activations.safetensors`:
  `x_data` {vol} (uniform in [-1, 1]), `noise` {vol} (N(0,1)), `t` [{B}] = [{t_list}],
  `t_model` [{B}] (= t·1000 in float32, the embedder input),
  `xt`, `target` {vol} (`interpolate(x_data, noise, t)`; target = x_data − noise),
  `c_coarse` [{B},{d['token_dim']}], `c_fine` [{B},{a.hidden}] (the stage-2 timestep embedder's heads at t_model),
  `v_stage1` {vol} (depth-0 model), `v_stage2` {vol} (depth-{a.depth} model),
  `v_stage2_coarse`, `v_stage2_fine` {vol} (its two branches, unpatchified; v_stage2 = their sum
  exactly: the sum is taken in patch space and unpatchifying only permutes),
  `loss_stage1`, `loss_stage2` [1] (batch mean of the per-sample losses; per-sample values in the
  meta),
  `xt_t05`, `recon_t05` {vol}: the stage-1 validation reconstruction (`predict_x_data` at
  t = 0.5, its noise draw replaced by `noise`): xt_t05 = 0.5·noise + 0.5·x_data,
  recon = xt_t05 + 0.5·v_stage1(xt_t05, 500),
  `start_noise` {one} (N(0,1)), `euler{E}_final` / `heun{H}_final` {one}: the stage-2 model's
  Euler ({E} steps) and Heun ({H} steps, {meta['nfe']['heun']} evaluations) samples from
  start_noise, `euler{E}_stage1_final` {one}: Euler {E} steps with the stage-1 model.
- `flow_grads_stage1.safetensors`: gradients of `loss_stage1` for all {len(grads1)} stage-1
  parameters.
- `flow_grads_stage2.safetensors`: gradients of `loss_stage2` for the {len(grads2)} trainable
  stage-2 parameters (`fine.*`, `t_embedder.fine_head.*`; list in `trainable_stage2`). Both are
  the raw gradients, before `train_step`'s `clip_grad_norm_({meta['gradient_clip']:g})`; the
  pre-clip total norms are in the meta.
- `flow_meta.json`: `config` (the fields a test builds its model from), `batch`, `t`, `seed`,
  `euler_steps`, `heun_steps`, `embed_t_scale`, losses, `trainable_stage2` and `frozen_stage2`,
  `shapes` of every activation, `param_shapes`, versions, `repo_commit` (null: the source tree
  used was not a git checkout; `repo_files_sha256` identifies the files), `f32_vs_f64`. A test
  should take the configuration, batch, times and step counts from this file, so that another
  folder made by the script with other arguments is checked by the same test.

## Expected agreement

{measured}A float32 CPU implementation should agree to about 1e-5 relative (max|diff| /
max|value|) for the volumes, the losses and the sampler outputs, 5e-5 for `c_coarse`/`c_fine`
(the sinusoid of float32 arguments up to t·1000 ≈ 1000 is where float32 rounding shows most;
their code forms `t_model · freq` as a float32 product, and an implementation that does the same
sits closer), and 1e-4 for the gradients.
"""


if __name__ == "__main__":
    main()
