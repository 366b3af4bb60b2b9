#!/usr/bin/env bash
# Set up mulfree on a fresh machine: keep an existing torch (>= 2.4), else install the CPU build
# that this machine serves locally, then install mulfree (editable) with its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import torch, sys; v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 4))' 2>/dev/null; then
    # A bare `torch` requirement would resolve to a multi-GB CUDA build; pin the CPU file instead.
    "$PY" -m pip install --quiet "${MULFREE_TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install --quiet -e '.[dev]'
