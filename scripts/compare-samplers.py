#!/usr/bin/env python3
"""Compares sample sets of one trained model drawn with different samplers from the same seeds
(`prdit sample --run RUN --out CMP/NAME --num 8 --sampler ... --steps ...`) with the training
phantoms: value statistics, the fraction outside [-1, 1], the tissue mix in HU through the
phantom window [-1000, 1000] (the classes of `prdit demo`: air < -950, lung -950..-500, soft
-500..200, bone >= 200; lung volume in mL) and the RMS difference to the official deterministic
sampler's volumes (the same starting noise). Prints a Markdown table.
Needs numpy and nibabel.
Usage: compare-samplers.py CMP_DIR DATA_DIR [REFERENCE_SET]
  CMP_DIR: one folder per sampler (its xs/ is read); DATA_DIR: the phantoms (model space).
"""
import glob
import os
import sys

import nibabel as nib
import numpy as np

cmp_dir, data_dir = sys.argv[1], sys.argv[2]
ref_name = sys.argv[3] if len(sys.argv) > 3 else "deterministic-1000"


def load(d):
    files = sorted(glob.glob(os.path.join(d, "*.nii.gz")))
    vols = [nib.load(f) for f in files]
    spacing = vols[0].header.get_zooms()[:3]
    return np.stack([np.asarray(v.get_fdata(), dtype=np.float64) for v in vols]), float(np.prod(spacing))


sets = {}
for d in sorted(glob.glob(os.path.join(cmp_dir, "*", "xs"))):
    sets[os.path.basename(os.path.dirname(d))] = load(d)
sets["training phantoms"] = load(data_dir)


def mix(x, voxel_mm3):
    hu = -1000.0 + (x + 1.0) / 2.0 * 2000.0
    f = [np.mean(hu < -950), np.mean((hu >= -950) & (hu < -500)), np.mean((hu >= -500) & (hu < 200)), np.mean(hu >= 200)]
    lung_ml = np.mean(np.sum((hu >= -950) & (hu < -500), axis=(1, 2, 3))) * voxel_mm3 / 1000.0
    return f, lung_ml


print("| set | mean | std | outside [-1, 1] | air | lung | soft tissue | bone | lung mL | RMS to " + ref_name + " |")
print("|---|---|---|---|---|---|---|---|---|---|")
ref = sets.get(ref_name, (None, None))[0]
for k, (x, v) in sets.items():
    f, lung = mix(x, v)
    rms = np.sqrt(np.mean((x - ref) ** 2)) if ref is not None and x.shape == ref.shape and k != "training phantoms" else float("nan")
    print(
        f"| {k} | {x.mean():.3f} | {x.std():.3f} | {np.mean(np.abs(x) > 1):.4f} | "
        + " | ".join(f"{100 * v:.1f} %" for v in f)
        + f" | {lung:.0f} | {rms:.3f} |"
    )
