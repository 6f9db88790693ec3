# routeplane: every target installs what it needs into .venv first (idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test lint format run bench bench-quick soak clean protos

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("routeplane needs Python 3.11+") if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# xds-protos ships its own google/longrunning/operations_pb2.py without the gRPC stubs and
	# overwrites googleapis-common-protos' copy, which google-cloud-spanner's admin calls need.
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps googleapis-common-protos==1.76.0
	touch $(STAMP)

lint: install
	$(BIN)/ruff format --check control_plane harness tests bench
	$(BIN)/ruff check control_plane harness tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff format control_plane harness tests bench
	$(BIN)/ruff check --fix control_plane harness tests bench

# Two test processes, a test file each at a time (a file's fixtures stay in one process): most
# integration tests wait on real processes, so two halve the wall time on CI's 2 cores.
test: lint
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=20

run: install
	$(BIN)/routeplane mesh up

bench: install
	$(BIN)/python -m bench.run --plan full

bench-quick: install
	$(BIN)/python -m bench.run --plan quick

soak: install
	$(BIN)/python -m bench.soak --seconds 120 --streams 200

# Regenerate the gRPC Python code from protos/ (the admin API's and KEDA's external scaler's;
# the committed copies are checked by a test).
protos: install
	$(BIN)/python -m control_plane.admin.protos

clean:
	rm -rf $(VENV) .mesh .pytest_cache .mypy_cache .ruff_cache *.egg-info
