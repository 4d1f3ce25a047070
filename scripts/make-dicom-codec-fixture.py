#!/usr/bin/env python3
"""Small synthetic CT series in three DICOM encodings, for prdit's DICOM reader tests.

Builds one 40x40-pixel, 6-slice axial CT phantom in Hounsfield units (air -1000 outside a body
ellipse of soft tissue at 40 HU, two lungs at -800, a vertebral body at +700 posterior, a
-100 HU nodule that moves from slice to slice, and +-16 HU of seeded noise) and writes it as
three series of CT Image Storage files (one slice per file):

  uncompressed/  Explicit VR Little Endian (1.2.840.10008.1.2.1): 16 bits allocated, 12 stored,
                 unsigned, RescaleSlope 1, RescaleIntercept -1024 (stored = HU + 1024)
  rle/           RLE Lossless (1.2.840.10008.1.2.5), encoded by pydicom's own RLE encoder:
                 16 bits, signed, RescaleSlope 1, RescaleIntercept 0 (stored = HU, negative
                 values included)
  jpeg/          JPEG Baseline 8-bit (1.2.840.10008.1.2.4.50): 8-bit codes q, RescaleSlope 8,
                 RescaleIntercept -1024 (HU = 8 q - 1024), each slice encoded by Pillow
                 (quality 95, greyscale) and encapsulated with pydicom's `encapsulate`

The phantom is made on the 8-bit grid (HU = 8 q - 1024 for integer q), so every encoding stores
the same HU exactly and only JPEG's lossy step differs.

The files are numbered from the top (slice-00 is the most superior, as scanners number them),
so a reader must order them by Image Position (Patient). Orientation is axial, rows along +x
(patient left), columns along +y (posterior); PixelSpacing is [0.7, 0.9] mm (row spacing,
column spacing: deliberately unequal), slices 2.5 mm apart. Each series has its own
SeriesInstanceUID (one study); the UIDs are derived deterministically from the seed.

Also writes, in OUT_DIR:
  hu_reference.f32  the HU volume every encoding stores, float32 little-endian, in prdit's
                    Volume order: dims [columns, rows, slices] = [40, 40, 6] (i = column
                    along +x, j = row along +y, k = slice by increasing z), flat index
                    (i * 40 + j) * 6 + k
  jpeg_pillow_hu.f32 the same layout: HU of the JPEG series as Pillow decodes it (8 q' - 1024)
  meta.json         shapes, spacing, UIDs, versions, the JPEG errors in codes and HU
Every file is read back with pydicom (RLE by its decoder, JPEG through Pillow) and checked.

Usage: make-dicom-codec-fixture.py OUT_DIR [SEED]      (needs numpy, pydicom >= 3, Pillow)
"""
import io
import json
import os
import sys

import numpy as np
import PIL
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

out = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 7
ROWS, COLS, SLICES = 40, 40, 6
ROW_SPACING, COL_SPACING, STEP = 0.7, 0.9, 2.5  # PixelSpacing = [row spacing, column spacing]
ORIGIN = [-COLS * COL_SPACING / 2, -ROWS * ROW_SPACING / 2, 100.0]  # top slice at z = 100
SLOPE_JPEG, INTERCEPT_JPEG = 8, -1024

rng = np.random.default_rng(seed)


def phantom_codes():
    """[slice (file order, top first), row, column] uint8 codes q with HU = 8 q - 1024."""
    r, c = np.mgrid[0:ROWS, 0:COLS].astype(np.float64)
    y, x = (r - 19.5) / 19.5, (c - 19.5) / 19.5  # -1..1; y grows posterior, x patient left
    hu = np.full((SLICES, ROWS, COLS), -1000.0)
    for s in range(SLICES):
        z = s / (SLICES - 1)  # 0 top .. 1 bottom
        sl = hu[s]
        body = (x / 0.9) ** 2 + (y / (0.7 + 0.05 * z)) ** 2 <= 1
        sl[body] = 40.0
        for cx in (-0.42, 0.42):  # lungs, shrinking towards the bottom
            lung = ((x - cx) / (0.3 - 0.08 * z)) ** 2 + ((y + 0.05) / 0.45) ** 2 <= 1
            sl[lung] = -800.0
        bone = x ** 2 + (y - 0.5) ** 2 <= 0.16 ** 2  # vertebral body, posterior (+y)
        sl[bone] = 700.0
        nodule = (x - 0.4 + 0.1 * s) ** 2 + (y + 0.1) ** 2 <= 0.1 ** 2  # moves along x
        sl[nodule] = -100.0
        sl[body] += rng.integers(-16, 17, size=int(body.sum()))
    return np.clip(np.round((hu + 1024) / 8), 0, 255).astype(np.uint8)


codes = phantom_codes()
hu = codes.astype(np.int32) * SLOPE_JPEG + INTERCEPT_JPEG  # exact HU of every encoding

study_uid = generate_uid(entropy_srcs=["prdit dicom codec fixture study", str(seed)])
frame_uid = generate_uid(entropy_srcs=["prdit dicom codec fixture frame", str(seed)])


def base(kind, s, series_uid):
    """A CT Image Storage dataset for slice s (file order) of the series `kind`."""
    sop_uid = generate_uid(entropy_srcs=["prdit dicom codec fixture", kind, str(seed), str(s)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["prdit fixture implementation"])
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = "CT"
    ds.PatientName = "Phantom^Codec"
    ds.PatientID = "PRDIT-CODEC"
    ds.StudyDate = "20250101"
    ds.SeriesDescription = f"prdit codec fixture ({kind})"
    ds.SeriesNumber = {"uncompressed": 1, "rle": 2, "jpeg": 3}[kind]
    ds.InstanceNumber = s + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [f"{ORIGIN[0]:g}", f"{ORIGIN[1]:g}", f"{ORIGIN[2] - STEP * s:g}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [f"{ROW_SPACING:g}", f"{COL_SPACING:g}"]
    ds.SliceThickness = f"{STEP:g}"
    ds.SliceLocation = f"{ORIGIN[2] - STEP * s:g}"
    ds.KVP = "120"
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleType = "HU"
    return ds


def save(ds, path):
    ds.save_as(path, enforce_file_format=True)


series_uids = {
    k: generate_uid(entropy_srcs=["prdit dicom codec fixture series", k, str(seed)])
    for k in ("uncompressed", "rle", "jpeg")
}
for k in series_uids:
    os.makedirs(os.path.join(out, k), exist_ok=True)

jpeg_decoded = np.zeros_like(codes)
jpeg_bytes = []
for s in range(SLICES):
    name = f"slice-{s:02d}.dcm"
    # Uncompressed: unsigned, 12 bits stored, stored = HU + 1024.
    ds = base("uncompressed", s, series_uids["uncompressed"])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    stored = (hu[s] + 1024).astype(np.uint16)
    assert stored.max() < 4096
    ds.PixelData = stored.tobytes()  # little endian on this machine (checked below)
    save(ds, os.path.join(out, "uncompressed", name))

    # RLE Lossless: signed 16 bits, stored = HU.
    ds = base("rle", s, series_uids["rle"])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
    ds.compress(RLELossless, hu[s].astype(np.int16), encoding_plugin="pydicom", generate_instance_uid=False)
    save(ds, os.path.join(out, "rle", name))

    # JPEG Baseline 8-bit: Pillow at quality 95, encapsulated.
    ds = base("jpeg", s, series_uids["jpeg"])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.RescaleSlope, ds.RescaleIntercept = str(SLOPE_JPEG), str(INTERCEPT_JPEG)
    buf = io.BytesIO()
    Image.fromarray(codes[s], mode="L").save(buf, format="JPEG", quality=95)
    frame = buf.getvalue()
    jpeg_bytes.append(len(frame))
    jpeg_decoded[s] = np.asarray(Image.open(io.BytesIO(frame)).convert("L"))
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.LossyImageCompressionRatio = f"{ROWS * COLS / len(frame):.2f}"
    save(ds, os.path.join(out, "jpeg", name))

# Read every file back and check what it holds.
for s in range(SLICES):
    name = f"slice-{s:02d}.dcm"
    for k in series_uids:
        d = pydicom.dcmread(os.path.join(out, k, name))
        assert d.SeriesInstanceUID == series_uids[k] and d.Modality == "CT"
        arr = d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        if k == "jpeg":
            assert d.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
            want = jpeg_decoded[s].astype(np.float64) * SLOPE_JPEG + INTERCEPT_JPEG
            assert np.array_equal(arr, want), f"{k}/{name}: pydicom's JPEG decode differs from Pillow's"
        else:
            assert np.array_equal(arr, hu[s]), f"{k}/{name}: HU differ from the phantom"
    assert pydicom.dcmread(os.path.join(out, "rle", name)).file_meta.TransferSyntaxUID == RLELossless

# prdit's Volume order: [column i, row j, slice k by increasing z]; files run top (high z) down.
def to_volume(a):
    """[file slice, row, column] -> [column, row, slice by increasing z], float32."""
    return np.ascontiguousarray(a[::-1].transpose(2, 1, 0)).astype("<f4")


hu_jpeg = jpeg_decoded.astype(np.int32) * SLOPE_JPEG + INTERCEPT_JPEG
to_volume(hu).tofile(os.path.join(out, "hu_reference.f32"))
to_volume(hu_jpeg).tofile(os.path.join(out, "jpeg_pillow_hu.f32"))
err_codes = int(np.abs(jpeg_decoded.astype(np.int32) - codes.astype(np.int32)).max())
meta = {
    "seed": seed,
    "dims": [COLS, ROWS, SLICES],
    "layout": "float32 little-endian, flat index (i * rows + j) * slices + k: i column (+x, L), "
    "j row (+y, P), k slice by increasing z (S)",
    "pixel_spacing_row_col_mm": [ROW_SPACING, COL_SPACING],
    "spacing_mm": [COL_SPACING, ROW_SPACING, STEP],
    "slice_z_mm_ascending": [ORIGIN[2] - STEP * s for s in reversed(range(SLICES))],
    "orientation": "LPS",
    "study_uid": study_uid,
    "series_uids": series_uids,
    "hu_range": [int(hu.min()), int(hu.max())],
    "jpeg": {
        "quality": 95,
        "rescale_slope": SLOPE_JPEG,
        "rescale_intercept": INTERCEPT_JPEG,
        "bytes_per_slice": jpeg_bytes,
        "max_abs_code_error_pillow": err_codes,
        "max_abs_hu_error_pillow": err_codes * SLOPE_JPEG,
        "mean_abs_hu_error_pillow": float(np.abs(hu_jpeg - hu).mean()),
    },
    "versions": {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pydicom": pydicom.__version__,
        "Pillow": PIL.__version__,
    },
}
with open(os.path.join(out, "meta.json"), "w") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
print(json.dumps(meta["jpeg"]), file=sys.stderr)
