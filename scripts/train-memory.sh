#!/usr/bin/env bash
# Peak memory and time of training steps on the CPU, one fresh process per point.
#
#   scripts/train-memory.sh PRDIT_BINARY [MODEL:SIZE:BATCH[:WHAT] ...]
#
# For each point, `prdit --device cpu bench --what WHAT` at SIZE³, batch BATCH, one timed
# iteration, under GNU time; prints one line per point: the process's peak resident memory and
# the step's time (the last training case's). WHAT (default `train`) is `train` (a stage-1 and
# a stage-2 step of the stage-2 model MODEL: the stage-2 step sets the peak, its activations
# dominating, and the stage-1 step's memory is still held by the allocator), `train-local`
# (stage 1 alone), `train-global` (stage 2 alone) or `train-highres` (the refinement of MODEL at
# SIZE/2 to SIZE, phase 3a, default `[highres]` values). Default points: PRDiT-XS/12/4 at 64³
# (512 tokens) and 96³ (1728 tokens) with batch 1, 2 and 4, and at 128³ (4096 tokens) with
# batch 1.
set -euo pipefail
BIN=${1:?usage: $0 PRDIT_BINARY [MODEL:SIZE:BATCH[:WHAT] ...]}
shift
POINTS=("$@")
if [ ${#POINTS[@]} -eq 0 ]; then
    POINTS=(PRDiT-XS/12/4:64:1 PRDiT-XS/12/4:64:2 PRDiT-XS/12/4:64:4 PRDiT-XS/12/4:96:1
        PRDiT-XS/12/4:96:2 PRDiT-XS/12/4:96:4 PRDiT-XS/12/4:128:1)
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
printf '%-16s %5s %6s %7s %-13s %12s %10s\n' model size batch tokens what peak_GiB step_ms
for p in "${POINTS[@]}"; do
    IFS=: read -r model size batch what <<<"$p"
    /usr/bin/time -f '%M' -o "$OUT/rss" "$BIN" --device cpu --quiet bench --model "$model" --size "$size" \
        --batch "$batch" --what "${what:-train}" --warmup 0 --iters 1 >"$OUT/log"
    kib=$(tail -1 "$OUT/rss")
    ms=$(grep "^train " "$OUT/log" | tail -1 | awk '{print $(NF-4)}')
    tokens=$(( (size / 8) * (size / 8) * (size / 8) ))
    printf '%-16s %5s %6s %7s %-13s %12.3f %10s\n' "$model" "$size" "$batch" "$tokens" "${what:-train}" \
        "$(echo "$kib / 1048576" | bc -l)" "$ms"
done
