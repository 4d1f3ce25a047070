#!/usr/bin/env bash
# prdit and the official PyTorch PRDiT timed side by side, on this machine, in one run, and the
# ratio table printed (prdit / official: below 1 is prdit faster). The official code is not
# part of prdit: give a copy of github.com/Fredy-Zhang/PRDiT kept outside the tracked tree.
#
#   scripts/bench-vs-official.sh --ref /tmp/PRDiT [--python PY] [--device cpu|cuda]
#       [--models PRDiT-XS/12/4,PRDiT-B/12/4] [--size 64] [--batch 2] [--threads 2]
#       [--iters 5] [--warmup 2] [--out DIR]
#
# PY needs torch, timm and numpy. For each stage-2 model M the cases are: a training step of
# its stage 1 (M with /0) and of M, and one no-grad forward of M (a sampling step).
# benches/reference/official_bench.py times the official side; `prdit bench` times prdit
# (target/release/prdit, or $PRDIT). Each side runs in its own process, one after the other,
# with the same threads; peak resident memory is each process's, from /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
ref="" python="python3" device="cpu" models="PRDiT-XS/12/4,PRDiT-B/12/4" size=64 batch=2 threads=2
iters=5 warmup=2 out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --ref) ref=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        --device) device=$2; shift 2 ;;
        --models) models=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --iters) iters=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "unknown option $1 (see the top of $0)" >&2; exit 2 ;;
    esac
done
[ -n "$ref" ] && [ -f "$ref/models/models.py" ] || { echo "--ref must name a copy of the official repository (models/models.py not found in '$ref')" >&2; exit 2; }
prdit=${PRDIT:-target/release/prdit}
[ -n "${CARGO_TARGET_DIR:-}" ] && [ ! -x "$prdit" ] && prdit="$CARGO_TARGET_DIR/release/prdit"
[ -x "$prdit" ] || { echo "no prdit binary at $prdit: cargo build --release (or set PRDIT)" >&2; exit 2; }
"$python" -c "import torch, timm" 2>/dev/null || { echo "$python lacks torch or timm" >&2; exit 2; }
out=${out:-$(mktemp -d)}
mkdir -p "$out"
export OMP_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads
for m in ${models//,/ }; do
    tag=${m//\//_}
    s1=${m%/*}/0
    cases=(--case "train $s1 $size $batch" --case "train $m $size $batch" --case "fwd $m $size $batch")
    /usr/bin/time -f "%M" -o "$out/official-$tag.rss" "$python" benches/reference/official_bench.py --ref "$ref" \
        --device "$device" --threads "$threads" --warmup "$warmup" --iters "$iters" "${cases[@]}" \
        --out "$out/official-$tag.json" > /dev/null
    /usr/bin/time -f "%M" -o "$out/prdit-$tag.rss" "$prdit" --quiet bench --device "$device" --model "$m" \
        --size "$size" --batch "$batch" --what all --warmup "$warmup" --iters "$iters" \
        --json "$out/prdit-$tag.json" > /dev/null
done
"$python" - "$out" "$models" "$size" "$batch" "$threads" <<'PY'
import json, sys
out, models, size, batch, threads = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4], sys.argv[5]
print(f"| case ({threads} threads) | prdit ms | official ms | ratio |")
print("|---|---|---|---|")
for m in models:
    tag = m.replace("/", "_")
    off = {c["case"]: c for c in json.load(open(f"{out}/official-{tag}.json"))["cases"]}
    ours = {c["case"]: c for c in json.load(open(f"{out}/prdit-{tag}.json"))["cases"]}
    s1 = m.rsplit("/", 1)[0] + "/0"
    for kind, name in [("train", s1), ("train", m), ("fwd", m)]:
        o = off.get(f"{kind} {name} {size} {batch}", {})
        p = ours.get(f"{kind} {name} {size}^3 b{batch}", {})
        po, pp = o.get("median_ms"), p.get("ms_median")
        ratio = f"{pp / po:.2f}" if po and pp else "-"
        pps = f"{pp:.0f}" if pp else "-"
        print(f"| {kind} {name} {size}³ b{batch} | {pps} | {po if po else o.get('error', '-')} | {ratio} |")
    rss = lambda side: int(open(f"{out}/{side}-{tag}.rss").read().split()[-1]) / 1024
    print(f"| peak resident memory, {m} process | {rss('prdit'):.0f} MiB | {rss('official'):.0f} MiB | {rss('prdit') / rss('official'):.2f} |")
print(f"(results in {out})")
PY
