# Two commands do everything on a fresh machine:
#   make demo   set up .venv if needed, then generate the synthetic corpus and run notebooks 01..05
#   make test   set up .venv if needed, then run the test suite
# Set-up is idempotent: it re-installs only when pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PARAMS ?= params/demo.yaml

.PHONY: setup demo smoke test lab bench clean-results
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	-git rev-parse --git-dir >/dev/null 2>&1 && $(VENV)/bin/nbdime config-git --enable
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m avlib.pipeline $(PARAMS)

smoke: $(STAMP)
	$(PY) -m avlib.pipeline params/smoke.yaml

test: $(STAMP)
	$(PY) -m pytest -q

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) -m avlib.bench preprocess
	$(PY) -m avlib.bench train
