#!/usr/bin/env bash
# The GPU-path tests (tests/gpu_path.rs) on Burn's wgpu backend:
#   scripts/test-gpu-path.sh [extra cargo test arguments]
# On a machine without a GPU, Mesa's lavapipe (a Vulkan driver that runs on the CPU) serves:
#   scripts/install-lavapipe.sh   (Debian 12; root)
# and this script then points the Vulkan loader at it and asserts the tests ran there.
# PRDIT_GPU_ADAPTER overrides what the adapter's description must contain ("" for any).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/prdit/target}"

source scripts/lavapipe-env.sh
if [[ "${VK_DRIVER_FILES:-}" == "$LAVAPIPE_ICD" ]]; then
    export PRDIT_GPU_ADAPTER="${PRDIT_GPU_ADAPTER-llvmpipe,Vulkan}"
    # The autotune decisions of these tests on lavapipe, so that a machine without a kernel
    # cache does not spend most of an hour timing candidates (docs/gpu-path.md); autotune still
    # runs for any key the bundle lacks. PRDIT_KERNEL_BUNDLE= (empty) goes without.
    export PRDIT_KERNEL_BUNDLE="${PRDIT_KERNEL_BUNDLE-$PWD/tests/fixtures/gpu-path/lavapipe.bundle}"
fi
echo "GPU path: VK_DRIVER_FILES=${VK_DRIVER_FILES:-<loader default>} PRDIT_GPU_ADAPTER=${PRDIT_GPU_ADAPTER:-<any>}" \
    "PRDIT_KERNEL_BUNDLE=${PRDIT_KERNEL_BUNDLE:-<none>}"
cargo test --release --locked --test gpu_path "$@" -- --ignored --test-threads 1 --nocapture
