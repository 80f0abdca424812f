# Trellis: build, test, demo, image, deploy, e2e-kind, bench.
# `make demo` and `make test` are the two commands the README promises work on a fresh machine.

CARGO      ?= cargo
IMAGE      ?= ghcr.io/trellis-mesh/trellis:0.1.0
VENV       ?= target/venv
PY         := $(VENV)/bin/python
K8S_VERSION ?= 1.33.0

.PHONY: deps all build release test lint fmt unit schema shellcheck demo soak image certs deploy e2e-kind bench bench-h2 bench-webhook bench-control bench-instructions bench-smoke fuzz fuzz-smoke clean

all: build

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --workspace --release

## test: everything CI runs (lint, unit + integration tests, schema checks, shellcheck, every
## bench script in smoke mode, and every fuzz target for 30 s).
test: deps lint unit schema shellcheck bench-smoke fuzz-smoke

deps:
	scripts/install-deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

unit: $(VENV)/.installed
	$(CARGO) build --workspace --release --bins
	$(CARGO) test --workspace --release

# The test venv (kubernetes-validate, prometheus-client), refreshed when the requirements change.
$(VENV)/.installed: scripts/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r scripts/requirements.txt
	touch $@

## schema: every manifest and every injected pod checked against the Kubernetes OpenAPI schema.
schema: $(VENV)/.installed
	$(CARGO) build -p webhook --release
	K8S_VERSION=$(K8S_VERSION) PY=$(PY) scripts/validate-schemas.sh

shellcheck:
	shellcheck -x .ci/run scripts/*.sh bench/*.sh $(wildcard tests/kind/*.sh) $(wildcard certs/*.sh)

## fuzz: every cargo-fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS (180) each; nightly toolchain.
fuzz:
	scripts/fuzz.sh

## fuzz-smoke: the same for 30 s each, so that a crash fails CI.
fuzz-smoke:
	FUZZ_SECONDS=30 scripts/fuzz.sh

## demo: the whole mesh on this machine in network namespaces (root; iproute2, iptables, openssl).
demo: deps
	$(CARGO) build --workspace --release --bins
	$(CARGO) run -q --release -p sandbox --bin demo

## soak: the demo's mesh under mixed load for SOAK_MINUTES (10); RSS, fds, non-2xx, counters.
soak: deps
	$(CARGO) build --workspace --release --bins
	$(CARGO) run -q --release -p sandbox --bin soak

certs:
	certs/make-certs.sh certs/out

image:
	docker build -t $(IMAGE) .

deploy:
	kubectl apply -k manifests/

e2e-kind:
	tests/kind/run.sh

## bench: the Trellis proxy pair against HAProxy and nginx pairs (installs them when missing).
bench:
	bench/run.sh

## bench-h2: HTTP/2 (h2load) through the Trellis pair, an HAProxy pair and an nginx pair: streams/s,
## p99 at a fixed rate, CPU per 1000 streams, RSS with 1,000 streams open.
bench-h2:
	bench/h2.sh

## bench-instructions: user-space instructions per proxied request, Trellis vs nginx vs HAProxy (callgrind).
bench-instructions:
	bench/callgrind.sh

## bench-webhook: AdmissionReviews per second and p50/p99 over TLS keep-alive.
bench-webhook:
	bench/webhook.sh

## bench-control: control serve at scale (10,000 Services, 100,000 endpoints, 5,000 HTTP/2 streams;
## ready, first answer, change-to-every-stream, burst, RSS, CPU) and one proxy's RSS with 1,000 destinations.
bench-control:
	bench/control.sh

## bench-smoke (part of test): every bench script with SMOKE=1 (one round, about a second a step),
## checked only for producing its tables. Any bench target takes SMOKE=1 too: make bench SMOKE=1.
bench-smoke:
	bench/smoke.sh

clean:
	$(CARGO) clean
