# Two entry points (see README): `make run` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedpeft-installed

.PHONY: setup run test test-all lint typecheck bench clean flower-venv

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	PY=$(PY) bash scripts/setup.sh
	touch $(STAMP)

# The default job: a federated simulation on the built-in offline dataset.
run: $(STAMP)
	$(BIN)/fedpeft simulate --output runs/default --force

# Default test run: everything but `slow` and `gpu` (Ray tests included).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src/fedpeft

# Flower 1.41 and the MiniLM job's stack, apart from .venv (flwr pins protobuf<7):
# the Flower side of bench/realjob_vs_flower.py.
flower-venv:
	PY=$(PY) bash scripts/flower_venv.sh

clean:
	rm -rf $(VENV) runs
