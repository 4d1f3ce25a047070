#!/usr/bin/env python3
"""Compares sample sets of one trained model drawn with different samplers from the same seeds
(`prdit sample ... --out cmp/NAME`): value statistics, the fraction outside [-1, 1], tissue
fractions in HU through the phantom window [-1000, 1000], and the RMS difference to the official
deterministic sampler's volumes (the same starting noise). Paths are those of the run reported
in docs/samplers.md; edit them for another run. Needs numpy and nibabel.
"""
import glob, numpy as np, nibabel as nib
def load(d): return np.stack([np.asarray(nib.load(f).get_fdata()) for f in sorted(glob.glob(d + '/*.nii.gz'))[:8]])
sets = {k: load(f'/tmp/demo-check/cmp/{k}/xs') for k in ['hot1000', 'det1000', 'dpm50', 'dpm20']}
sets['data'] = load('/tmp/demo-check/prdit-demo/data')
lo, hi = -1000.0, 1000.0
def fractions(x):
    hu = lo + (np.clip(x, -1, 1) + 1) / 2 * (hi - lo)
    return [np.mean(hu < -900), np.mean((hu >= -900) & (hu < -500)), np.mean((hu >= -500) & (hu < 300)), np.mean(hu >= 300)]
print("| set | mean | std | outside [-1,1] | air <-900 | lung -900..-500 | soft -500..300 | bone >300 |")
print("|---|---|---|---|---|---|---|---|")
for k, x in sets.items():
    f = fractions(x)
    print(f"| {k} | {x.mean():.3f} | {x.std():.3f} | {np.mean(np.abs(x) > 1):.4f} | " + " | ".join(f"{v:.3f}" for v in f) + " |")
for k in ['dpm50', 'dpm20']:
    d = sets[k] - sets['det1000']
    print(f"RMS {k} - det1000 (same noise): {np.sqrt(np.mean(d**2)):.4f}; det1000 std {sets['det1000'].std():.3f}")
d = sets['hot1000'] - sets['det1000']
print(f"RMS hot1000 - det1000: {np.sqrt(np.mean(d**2)):.4f}")
