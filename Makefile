# attnserve: the project's front door. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint format train evaluate clean

install: $(STAMP)

# Re-installs when the dependencies change. torch comes from the `export` extra, pinned to the CPU wheel.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[export,dev]'
	touch $@

# Until the export stage and the server exist, `run` measures the shipped demo models.
run: install
	$(PY) -m models.evaluate --count 300

test: lint
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Retrain the three demo models into models/weights/ (about 10–25 min each on 2 CPU cores).
train: install
	$(PY) -m models.train cbam_classifier
	$(PY) -m models.train eca_classifier
	$(PY) -m models.train harnet_detector

# Re-measure the demo models on 1000 held-out scenes and rewrite docs/models.md.
evaluate: install
	$(PY) -m models.evaluate --write docs/models.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
