# FaaS Appliance: the commands a user and CI run.
#   make up      start the appliance on 127.0.0.1 with the hello example deployed
#   make test    run the whole test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FAAS := $(VENV)/bin/faas
HOST ?= 127.0.0.1
EDGE_PORT ?= 8080
API_PORT ?= 8081
DATA_DIR ?= .faas
PYTEST_ARGS ?=

.PHONY: runtime-deps venv up test test-unit test-integration test-runtimes test-cluster test-ops test-faults bench soak doctor clean system-deps

venv: $(VENV)/.installed

# The virtualenv is rebuilt when requirements.txt changes. The appliance package is put on the
# venv's path with a .pth file and the `faas` command is a two-line wrapper, so no packaging
# metadata is needed beside the fixed top-level layout.
$(VENV)/.installed: requirements.txt
	@echo "Creating $(VENV) from requirements.txt (a few minutes the first time) ..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/faas-appliance.pth"
	printf '#!/bin/sh\nexec "%s" -m appliance "$$@"\n' "$(abspath $(PY))" > $(FAAS)
	chmod +x $(FAAS)
	touch $@

# Debian packages the sandbox, the benchmarks and the operations tests use. Installed only when
# missing and only when we may (root); otherwise the appliance says what is missing at start.
system-deps:
	@bash .ci/system-deps

runtime-deps:
	@bash .ci/system-deps runtime

up: venv runtime-deps
	$(FAAS) up --host $(HOST) --edge-port $(EDGE_PORT) --api-port $(API_PORT) --data-dir $(DATA_DIR) --example examples/hello

test: venv system-deps
	$(PY) -m pytest -c tests/pytest.ini tests $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest -c tests/pytest.ini tests/unit $(PYTEST_ARGS)

test-integration: venv system-deps
	$(PY) -m pytest -c tests/pytest.ini tests/integration $(PYTEST_ARGS)

test-runtimes: venv
	$(PY) -m pytest -c tests/pytest.ini tests/runtimes $(PYTEST_ARGS)

test-cluster: venv system-deps
	$(PY) -m pytest -c tests/pytest.ini tests/cluster $(PYTEST_ARGS)

test-ops: venv system-deps
	$(PY) -m pytest -c tests/pytest.ini tests/ops $(PYTEST_ARGS)

# Faults on loopback (kill -9 under load, instances killed, interrupted uploads, slow-client floods):
# each test prints what it counted, kept in tests/faults/last-run.json.
test-faults: venv system-deps
	$(PY) -m pytest -c tests/pytest.ini tests/faults -s $(PYTEST_ARGS)

# Five minutes of steady load: requests, errors, lost and duplicated records, memory at start and end
# (bench/results/soak.md). SOAK_ARGS="--duration 60 --rate 500" for another shape.
SOAK_ARGS ?=
soak: venv runtime-deps
	$(PY) -m bench.soak $(SOAK_ARGS)

# Installs the peers under ~/.cache/faas-appliance/bench and writes bench/results/latest.{json,md}.
#   make bench BENCH_ARGS=--quick
bench: venv system-deps
	@bash bench/system-deps
	$(PY) -m bench $(BENCH_ARGS)

doctor: venv
	$(FAAS) doctor

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache
