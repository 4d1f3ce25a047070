#!/usr/bin/env bash
# Installs Mesa's lavapipe (a conformant Vulkan driver that runs on the CPU) for the GPU-path
# tests, from Debian 12's bookworm-backports (Mesa 25; bookworm's own 22.3 is older than
# anything CubeCL is tested with). Does nothing when a recent one is already there. Root or sudo.
set -euo pipefail
want=25
have=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
if [[ -f /usr/share/vulkan/icd.d/lvp_icd.json && ${have%%.*} =~ ^[0-9]+$ && ${have%%.*} -ge $want ]] \
    && dpkg-query -W libvulkan1 >/dev/null 2>&1; then
    echo "lavapipe: mesa-vulkan-drivers $have already installed"
    exit 0
fi
. /etc/os-release
if [[ "${VERSION_CODENAME:-}" != bookworm ]]; then
    echo "install-lavapipe.sh knows Debian 12 (bookworm); this is ${PRETTY_NAME:-unknown}." >&2
    echo "Install Mesa >= $want's Vulkan drivers (lavapipe) and the Vulkan loader by hand." >&2
    exit 1
fi
sudo=()
[[ $(id -u) == 0 ]] || sudo=(sudo)
list=/etc/apt/sources.list.d/bookworm-backports.list
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" | "${sudo[@]}" tee "$list" >/dev/null
fi
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq -t bookworm-backports \
    mesa-vulkan-drivers libvulkan1 vulkan-tools
echo "lavapipe: mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers) installed"
