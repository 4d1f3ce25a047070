#!/usr/bin/env bash
# The kernel numbers of docs/gpu-path.md: `prdit bench` on wgpu (lavapipe without a GPU) for
# PRDiT-XS/12/4 at 32³ and 64³ and PRDiT-B/12/4 at 32³, batch 2: a training step of each stage,
# the forward and a predictor-corrector step, each with kernel launches, distinct and new
# kernels, autotune decisions and peak reserved bytes of the first and the last iteration;
# with fusion on, then off (BURN_FUSION_MAX_EXPLORATIONS=0: burn-fusion runs every operation
# unfused). Each run is a fresh process; the kernel cache keeps the autotune decisions of the
# runs before it.
#   scripts/gpu-path-kernels.sh [OUT_DIR]        (default gpu-kernels/; JSON and text per run)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$HOME/.cache/prdit/target}"
bin="${PRDIT:-$target/release/prdit}"
out="${1:-gpu-kernels}"
mkdir -p "$out"
source scripts/lavapipe-env.sh
for fusion in on off; do
    for case in "PRDiT-XS/12/4 32" "PRDiT-XS/12/4 64" "PRDiT-B/12/4 32"; do
        read -r model size <<<"$case"
        name="$(echo "$model" | tr '/' '-')-$size-fusion-$fusion"
        echo "== $model ${size}³ batch 2, fusion $fusion"
        extra=()
        [[ $fusion == off ]] && extra=(env BURN_FUSION_MAX_EXPLORATIONS=0)
        "${extra[@]}" "$bin" --device wgpu bench --model "$model" --size "$size" --batch 2 --warmup 1 \
            --iters 2 --json "$out/$name.json" | tee "$out/$name.txt"
    done
done
