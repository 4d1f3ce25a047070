#!/usr/bin/env python3
"""Reference arrays for prdit's LIDC recipe, computed with the official code's operations.

Takes a 40x36x28 crop from the middle of a real chest CT (the TotalSegmentator CTA that
scripts/fetch-ct-samples.sh fetches), treats it as sampled at 0.7 x 0.7 x 2.5 mm, and runs the
official `scripts/preproc_lidc_idri.py` steps on it with scipy/numpy, at a field of view of 24
voxels instead of 256 (the same code paths, a small fixture):
  zoom(order=3, mode='nearest') to 1 mm -> centre crop -> clip < -1000 -> clip at the 0.999
  quantile of the crop -> min-max to [0, 1] -> the loader's AvgPool3d(2) -> 2x - 1.
Writes tests/fixtures/zoom/: crop.f32 (the input, float32 little-endian, C order), zoomed.f64,
final.f64 (float64 little-endian) and meta.json (shapes, zoom factors, quantile, min, max).
Needs numpy, scipy and nibabel. Usage: make-zoom-fixture.py CT_SAMPLES_DIR OUT_DIR
"""
import json
import os
import sys

import nibabel as nib
import numpy as np
from scipy.ndimage import zoom

src, out = sys.argv[1], sys.argv[2]
ct = np.asarray(nib.load(os.path.join(src, "totalseg_chest_cta.nii.gz")).get_fdata(), dtype=np.float64)
c = [s // 2 for s in ct.shape]
crop = ct[c[0] - 20:c[0] + 20, c[1] - 18:c[1] + 18, c[2] - 14:c[2] + 14].astype(np.float32)
spacing = (0.7, 0.7, 2.5)
factors = [s / 1.0 for s in spacing]
zoomed = zoom(crop.astype(np.float64), factors, order=3, mode="nearest")
fov = 24
d, h, w = zoomed.shape
ds, hs, ws = (d - fov) // 2, (h - fov) // 2, (w - fov) // 2
cropped = zoomed[ds:ds + fov, hs:hs + fov, ws:ws + fov].copy()
cropped[cropped < -1000] = -1000
q = float(np.quantile(cropped, 0.999))
clipped = np.clip(cropped, -1000, q)
lo, hi = float(clipped.min()), float(clipped.max())
normalized = (clipped - lo) / (hi - lo)
pooled = normalized.reshape(fov // 2, 2, fov // 2, 2, fov // 2, 2).mean(axis=(1, 3, 5))
final = 2 * pooled - 1
os.makedirs(out, exist_ok=True)
crop.astype("<f4").tofile(os.path.join(out, "crop.f32"))
zoomed.astype("<f8").tofile(os.path.join(out, "zoomed.f64"))
final.astype("<f8").tofile(os.path.join(out, "final.f64"))
meta = {
    "source": "totalseg_chest_cta.nii.gz (TotalSegmentator 2.18.0 test data), centre crop",
    "crop_shape": list(crop.shape),
    "spacing_mm": list(spacing),
    "zoom_factors": factors,
    "zoomed_shape": list(zoomed.shape),
    "fov": fov,
    "quantile_0999": q,
    "min": lo,
    "max": hi,
    "final_shape": list(final.shape),
    "numpy": np.__version__,
    "scipy": __import__("scipy").__version__,
}
with open(os.path.join(out, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
print(json.dumps(meta, indent=1))
