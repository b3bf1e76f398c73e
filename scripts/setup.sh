#!/usr/bin/env bash
# Set up everything napari-cellclass needs: system libraries for a headless
# napari (when missing and installable), a virtual environment in .venv with
# torch + torchvision, and the package itself (editable) with its extras.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="${CELLCLASS_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

die() { echo "setup: $*" >&2; exit 1; }

# --- system libraries for a virtual display (napari tests, screenshots) ------
need_apt=()
command -v Xvfb >/dev/null 2>&1 || need_apt+=(xvfb xauth)
for lib in libGL.so.1 libEGL.so.1 libxkbcommon-x11.so.0 libdbus-1.so.3 libxcb-cursor.so.0 \
           libxcb-icccm.so.4 libxcb-image.so.0 libxcb-keysyms.so.1 libxcb-randr.so.0 \
           libxcb-render-util.so.0 libxcb-shape.so.0 libxcb-xinerama.so.0 libxcb-xkb.so.1 libfontconfig.so.1; do
  ldconfig -p 2>/dev/null | grep -q "$lib" || need_apt+=("$lib")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  pkgs="xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libdbus-1-3 libfontconfig1 \
libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-xfixes0"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    echo "setup: installing system libraries for a virtual display: $pkgs"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null || echo "setup: apt-get update failed; trying install anyway" >&2
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null \
      || echo "setup: WARNING could not install $pkgs; napari GUI tests will be skipped" >&2
  else
    echo "setup: WARNING missing ${need_apt[*]} and no root/apt-get to install them;" \
         "napari GUI tests will be skipped (install: $pkgs)" >&2
  fi
fi

# --- virtual environment -----------------------------------------------------
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "Python >= 3.10 is needed (found $($PY --version 2>&1)); set PYTHON=/path/to/python3.11"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtual environment $VENV"
  "$PY" -m venv "$VENV" || die "could not create a virtual environment (Debian: apt-get install python3-venv)"
fi
VPY="$VENV/bin/python"
stamp="$VENV/.cellclass-setup-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VPY" -c 'import torch, torchvision' >/dev/null 2>&1; then
  echo "setup: installing torch 2.14.1 + torchvision 0.29.1 (large; from the local wheel cache where present)"
  "$VPY" -m pip install -q torch==2.14.1 torchvision==0.29.1 \
    || die "could not install torch==2.14.1 torchvision==0.29.1 (no network and no local wheels?)"
fi
echo "setup: installing napari-cellclass with its GUI and test extras"
"$VPY" -m pip install -q -e ".[pyqt6,test]" || die "pip could not install napari-cellclass (see the pip message above)"
echo "$want" > "$stamp"
echo "setup: ready ($VENV)"
