#!/usr/bin/env bash
# Makes assets/fonts/DejaVuSans-prdit.ttf: DejaVu Sans cut down to the characters prdit's
# pictures use (ASCII and a few symbols: ° ² ³ · × μ σ φ – — → − ≤ ≥ ≈ …), 15 KB instead of
# 760 KB. Needs fonttools (pip install fonttools) and DejaVu Sans (Debian: fonts-dejavu-core).
# Usage: scripts/make-font-subset.sh [/path/to/DejaVuSans.ttf]
set -euo pipefail
src=${1:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}
out=$(dirname "$0")/../assets/fonts/DejaVuSans-prdit.ttf
pyftsubset "$src" \
  --unicodes="U+0020-007E,U+00B0,U+00B2,U+00B3,U+00B7,U+00D7,U+03BC,U+03C3,U+03C6,U+2013,U+2014,U+2192,U+2212,U+2264,U+2265,U+2248,U+2026" \
  --output-file="$out" --no-hinting --desubroutinize
echo "wrote $out"
