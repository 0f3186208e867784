# The two commands of the README: `make demo` and `make test`.
# Each installs what is missing first (scripts/setup.sh is idempotent).
SHELL := /bin/bash
CARGO ?= cargo
# scripts/env.sh points tch at the torch wheel in .venv (LIBTORCH, no Python);
# scripts/no-torch on PYTHONPATH makes any `import torch` during a build or a
# test fail loudly, so the build can never depend on an importable torch again.
ENV := source scripts/env.sh && PYTHONPATH=$(CURDIR)/scripts/no-torch

.PHONY: demo test setup build lint vectors bench-long check-build-env

setup:
	@scripts/setup.sh torch

build: setup
	$(ENV) $(CARGO) build --release --workspace

# Until the end-to-end two-party run lands: ResNet-18's ReLU/FLOP count, then the
# measured cost of its two building blocks (garbled ReLUs, HE linear layers).
demo: build
	./target/release/pibench count --model resnet18 --dataset cifar100
	./target/release/pibench micro relu --count 16384 --scheme half-gates
	./target/release/pibench micro linear --model resnet18 --dataset cifar100

test: setup
	$(ENV) $(CARGO) fmt --all -- --check
	$(ENV) scripts/check-build-env.sh
	$(ENV) $(CARGO) clippy --workspace --all-targets -- -D warnings
	$(ENV) $(CARGO) test --workspace

lint: setup
	$(ENV) $(CARGO) clippy --workspace --all-targets -- -D warnings

check-build-env: setup
	$(ENV) scripts/check-build-env.sh

# Regenerates the PyTorch test vectors under models/tests/vectors (needs a working `import torch`).
vectors:
	python3 models/tests/vectors/generate.py

# Long runs kept out of `make test`: ignored tests with real parameters and full-size models.
bench-long: setup
	$(ENV) $(CARGO) test --release --workspace -- --ignored
