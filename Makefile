# The two README commands. Each creates .venv with python3 when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo debug test test-fast speed benchmark benchmark-smoke clean

# the demo study uses this dataset when DIFFSEG_DATA points at real data
DEMO_DATASET ?= glas

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m tune search smoke --name demo-$$(date +%Y%m%d-%H%M%S) $(if $(DIFFSEG_DATA),--set data.dataset=$(DEMO_DATASET))

debug: $(STAMP)
	$(PY) -m diffseg debug

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

# the speed benchmark: steps/s and memory of every method's training step (diffseg bench), a new
# file per run (bench keeps an existing --output)
speed: $(STAMP)
	$(PY) -m diffseg bench --output experiments/results/bench-$$(date +%Y%m%d-%H%M%S).json

# the methods benchmark: datasets x label ratios x seeds x methods as Ray trials (small preset)
benchmark: $(STAMP)
	$(PY) -m experiments.benchmark default

benchmark-smoke: $(STAMP)
	$(PY) -m experiments.benchmark smoke

# build outputs only: run folders (runs/, studies/, benchmarks/) are results and stay
clean:
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -not -path "./.venv/*" -prune -exec rm -rf {} +
