#!/usr/bin/env bash
# Builds the release binary here and packs it for a GPU machine without Rust:
#   scripts/gpu-bundle.sh            -> dist/prdit.xz (about 15 MB)
# On the GPU machine:
#   xz -d -c dist/prdit.xz > prdit && chmod +x prdit && export CUDA_PATH=/usr/local/cuda && ./prdit ...
# The binary links only glibc (>= 2.35), libm and libgcc; libcuda and libnvrtc are loaded at run
# time, and NVRTC needs the CUDA headers under $CUDA_PATH/include.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked "$@"
mkdir -p dist
strip -o dist/prdit "$target/release/prdit"
xz -T2 -6 -c dist/prdit > dist/prdit.xz
rm dist/prdit
ls -l dist/prdit.xz
