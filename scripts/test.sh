#!/usr/bin/env bash
# The test suite on a fresh machine: install, then pytest (GPU tests skip without CUDA).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -q "$@"
