#!/usr/bin/env bash
# The GPU-path tests (tests/gpu_path.rs) on an NVIDIA GPU through the CUDA backend, in one
# command. Two halves, because a GPU machine may have no Rust:
#   scripts/test-gpu-path-cuda.sh build   here: builds the test binary and prdit, strips and
#                                         packs them into dist/gpu-path/ (git-ignored)
#   scripts/test-gpu-path-cuda.sh run     there, in a copy of this working tree (the fixtures):
#                                         unpacks and runs them on cuda:0
#   scripts/test-gpu-path-cuda.sh         both, on a machine with Rust and the GPU
# The run needs the CUDA toolkit's headers for NVRTC ($CUDA_PATH, default /usr/local/cuda).
# Kernels and autotune results persist in $PRDIT_KERNEL_CACHE (default ~/.cache/prdit/cubecl).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-both}"
dist=dist/gpu-path

build() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/prdit/target}"
    local test_bin
    test_bin=$(cargo test --release --locked --test gpu_path --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu_path" and m.get("executable"):
        print(m["executable"])')
    cargo build --release --locked --bin prdit
    mkdir -p "$dist"
    strip -o "$dist/gpu_path" "$test_bin"
    strip -o "$dist/prdit" "$CARGO_TARGET_DIR/release/prdit"
    xz -T2 -6 -f "$dist/gpu_path" "$dist/prdit"
    ls -l "$dist"
}

run() {
    for f in gpu_path prdit; do
        xz -d -k -f "$dist/$f.xz"
        chmod +x "$dist/$f"
    done
    export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
    export CARGO_MANIFEST_DIR="$PWD" PRDIT_BIN="$PWD/$dist/prdit" PRDIT_GPU_DEVICE="${PRDIT_GPU_DEVICE:-cuda}"
    export PRDIT_GPU_ADAPTER="${PRDIT_GPU_ADAPTER-NVIDIA}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$dist/gpu_path" --ignored --test-threads 1 --nocapture
}

case "$what" in
    build) build ;;
    run) run ;;
    both) build && run ;;
    *) echo "usage: $0 [build|run]" >&2; exit 2 ;;
esac
