# The two commands of the README: `make demo` and `make test`.
# Each installs what is missing first (scripts/setup.sh is idempotent).
SHELL := /bin/bash
CARGO ?= cargo
ENV := source scripts/env.sh &&

.PHONY: demo test setup build lint vectors bench-long

setup:
	@scripts/setup.sh torch

build: setup
	$(ENV) $(CARGO) build --release --workspace

# Until the end-to-end two-party run lands: ResNet-18's ReLU/FLOP count, then the
# measured cost of its two building blocks (garbled ReLUs, HE linear layers).
demo: setup
	$(ENV) $(CARGO) build --release -p pibench
	./target/release/pibench count --model resnet18 --dataset cifar100
	./target/release/pibench micro relu --count 16384 --scheme half-gates
	./target/release/pibench micro linear --model resnet18 --dataset cifar100

test: setup
	$(ENV) $(CARGO) fmt --all -- --check
	$(ENV) $(CARGO) test --workspace

lint: setup
	$(ENV) $(CARGO) clippy --workspace --all-targets -- -D warnings

# Regenerates the PyTorch test vectors under models/tests/vectors (needs a working `import torch`).
vectors:
	python3 models/tests/vectors/generate.py

# Long runs kept out of `make test`: ignored tests with real parameters and full-size models.
bench-long: setup
	$(ENV) $(CARGO) test --release --workspace -- --ignored
