# Two commands do everything on a fresh machine:
#   make demo   set up .venv if needed, then generate the synthetic corpus and run notebooks 01..05 with the
#               sync-aware detector into results/demo_sync/ (git-ignored), ending with a comparison against
#               results/reference/demo_sync/
#   make test   set up .venv if needed, then run the test suite
# Set-up is idempotent: it re-installs only when pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PARAMS ?= params/demo_sync.yaml

.PHONY: setup demo demo-concat demo-sync demo-seeds demo-localise smoke test lab bench gpu-check clean-results
setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "set-up: installing the environment into $(VENV)/ (about 2 minutes, once; again only when pyproject.toml changes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e .
	@-git rev-parse --git-dir >/dev/null 2>&1 && $(VENV)/bin/nbdime config-git --enable
	@touch $(STAMP)
	@echo "set-up: done"

# Writes results/<run_name>/ (git-ignored); the committed reference is results/reference/demo_sync/.
demo: $(STAMP)
	@$(PY) -m avlib.pipeline $(PARAMS)

# The same corpus and test sets with the seed's fusion (concat, no sync branch), into results/demo/.
demo-concat: $(STAMP)
	@$(PY) -m avlib.pipeline params/demo.yaml

demo-sync: demo

# Temporal localisation of partial fakes (synthetic, AV-Deepfake1M layout), into results/demo_localise/.
demo-localise: $(STAMP)
	@$(PY) -m avlib.localise params/demo_localise.yaml

# The main demo over three training seeds (results/demo_sync-seed<k>/ and results/demo_sync-seeds.csv).
demo-seeds: $(STAMP)
	@$(PY) -m avlib.pipeline $(PARAMS) --seeds 0,1,2

smoke: $(STAMP)
	@$(PY) -m avlib.pipeline params/smoke.yaml

test: $(STAMP)
	$(PY) -m pytest -q

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) -m avlib.bench preprocess
	$(PY) -m avlib.bench train

# On a CUDA machine whose python has avlib's dependencies (no .venv needed): the CUDA tests, then
# full-size (128x112x112) training and inference figures, then the real loader + fit path.
GPU_PY ?= $(PYTHON)
gpu-check:
	$(GPU_PY) -m pytest -q tests/test_cuda.py tests/test_model.py -k "cuda or float64"
	$(GPU_PY) -m avlib.bench train --device cuda --frames 128 --size 112 --batch 4 --steps 5 --repeats 3
	$(GPU_PY) -m avlib.bench fit --device cuda --frames 128 --size 112 --batch 4 --clips 160 --workers 8
