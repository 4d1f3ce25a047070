#!/usr/bin/env python3
"""The official LIDC-IDRI preprocessing (scripts/preproc_lidc_idri.py of the official repository:
dicom2nifti, scipy zoom(order=3, mode='nearest') to 1 mm, centre crop 256, clip, 0.999 quantile,
min-max) and its loader (AvgPool3d(2), 2x - 1) on one DICOM series, compared with prdit's
volume of the same series. Needs numpy, scipy, nibabel, dicom2nifti.
Usage: lidc-vs-official.py DICOM_DIR WORK_DIR [PRDIT_VOLUME.nii.gz]
"""
import os, sys, numpy as np, nibabel as nib, dicom2nifti
from scipy.ndimage import zoom
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
dicom2nifti.convert_directory(src, out)
f = [x for x in os.listdir(out) if x.endswith('.nii.gz')][0]
img = nib.load(os.path.join(out, f))
print("dicom2nifti:", f, img.shape, img.header.get_zooms(), nib.aff2axcodes(img.affine))
vs = img.header.get_zooms()
z = zoom(img.get_fdata(), [c / 1.0 for c in vs], order=3, mode='nearest')
d, h, w = z.shape
c = z[(d-256)//2:(d-256)//2+256, (h-256)//2:(h-256)//2+256, (w-256)//2:(w-256)//2+256].copy()
c[c < -1000] = -1000
o = np.clip(c, -1000, np.quantile(c, 0.999))
n = (o - o.min()) / (o.max() - o.min())
p = n.reshape(128, 2, 128, 2, 128, 2).mean(axis=(1, 3, 5))
final = 2 * p - 1
np.save(os.path.join(out, 'official128.npy'), final)
print("zoomed", z.shape, "quantile", np.quantile(c, 0.999))

# Compare with prdit's volume of the same series (prdit prepare --recipe lidc --size 128), given
# as the third argument; prdit writes LPS, dicom2nifti's arrays are LAS: mirror j.
if len(sys.argv) > 3:
    pr = np.asarray(nib.load(sys.argv[3]).get_fdata())[:, ::-1, :]
    d = np.abs(pr - final)
    print(f"prdit vs official: mean |diff| {d.mean():.2e}, max {d.max():.2e}, "
          f"corr {np.corrcoef(pr.ravel(), final.ravel())[0, 1]:.9f}, mean {pr.mean():.6f} vs {final.mean():.6f}")
