# mpp: `make demo` runs two Prometheus replicas behind mpp; `make test` checks everything.

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: all build release dist image test lint demo deps bench bench-deps bench-pingora bench-instructions soak clean

all: build

build:
	$(CARGO) build

# Optimized, quick to build: what `make demo` runs.
release:
	$(CARGO) build --release

# The shipped and benchmarked build (fat LTO, one codegen unit): target/dist/mpp.
dist:
	$(CARGO) build --profile dist

# The container image from the shipped binary, built with buildah from `Containerfile` (no
# registry needed), tagged localhost/mpp:<version>; `make image IMAGE=registry/mpp:tag` names
# it otherwise.
image: deps dist
	scripts/image.sh target/dist/mpp $(IMAGE)

# From Debian: prometheus and promtool (the tests and the demo run real servers), and podman,
# buildah and runc (the image and its test).
deps:
	@scripts/install-deps.sh

# The module graph must have no cycle (scripts/module-graph.py exits 1 on one), and the
# README's table of contents must list its sections (scripts/readme-toc.py writes it).
lint:
	python3 scripts/module-graph.py
	python3 scripts/readme-toc.py --check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test: deps lint
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast; \
	else \
		$(CARGO) test --no-fail-fast; \
	fi

demo: deps release
	scripts/demo.sh

# wrk, h2load, nginx and HAProxy from Debian: the benchmark's loads and references.
bench-deps:
	@scripts/install-deps.sh bench

# The Pingora reference proxy (bench/pingora: its own crate, lock file and target directory,
# outside mpp's build and tests).
bench-pingora:
	$(CARGO) build --release --manifest-path bench/pingora/Cargo.toml

bench: bench-deps deps dist bench-pingora
	python3 bench/bench.py
	python3 bench/coverage.py --write
	python3 bench/cache.py --write
	python3 bench/scale.py --write

# Instructions per proxied request, counted by callgrind (steady from run to run, unlike
# requests/s): `make bench-instructions BINARIES="old/mpp new/mpp"` compares builds.
bench-instructions: bench-deps dist
	python3 bench/instructions.py $(BINARIES)

# Ten minutes under GET and POST load while three real replicas are killed and restarted.
soak: deps bench-deps dist
	python3 bench/soak.py

clean:
	$(CARGO) clean
