#!/usr/bin/env bash
# Installs everything lowbit needs on a fresh Debian/Ubuntu machine:
#   Fashion-MNIST (Debian package dataset-fashion-mnist), PyTorch (the CPU build
#   when no torch is installed yet), and lowbit itself with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

if [ -z "${LOWBIT_FASHION_MNIST_DIR:-}" ] && [ ! -e /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  echo "setup: installing dataset-fashion-mnist (apt-get)" >&2
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
    { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (pip)" >&2
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
