#!/usr/bin/env python3
"""Reference arrays for prdit's RAD-ChestCT recipe, computed with the official code's operations.

Takes a 31x28x27 crop from a chest region of a real CT (the TotalSegmentator CTA that
scripts/fetch-ct-samples.sh fetches), stores it as the RAD-ChestCT release does (an .npz with a
`ct` array of int16 HU, compressed), and runs the official `scripts/preproc_rad_chestct.py`
steps on it with numpy/scipy, at a crop of 24 voxels instead of 256 and a target of 12 instead
of 128 (the same code paths, a small fixture):
  float32 -> clip [-1000, 1000] -> centre crop ((dim - 24) // 2) ->
  zoom(order=1, mode='constant', cval=-1000) by 12/24 -> clip at the 0.995 quantile ->
  min-max to [0, 1].
Also writes small .npz files that prepare must refuse: no `ct`/`volume` key, a 2D and a 4D
array, a NaN.
Writes into OUT_DIR: rad_input.npz, rad_zoomed.f32, rad_final.f32 (float32 little-endian, C
order), rad_meta.json and rad_bad_*.npz. Needs numpy, scipy and nibabel.
Usage: make-rad-fixture.py CT_SAMPLES_DIR OUT_DIR
"""
import json
import os
import sys

import nibabel as nib
import numpy as np
from scipy.ndimage import zoom

src, out = sys.argv[1], sys.argv[2]
ct = np.asarray(nib.load(os.path.join(src, "totalseg_chest_cta.nii.gz")).get_fdata())
c = [s // 2 for s in ct.shape]
# 30 voxels off centre along i: lung, soft tissue and bone, so the quantile clips.
raw = np.round(ct[c[0] + 15:c[0] + 46, c[1] - 14:c[1] + 14, c[2] - 13:c[2] + 14]).astype(np.int16)
os.makedirs(out, exist_ok=True)
np.savez_compressed(os.path.join(out, "rad_input.npz"), ct=raw)

# The official steps (preprocess_volume with CANONICAL_CROP_SHAPE 24, target 12).
fov, size, upper = 24, 12, 0.995
volume = np.clip(np.asarray(raw, dtype=np.float32), -1000.0, 1000.0)
starts = [(s - fov) // 2 for s in volume.shape]
cropped = volume[tuple(slice(st, st + fov) for st in starts)]
factors = [float(size) / float(s) for s in cropped.shape]
zoomed = zoom(cropped, factors, order=1, mode="constant", cval=-1000.0).astype(np.float32)
q = np.quantile(zoomed, upper)
clipped = np.clip(zoomed, -1000.0, q)
lo, hi = float(clipped.min()), float(clipped.max())
final = ((clipped - lo) / (hi - lo)).astype(np.float32)
zoomed.astype("<f4").tofile(os.path.join(out, "rad_zoomed.f32"))
final.astype("<f4").tofile(os.path.join(out, "rad_final.f32"))

np.savez(os.path.join(out, "rad_bad_nokey.npz"), image=raw[:4, :4, :4])
np.savez(os.path.join(out, "rad_bad_2d.npz"), ct=raw[0])
np.savez(os.path.join(out, "rad_bad_4d.npz"), ct=raw[None, :4, :4, :4])
nan = raw[:8, :8, :8].astype(np.float32)
nan[3, 4, 5] = np.nan
np.savez(os.path.join(out, "rad_bad_nan.npz"), ct=nan)

meta = {
    "source": "totalseg_chest_cta.nii.gz (TotalSegmentator 2.18.0 test data), a 31x28x27 crop 30 voxels off centre along i, int16",
    "input_shape": list(raw.shape),
    "fov": fov,
    "size": size,
    "crop_starts": starts,
    "zoom_factors": factors,
    "quantile_0995": float(q),
    "min": lo,
    "max": hi,
    "numpy": np.__version__,
    "scipy": __import__("scipy").__version__,
}
with open(os.path.join(out, "rad_meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
print(json.dumps(meta, indent=1))
