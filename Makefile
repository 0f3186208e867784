# The two commands of the README: `make demo` and `make test`.
# Each installs what is missing first (scripts/setup.sh is idempotent).
SHELL := /bin/bash
CARGO ?= cargo
# scripts/env.sh points tch at the torch wheel in .venv (LIBTORCH, no Python);
# scripts/no-torch on PYTHONPATH makes any `import torch` during a build or a
# test fail loudly, so the build can never depend on an importable torch again.
ENV := source scripts/env.sh && PYTHONPATH=$(CURDIR)/scripts/no-torch

.PHONY: demo test setup build lint vectors bench-long check-build-env tables

setup:
	@scripts/setup.sh torch

build: setup
	$(ENV) $(CARGO) build --release --workspace

# The main job: ResNet-18 on CIFAR-100 masked to a seeds-like budget of 50K
# ReLUs, run between a server process and a client process on loopback with
# the real protocol, printed layer by layer and checked against the reference.
# It ends with a quick table: three rows of DeepReDuce Table 4 (7K-14K ReLUs),
# each with its --trunc exact column, written to results/demo/ (the committed
# tables under results/ are left alone).
DEMO_ROWS ?= s1-thin-a0.5-r0.5,s1s4-thin-a0.5-r0.5,s1-thin1blk-a0.5-r0.5
demo: build
	./target/release/pibench count --model resnet18 --dataset cifar100
	./target/release/pibench run --model resnet18 --dataset cifar100 --relus 50000
	./target/release/pibench table configs/tables/deepreduce-t4.toml --net lan --rows '$(DEMO_ROWS)' --out-dir results/demo
	@echo "demo: the quick table is in results/demo/ (deepreduce-t4.md, .csv, .json and the two plots); 'make tables' regenerates the committed ones"

test: setup
	$(ENV) $(CARGO) fmt --all -- --check
	$(ENV) scripts/check-build-env.sh
	$(ENV) $(CARGO) clippy --workspace --all-targets -- -D warnings
	$(ENV) $(CARGO) test --workspace

lint: setup
	$(ENV) $(CARGO) clippy --workspace --all-targets -- -D warnings

check-build-env: setup
	$(ENV) scripts/check-build-env.sh

# Regenerates the PyTorch test vectors under models/tests/vectors: float
# references and torch.save checkpoints of the SNL / AutoReP / ReLUPruner /
# plain naming schemes. Needs a working `import torch` and safetensors, e.g.
# `python3 -m venv /opt/torch && /opt/torch/bin/pip install torch==2.11.0
# safetensors` (the full wheel with its CUDA libraries; it runs on the CPU)
# and `make vectors PYTHON=/opt/torch/bin/python`.
PYTHON ?= python3
vectors:
	$(PYTHON) models/tests/vectors/generate.py
	$(PYTHON) models/tests/vectors/generate_checkpoints.py

# Long runs kept out of `make test`: ignored tests with real parameters and full-size models.
bench-long: setup
	$(ENV) $(CARGO) test --release --workspace -- --ignored

# Every table of configs/tables/, measured through the real protocol with LAN
# emulation into results/. Many hours on 2 cores (DeepReShape Table 7 alone:
# 43 min on the AMD machine of 2026-12-07; AutoReP Table 1's WRN-22-8
# Tiny-ImageNet row needs about 40 GB of disk for --store). --resume keeps
# every row already measured with the same settings on the same machine, so an
# interrupted run goes on where it stopped. A subset: make tables TABLES="deepreduce-t4 deepreduce-t5".
TABLES ?= $(sort $(basename $(notdir $(wildcard configs/tables/*.toml))))
tables: build
	./target/release/pibench table $(TABLES:%=configs/tables/%.toml) --net lan --resume --out-dir results
