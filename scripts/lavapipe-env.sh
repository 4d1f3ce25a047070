# Sourced by the GPU-path scripts (test-gpu-path.sh, gpu-path-kernels.sh): on a machine without a
# GPU (/dev/dri/renderD*, /dev/nvidia0) whose only Vulkan device is Mesa's lavapipe, points the
# Vulkan loader at lavapipe alone; and sets the autotuner to CubeCL's minimal effort with one
# timing per candidate: on a software GPU most of a cold run is spent compiling and timing
# candidates (docs/gpu-path.md). Autotune stays on. Each setting keeps a value set beforehand.
LAVAPIPE_ICD=/usr/share/vulkan/icd.d/lvp_icd.json
if [[ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" && -f $LAVAPIPE_ICD ]] \
    && ! compgen -G '/dev/dri/renderD*' >/dev/null && [[ ! -e /dev/nvidia0 ]]; then
    export VK_DRIVER_FILES=$LAVAPIPE_ICD
fi
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
export PRDIT_AUTOTUNE_SAMPLES="${PRDIT_AUTOTUNE_SAMPLES:-1}"
