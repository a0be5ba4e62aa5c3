#!/usr/bin/env bash
# The main job on a fresh machine: install, then FP32 vs INT8 under every calibrator
# on the embedded default model (trained once on Fashion-MNIST, then cached).
# Extra arguments go to `lowbit eval`, e.g. --json r.json --plot r.png
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m lowbit eval "$@"
