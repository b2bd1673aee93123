# envkiln developer commands. `make test` is what CI runs (through .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export ENVKILN_CACHE ?= $(HOME)/.cache/envkiln

.PHONY: deps venv test check unit integration lint crds controlplane run demo kind e2e bench clean release api-docs

$(BIN)/envkiln: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/envkiln

deps:  ## install what tests and the demo need (Debian packages, Go binaries); quiet when already there
	@bash scripts/bootstrap.sh

controlplane:  ## build (or reuse) kube-apiserver, etcd, helm and kubectl from the pinned Go modules
	bash tests/controlplane/build.sh

# mypy's cache lives with the other caches, not in the clone: a fresh clone checks only what differs from the
# last run (mypy compares each file's hash), 1-2 s instead of 12-15.
lint: venv  ## ruff, the layer contracts (pyproject [tool.importlinter]), mypy --strict on the product and on the unit tests
	$(BIN)/ruff check operator tests bench
	$(BIN)/lint-imports
	MYPY_CACHE_DIR=$(ENVKILN_CACHE)/mypy $(BIN)/mypy --strict operator/envkiln
	MYPY_CACHE_DIR=$(ENVKILN_CACHE)/mypy $(BIN)/mypy --strict tests/unit

unit: venv  ## unit tests only, on every core, in seconds
	$(BIN)/pytest tests/unit -q -n auto

check: lint unit  ## what to run before a commit (and what CI runs first): lint and unit tests, about a minute

# Three pytest processes at once: the node tests in two halves, each on a one-node cluster of its own (one
# with kube-proxy, one without), and the rest beside them (scripts/integration.sh; SERIAL=1 for one
# process). The slowest 15 of each are listed at the end.
INTEGRATION_ARGS ?= --durations=15

integration: deps venv
	BIN=$(BIN) scripts/integration.sh $(INTEGRATION_ARGS)

.PHONY: faults
faults: deps venv  ## kills, restarts and outages on the real node (docs/reliability.md); not part of `make test`
	$(BIN)/pytest tests/integration/node -m faults -q

test: check deps  ## everything CI runs: `make check` first (fails fast), then the integration tests
	BIN=$(BIN) scripts/integration.sh $(INTEGRATION_ARGS)

crds: venv  ## regenerate crds/ (and the chart's copy) from the models
	$(BIN)/envkiln crds

.PHONY: chart-docs
chart-docs: venv  ## regenerate charts/envkiln/README.md from the chart's values.yaml (a unit test fails on drift)
	$(BIN)/python scripts/chart_docs.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

demo: deps venv  ## the whole product on one machine, no Docker: a one-node cluster, registry, operator, demo Environments, a training Job (DEMO_KEEP=1 keeps it running)
	PYTHONPATH=tests $(BIN)/python -m harness.demo $(DEMO_ARGS)

run: venv  ## the operator against the current kubeconfig (kubectl apply -f crds/ first)
	$(BIN)/envkiln run

kind:  ## a kind cluster + local registry + the operator image + the chart (needs docker and kind)
	scripts/kind-up.sh

e2e: venv  ## the e2e suite against the kind cluster from `make kind`
	ENVKILN_E2E=1 $(BIN)/pytest tests/e2e -q

bench: deps venv  ## benchmarks (numbers, not tests); the last stdout line is one JSON object (docs/benchmarks.md)
	$(BIN)/python -m bench.cluster --json

# The render the build bench compares with: the commit before the one-stage render (#25).
BENCH_RENDER_OF ?= fbe50f0
# The node's storage on disk, as on a real node (the harness's default is /dev/shm, where vfs copies cost less).
BENCH_BUILDS_ARGS ?= --node-dir /var/tmp
.PHONY: bench-builds
bench-builds: deps venv  ## real builds on the node, create → Ready, against a plain Dockerfile and the render of BENCH_RENDER_OF, side by side (docs/benchmarks.md, "Builds"; 25-30 minutes)
	flock /tmp/envkiln-node.lock $(BIN)/python -m bench.builds --json --render-of $(BENCH_RENDER_OF) $(BENCH_BUILDS_ARGS)

release: venv  ## VERSION=x.y.z REGISTRY=host/path: push the operator image and the chart pinned to its digest (OCI), build the wheel (scripts/release.py; RELEASE_ARGS=--plain-http, --base-image ...)
	@test -n "$(VERSION)" -a -n "$(REGISTRY)" || { echo "usage: make release VERSION=x.y.z REGISTRY=host/path [RELEASE_ARGS=...]" >&2; exit 2; }
	$(BIN)/python scripts/release.py --version "$(VERSION)" --registry "$(REGISTRY)" $(RELEASE_ARGS)

api-docs: venv  ## regenerate docs/api.md from the CRDs in crds/ (a unit test fails while it is stale)
	$(BIN)/python scripts/api_docs.py
