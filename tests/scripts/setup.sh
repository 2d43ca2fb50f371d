#!/usr/bin/env bash
# Install the system packages baleen's demo and tests need, if missing:
# make, Python (for fetching the test model), Mesa's lavapipe (Vulkan on the
# CPU) so the GPU backend runs on a machine without a GPU, and Chromium plus
# Node.js for the browser tests (WebGPU on SwiftShader). Debian/Ubuntu.
set -euo pipefail
missing=()
command -v make >/dev/null || missing+=(make)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
ldconfig -p | grep -q 'libvulkan\.so\.1' || missing+=(libvulkan1)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
