# Two commands do everything from a fresh clone:
#   make run   - install into .venv and serve the FHIR API on embedded defaults
#   make test  - install into .venv (and redis-server if missing), lint, type-check, run all tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench bench-webhook clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fhir-gateway serve --sandbox

test: $(STAMP)
	./scripts/ensure-redis
	$(BIN)/ruff format --check fhir_gateway tests bench
	$(BIN)/ruff check fhir_gateway tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/search_bench.py

bench-webhook: $(STAMP)
	$(BIN)/python bench/webhook_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
