#!/usr/bin/env python3
"""Parity fixture for TF-PRDiT's sparse-view X-ray task: DiffDRR's Siddon projector as their
`conds/ct2xrays.py:get_xrays_from_ct` calls it, and their X-ray guided sampler
(`diffusion/image_noise_diffusion.py:XrayGuidedIaNDiffusion._guided_steps`).

Projector part: for one random volume [1,1,S,S,S] (`torch.randn` seeded with --seed) and each
view count of --views, their `get_xrays_from_ct(volume, idx=0, rotations=N)` (DiffDRR, Siddon,
the pose and detector they set up) gives the DRRs [N,1,S,S]; a random residual r of that shape
gives Aᵀr = autograd.grad(<A(x), r>, x) (what their guidance differentiates through); the rays
DiffDRR traced (`Detector.forward`'s source and target, world mm) are recorded by wrapping that
method (it passes everything through unchanged).

Sampler part: the ORIGINAL PRDiT network with the weights and configuration of --parity (as
`scripts/make-restore-fixture.py`), `XrayGuidedIaNDiffusion(timestep_respacing=K)` with its
default `XrayGuidanceConfig` (k 4, rho 0.70, lambda_n 0.95, cutoff 20) and `p_sample_loop(...,
new_sampling=True, rotations=--guided-views, model_kwargs={"y": None})` as their
`sample_xrays.py:generate_diffusion_samples` calls it, from `start` = a seeded normal volume; the
measurement is their `get_xrays_from_ct(truth, rotations=N)` with truth = parity `x0[0]`
([C,D,H,W], as their dataset rows). Every `torch.randn_like` in the loop (their `gen_noise`) is
replaced by the next recorded tensor of `noise`; any other draw raises. Nothing of their code
is copied here.

Environment (as the checked-in fixture was made; DiffDRR is pinned because its pose and
detector conventions changed between releases):

    python3 -m venv /tmp/fm-venv
    /tmp/fm-venv/bin/pip install diffdrr==0.6.1 torchio==1.2.1 timm==1.0.15 safetensors \
        opencv-python-headless scikit-image h5py nibabel pyyaml tqdm
    /tmp/fm-venv/bin/python scripts/make-xray-fixture.py --tfrepo /tmp/tfread --prrepo /tmp/prread

(`wandb`, imported at the top of their util.py and never used here, is an import-only stand-in.)
"""

import argparse
import hashlib
import json
import math
import os
import sys
import types


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="tests/fixtures/xray", help="output folder")
    p.add_argument("--size", type=int, default=16, help="edge S of the projector's volume")
    p.add_argument("--views", default="1,2,3,5", help="view counts for the projector records")
    p.add_argument("--guided-views", type=int, default=2, help="views of the guided run")
    p.add_argument("--steps", type=int, default=10, help="K: their --num-sampling-steps")
    p.add_argument("--seed", type=int, default=0, help="seed of every recorded draw")
    p.add_argument("--parity", default="tests/fixtures/parity", help="parity fixture (network)")
    p.add_argument("--tfrepo", default="/tmp/tfread", help="TF-PRDiT source tree")
    p.add_argument("--prrepo", default="/tmp/prread", help="original PRDiT source tree")
    return p.parse_args()


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    a = parse_args()
    tfrepo, prrepo = os.path.abspath(a.tfrepo), os.path.abspath(a.prrepo)
    out, parity = os.path.abspath(a.out), os.path.abspath(a.parity)
    views = [int(v) for v in a.views.split(",") if v]
    sys.modules["wandb"] = types.ModuleType("wandb")

    import torch
    import diffdrr
    import diffdrr.detector
    import torchio
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(a.seed)

    # ---- the original PRDiT network (its `models`/`util` first, then forgotten) -------------
    sys.path.insert(0, prrepo)
    stub = types.ModuleType("datasets")  # PRDiT's util imports its data code (monai): not needed
    stub.get_voxel_dataset = None
    sys.modules["datasets"] = stub
    import util  # noqa: F401
    from models.models import PRDiT
    sys.path.remove(prrepo)
    for name in [m for m in sys.modules if m in ("models", "util", "datasets") or m.startswith("models.")]:
        del sys.modules[name]
    with open(os.path.join(parity, "parity_meta.json")) as f:
        pc = json.load(f)["config"]
    S_net = int(pc["input_size"])
    model = PRDiT(
        input_size=S_net, patch_size=pc["patch_size"], stride=pc["stride"], padding=pc["padding"],
        in_channels=pc["in_channels"], hidden_size=pc["hidden_size"], depth=pc["depth"],
        num_heads=pc["num_heads"], mlp_ratio=pc["mlp_ratio"], num_classes=1,
        learn_sigma=(pc["out_channels"] == 2), flash_attn=False,
    )
    model.load_state_dict(load_file(os.path.join(parity, "parity_weights.safetensors")), strict=True)
    model.eval()
    pacts = load_file(os.path.join(parity, "parity_activations.safetensors"))
    with torch.no_grad():
        chk = model(pacts["xt"], pacts["t"])
    parity_check = float((chk - pacts["out"]).abs().max() / pacts["out"].abs().max())
    assert parity_check < 1e-4, parity_check

    # ---- TF-PRDiT's projector and sampler ---------------------------------------------------
    sys.path.insert(0, tfrepo)
    from conds.ct2xrays import get_xrays_from_ct
    import conds.ct2xrays as ct2xrays
    from diffusion.image_noise_diffusion import XrayGuidedIaNDiffusion, XrayGuidanceConfig
    assert ct2xrays.__file__.startswith(tfrepo)

    rays = []
    orig_forward = diffdrr.detector.Detector.forward

    def recording_forward(self, extrinsic, calibration):
        source, target = orig_forward(self, extrinsic, calibration)
        rays.append((source.detach().clone(), target.detach().clone()))
        return source, target

    diffdrr.detector.Detector.forward = recording_forward

    tensors, meta_views = {}, {}
    S = a.size
    volume = torch.randn(1, 1, S, S, S, generator=gen)
    tensors["volume"] = volume
    for n in views:
        x = volume.clone().requires_grad_(True)
        rays.clear()
        drr = get_xrays_from_ct(x, idx=0, device="cpu", rotations=n)
        assert len(rays) == 1, len(rays)
        r = torch.randn(drr.shape, generator=gen)
        (adj,) = torch.autograd.grad((drr * r).sum(), x)
        tensors[f"drr_v{n}"] = drr.detach().clone()
        tensors[f"resid_v{n}"] = r
        tensors[f"adj_v{n}"] = adj
        tensors[f"source_v{n}"] = rays[0][0]
        tensors[f"target_v{n}"] = rays[0][1]
        meta_views[str(n)] = {"drr_shape": list(drr.shape), "source_shape": list(rays[0][0].shape),
                              "target_shape": list(rays[0][1].shape)}

    # ---- the guided sampler -----------------------------------------------------------------
    K, nv = a.steps, a.guided_views
    truth = pacts["x0"][0].detach().clone()  # [1,S,S,S]
    y = get_xrays_from_ct(truth, idx=0, device="cpu", rotations=nv).detach().clone()
    diffusion = XrayGuidedIaNDiffusion(timestep_respacing=str(K), loss_type="l2")
    cfg = diffusion.config
    cfg.debug = False
    cfg.save_detailed = False
    start = torch.randn(1, 1, S_net, S_net, S_net, generator=gen)
    noise = [torch.randn(1, 1, S_net, S_net, S_net, generator=gen) for _ in range(K)]
    used, grads, captured = [], [], {}
    orig_randn_like, orig_grad, orig_randn = torch.randn_like, torch.autograd.grad, torch.randn

    def fake_randn_like(x, *args, **kwargs):
        if len(used) >= len(noise) or tuple(x.shape) != tuple(noise[0].shape):
            raise RuntimeError(f"unexpected randn_like {tuple(x.shape)} (call {len(used)})")
        f = sys._getframe(1)
        while f is not None and f.f_code.co_name != "_guided_steps":
            f = f.f_back
        if f is None:
            raise RuntimeError("randn_like outside the sampling loop")
        used.append([int(f.f_locals["i"]), int(f.f_locals["j"])])
        return noise[len(used) - 1].clone()

    def no_randn(*args, **kwargs):
        raise RuntimeError("unexpected torch.randn during sampling")

    def logging_grad(outputs, inputs, *args, **kwargs):
        res = orig_grad(outputs, inputs, *args, **kwargs)
        grads.append((float(outputs.detach()), res[0].detach().clone()))
        return res

    orig_steps = diffusion._guided_steps

    def recording_steps(*args, **kwargs):
        x0_preds, xs = orig_steps(*args, **kwargs)
        captured["x0_preds"], captured["xs"] = x0_preds, xs
        return x0_preds, xs

    diffusion._guided_steps = recording_steps
    torch.randn_like, torch.autograd.grad, torch.randn = fake_randn_like, logging_grad, no_randn
    try:
        result = diffusion.p_sample_loop(
            model=model.forward, z=start.clone(), conditions=y, idx=0, sample_dir=None,
            device=torch.device("cpu"), ref_vol=truth[0], new_sampling=True, rotations=nv,
            model_kwargs={"y": None},
        )
    finally:
        torch.randn_like, torch.autograd.grad, torch.randn = orig_randn_like, orig_grad, orig_randn
    assert torch.equal(result, captured["x0_preds"][-1])
    with torch.no_grad():
        eps1, x01 = model(start, torch.full((1,), 1000 - 1000 // K, dtype=torch.long)).chunk(2, dim=1)
    tensors.update({
        "truth": truth, "y_xray": y, "start": start, "noise": torch.stack(noise[: len(used)]),
        "eps1": eps1, "x0raw1": x01, "g1_xray": grads[0][1], "x1_xray": captured["xs"][1],
        "out_xray": result.detach().clone(),
    })
    os.makedirs(out, exist_ok=True)
    save_file({k: v.contiguous().float() for k, v in tensors.items()},
              os.path.join(out, "xray_reference.safetensors"))
    seq = list(range(0, 1000, 1000 // K))
    pairs = list(zip(reversed(seq), reversed([0] + seq[:-1])))
    meta = {
        "size": S, "views": views, "view_records": meta_views, "seed": a.seed,
        "geometry": {"sad_mm": ct2xrays.SAD, "sdd_mm": ct2xrays.SID,
                     "physical_size_mm": ct2xrays.PHYSICAL_SIZE,
                     "parameterization": ct2xrays.PARAMETERIZATION,
                     "convention": ct2xrays.CONVENTION, "renderer": "siddon"},
        "guided": {"views": nv, "steps": K, "time_grid_pairs": pairs,
                   "k_forward_step": cfg.forward_step, "rho_guidance_scale": cfg.guidance_scale,
                   "lambda_n_noise_weight": cfg.noise_weight, "cutoff": cfg.guidance_cutoff,
                   "w": "0.5(1+cos((1-i/1000)pi)) = sin^2(phi)", "draws": used,
                   "guided_losses": [g[0] for g in grads], "input_size": S_net,
                   "defaults": XrayGuidanceConfig().__dict__},
        "parity_model_check_rel": parity_check,
        "parity_files_sha256": {"parity_weights.safetensors":
                                sha256(os.path.join(parity, "parity_weights.safetensors"))},
        "versions": {"torch": torch.__version__, "diffdrr": diffdrr.__version__,
                     "torchio": torchio.__version__, "python": sys.version.split()[0]},
        "source_sha256": {f: sha256(os.path.join(tfrepo, f)) for f in
                          ["conds/ct2xrays.py", "conds/utils.py",
                           "diffusion/image_noise_diffusion.py"]},
    }
    with open(os.path.join(out, "xray_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps({k: meta[k] for k in ("size", "views", "versions")}))
    print("draws", used, "losses", [round(g[0], 4) for g in grads])


if __name__ == "__main__":
    main()
