# FaaS Appliance: the commands a user and CI run.
#   make up      start the appliance on 127.0.0.1 with the hello example deployed (runtime packages only)
#   make test    run the whole test suite (what CI runs; adds the test, bench and ops packages)
#   make dev     the virtualenv with the test, benchmark and operations tools (the pinned Ansible)
#   make examples  build the Go, Java and awslambdaric examples of the provided runtime
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

CONSOLE_SRC := appliance/control/console/src
CONSOLE_DIST := appliance/control/console/dist

.PHONY: console examples runtime-deps venv dev up test test-unit test-integration test-runtimes test-cluster test-cluster-real test-ops test-faults bench soak doctor clean system-deps

venv: $(VENV)/.installed

dev: $(VENV)/.dev-installed

# Two layers: requirements.txt is what running the appliance needs (make up); requirements-dev.txt
# adds the test, benchmark and operations tools (make test, make bench, make dev). Each is rebuilt
# when its file changes. The appliance package is put on the venv's path with a .pth file and the
# `faas` command is a two-line wrapper, so no packaging metadata is needed beside the fixed layout.
# pip's own lines (Collecting, Downloading, Installing) show the progress of a first build.
$(VENV)/.installed: requirements.txt
	@echo "==> [1/3] Creating $(VENV) with $$($(PYTHON) --version 2>&1)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] Updating pip"
	$(PY) -m pip install --quiet --upgrade pip
	@echo "==> [3/3] Installing $$(grep -c '^[a-zA-Z]' requirements.txt) packages (and their dependencies) from requirements.txt"
	$(PY) -m pip install -r requirements.txt
	echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/faas-appliance.pth"
	printf '#!/bin/sh\nexec "%s" -m appliance "$$@"\n' "$(abspath $(PY))" > $(FAAS)
	chmod +x $(FAAS)
	@echo "==> $(VENV) is ready"
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	@echo "==> Installing the test, benchmark and operations tools from requirements-dev.txt"
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

# The web console's bundle: CodeMirror, uPlot and the console's code, installed with `npm ci` from
# the committed package-lock.json and bundled by esbuild into $(CONSOLE_DIST) (not committed; the
# control API answers Console.NotBuilt until it exists). Rebuilt when a source or the lock changes.
console: $(CONSOLE_DIST)/console.js

$(CONSOLE_SRC)/node_modules/.package-lock.json: $(CONSOLE_SRC)/package-lock.json
	@command -v npm >/dev/null || { echo "The console needs Node.js 18+ and npm to build (apt-get install nodejs npm)"; exit 1; }
	cd $(CONSOLE_SRC) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(CONSOLE_DIST)/console.js: $(CONSOLE_SRC)/node_modules/.package-lock.json $(wildcard $(CONSOLE_SRC)/*.js) $(CONSOLE_SRC)/package.json
	cd $(CONSOLE_SRC) && npm run --silent build

# Debian packages the sandbox, the benchmarks and the operations tests use. Installed only when
# missing and only when we may (root); otherwise the appliance says what is missing at start.
system-deps:
	@bash .ci/system-deps

runtime-deps:
	@bash .ci/system-deps runtime

up: venv runtime-deps console
	$(FAAS) up --host $(HOST) --edge-port $(EDGE_PORT) --api-port $(API_PORT) --data-dir $(DATA_DIR) --example examples/hello

test: dev system-deps console
	$(PY) -m pytest -c tests/pytest.ini tests $(PYTEST_ARGS)

test-unit: dev
	$(PY) -m pytest -c tests/pytest.ini tests/unit $(PYTEST_ARGS)

test-integration: dev system-deps console
	$(PY) -m pytest -c tests/pytest.ini tests/integration $(PYTEST_ARGS)

test-runtimes: dev
	$(PY) -m pytest -c tests/pytest.ini tests/runtimes $(PYTEST_ARGS)

test-cluster: dev system-deps
	$(PY) -m pytest -c tests/pytest.ini tests/cluster $(PYTEST_ARGS)

# The end-to-end cluster checks against REAL agents (docs/cluster.md, "Conformance run"):
#   NOMAD_ADDR=http://... CONSUL_ADDR=http://... APPLIANCE_S3_ENDPOINT=http://... make test-cluster-real
# Without the addresses it says so and fails: nothing is counted as passed.
test-cluster-real:
	@if [ -z "$$NOMAD_ADDR" ] || [ -z "$${CONSUL_ADDR:-$$CONSUL_HTTP_ADDR}" ] || \
	    [ -z "$$APPLIANCE_S3_ENDPOINT$$APPLIANCE_S3_BUCKET" ]; then \
	  echo "test-cluster-real: no real agents given. Set NOMAD_ADDR, CONSUL_ADDR (or CONSUL_HTTP_ADDR) and" \
	       "APPLIANCE_S3_ENDPOINT or APPLIANCE_S3_BUCKET (tokens: NOMAD_TOKEN, CONSUL_HTTP_TOKEN)." \
	       "Nothing was run." >&2; \
	  exit 2; \
	fi
	$(MAKE) dev
	FAAS_REAL_CLUSTER=1 $(PY) -m pytest -c tests/pytest.ini tests/cluster/test_real_cluster.py -p no:cacheprovider $(PYTEST_ARGS)

test-ops: dev system-deps
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
bench: dev system-deps
	@bash bench/system-deps
	$(PY) -m bench $(BENCH_ARGS)
	$(PY) -m bench.provided --runs 10

# The custom-runtime examples' builds (Go binary, Java classes, vendored awslambdaric); see examples/build.
examples: venv system-deps
	PIP="$(abspath $(PY)) -m pip" bash examples/build

doctor: venv
	$(FAAS) doctor

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache $(CONSOLE_DIST) $(CONSOLE_SRC)/node_modules
