# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv from the lock file if needed, run the end-to-end demo
#   make test   - the same environment, then lint, type-check, the import contracts and the
#                 whole test suite
PY ?= python3
UV_VERSION := 0.13.8
VENV := .venv
UV := .tools/uv/bin/uv
SYNCED := $(VENV)/.synced

.PHONY: env demo test lint unit bench clean
.DEFAULT_GOAL := demo

# uv itself is pinned and bootstrapped into a private venv with the system Python
$(UV):
	$(PY) -m venv .tools/uv
	.tools/uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# install exactly what uv.lock says (fails if pyproject.toml and the lock disagree)
$(SYNCED): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PY)
	@touch $(SYNCED)

env: $(SYNCED)

demo: env
	$(VENV)/bin/gatewise demo

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest

unit: env
	$(VENV)/bin/pytest -m "not integration"

bench: env
	$(VENV)/bin/python benchmarks/simulate.py
	$(VENV)/bin/python benchmarks/ingest.py
	$(VENV)/bin/python benchmarks/features.py
	$(VENV)/bin/python benchmarks/automl_vs_flaml.py --budget 60
	$(VENV)/bin/python benchmarks/gateway.py
	$(VENV)/bin/python benchmarks/dataplane.py
	$(VENV)/bin/python benchmarks/serving.py --loadgen both
	$(VENV)/bin/python benchmarks/stream.py
	$(VENV)/bin/python benchmarks/stream_detection.py
	$(VENV)/bin/python benchmarks/monitor.py
	$(VENV)/bin/python benchmarks/analytics.py

clean:
	rm -rf .gatewise .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache
