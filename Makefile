# Two commands: `make reproduce` (the report, headless) and `make test` (the whole suite).
# Every target creates the virtual environment .venv first when it is missing or stale.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Parameters of `make reproduce` (see README.md).
DATA ?= auto
EPOCHS ?= 25
IMAGE_SIZE ?= 128
BATCH_SIZE ?= 16
LR ?= 0.001
SEED ?= 0
SEEDS ?= 1
DEVICE ?= auto
ENCODER_WEIGHTS ?= auto
NAME ?= default
TTA ?=
M3_ENSEMBLE ?=
# Optional (empty: the defaults of `python -m helpers.tools.reproduce`): DATA_DIR, EXTERNAL, M3_RECIPE (default|strong),
# M3_EPOCHS, and the rarely changed VAL_FRACTION, SPLIT_SEED, ISIC_URL, MAX_PIXELS (docs/notebooks.md, "Settings").
OPTIONAL := DATA_DIR VAL_FRACTION SPLIT_SEED ISIC_URL MAX_PIXELS EXTERNAL M3_RECIPE M3_EPOCHS
option = $(if $($(1)),--$(subst _,-,$(shell echo $(1) | tr A-Z a-z)) $($(1)))
REPRODUCE_ARGS ?=

.PHONY: all venv reproduce test test-fast test-long notebook-outputs data synthetic check lab screenshots clean
all: reproduce

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

reproduce: $(STAMP)
	$(BIN)/python -m helpers.tools.reproduce --data $(DATA) --epochs $(EPOCHS) --image-size $(IMAGE_SIZE) \
	  --batch-size $(BATCH_SIZE) --lr $(LR) --seed $(SEED) --seeds $(SEEDS) --device $(DEVICE) \
	  --encoder-weights $(ENCODER_WEIGHTS) --name $(NAME) $(if $(TTA),--tta $(filter dihedral flips,$(TTA))) $(if $(M3_ENSEMBLE),--m3-ensemble) \
	  $(foreach v,$(OPTIONAL),$(call option,$(v))) $(REPRODUCE_ARGS)

# Two pytest-xdist workers (one per core of a 2-core machine); the tests of the tiny main job share one.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow and not long"

test-long: $(STAMP)
	$(BIN)/python -m pytest -m long

# Refresh the committed outputs of the nbval-checked notebook cells (after changing what they show).
notebook-outputs: $(STAMP)
	$(BIN)/python tests/nbtiny.py --update

data: $(STAMP)
	$(BIN)/python -m helpers.tools.data download data/isic2016 $(if $(ISIC_URL),--base-url $(ISIC_URL))

synthetic: $(STAMP)
	$(BIN)/python -m helpers.tools.data synthetic data/synthetic

check: $(STAMP)
	$(BIN)/python -m helpers.tools.data check $(if $(ROOT),$(ROOT),data/isic2016)

# JupyterLab on working copies of the notebooks in lab/ (git ignores them; notebooks/ stays as committed).
# The notebooks' python3 kernel runs .venv's Python (jupyter_client starts "python" as the server's own).
lab: $(STAMP)
	$(BIN)/python -m helpers.tools.lab $(if $(LAB_DIR),--work-dir $(LAB_DIR)) $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean:
	rm -rf runs figures/*.png data/cache .pytest_cache

# The two JupyterLab screenshots of docs/notebooks.md, taken by the browser test (needs Debian's chromium).
screenshots: $(STAMP)
	SCREENSHOTS_DIR=$(CURDIR)/docs/img $(BIN)/python -m pytest tests/test_browser.py -q
