# zbase: each target is one line of intent. `make run` and `make test` are the two commands
# a newcomer needs; CI runs `make test` through .ci/run.

CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
DATA_DIR ?= ./data

.PHONY: run demo build test lint fmt bench clean helm-venv crds

# The real Helm engine for the chart tests: Helm's Go SDK (v4) as PyPI's helm-python-sdk.
HELM_VENV ?= target/helm-venv
HELM_PYTHON_SDK_VERSION := 0.2.2

## Start a station on the embedded SQLite store, plain HTTP on $(LISTEN).
run:
	$(CARGO) build --release -p zbase-basestation
	@echo "zbase: WebSocket ws://$(LISTEN)/v1/resources/{id}, gRPC zbase.v1.Station/Connect on $(LISTEN)"
	@echo "zbase: try it from another terminal: make demo"
	./target/release/zbase-station serve --listen $(LISTEN) --data-dir $(DATA_DIR)

## Run the demo client against a running `make run` station: create, verify, relay a delta.
demo:
	$(CARGO) run -q -p zbase-tests --example quickstart -- $(LISTEN)

## Build every binary the tests drive.
build:
	$(CARGO) build --workspace --bins --examples

## Every test: unit, property, store conformance, and end-to-end through the real binary;
## then the wire contract again, judged through HAProxy in front of three pods on PostgreSQL
## (all but per-IP limits and one process's SIGTERM drain, which are per pod by design), and
## once more against stations restored from a backup.
## `--workspace` again so features unify as in the first run and nothing is rebuilt.
test: build helm-venv
	$(CARGO) test --workspace --no-fail-fast
	ZBASE_TEST_TOPOLOGY=pods $(CARGO) test --workspace --test it -- wire:: \
	  --skip s9_connections_per_ip --skip s9_failed_handshakes --skip s8_sigterm_drains
	ZBASE_TEST_TOPOLOGY=restored $(CARGO) test --workspace --test it -- wire::

## Regenerate the BaseStation CRD the chart ships, from the operator's Rust types.
crds:
	for crd in basestations basestationbackups; do \
	  $(CARGO) run -q -p zbase-operator -- crd $$crd > charts/zbase-operator/files/crds/$$crd.zbase.dev.yaml || exit 1; \
	done

## The Python venv the chart tests render charts/zbase-operator with (no `helm` binary needed);
## made once, and again when the pinned version changes.
helm-venv: $(HELM_VENV)/.helm-python-sdk-$(HELM_PYTHON_SDK_VERSION)

$(HELM_VENV)/.helm-python-sdk-$(HELM_PYTHON_SDK_VERSION):
	rm -rf $(HELM_VENV)
	python3 -m venv $(HELM_VENV)
	$(HELM_VENV)/bin/pip install --quiet --disable-pip-version-check \
	  helm-python-sdk==$(HELM_PYTHON_SDK_VERSION)
	touch $@

## Formatting and lints, as CI would want them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks, each figure printed beside a baseline measured in the same run.
bench:
	$(CARGO) build --release -p zbase-basestation
	$(CARGO) bench -p zbase-tests --bench station
	$(CARGO) bench -p zbase-actor --bench actor

clean:
	$(CARGO) clean
