# The two commands a new user types: `make demo` (the CPU mini-reproduction) and `make test`.
# Both create .venv on first use with the pinned working set.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint format demo data slurm clean-venv

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q -c constraints.txt --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# `data` installs Fashion-MNIST so the smoke run of the mini-reproduction runs in CI; `slurm`
# installs a real SLURM for the launcher tests (they skip, saying why, where it cannot).
test: setup lint data slurm
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)

# ---- `make demo` / `make data` (issue 6: the CPU mini-reproduction) ------------------------
FMNIST_ROOT ?= /usr/share/datasets/fashion-mnist
FMNIST_FILE := $(FMNIST_ROOT)/train-images-idx3-ubyte.gz
# apt needs root: use sudo when not root and sudo exists.
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo)

# Real Fashion-MNIST (the Debian/Ubuntu package `dataset-fashion-mnist`, the idx files that
# mmpretrain's FashionMNIST reads) under $(FMNIST_ROOT).
data:
	@if [ -f "$(FMNIST_FILE)" ] || [ -f "$(FMNIST_ROOT)/train-images-idx3-ubyte" ]; then \
		echo "data: Fashion-MNIST present in $(FMNIST_ROOT)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "data: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"; \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; } \
		|| { echo "data: could not install the package dataset-fashion-mnist (needs root / sudo and a Debian or Ubuntu package index). Put the four idx files of https://github.com/zalandoresearch/fashion-mnist in a folder and run: make demo FMNIST_ROOT=/that/folder" >&2; exit 1; }; \
	else \
		echo "data: Fashion-MNIST is missing from $(FMNIST_ROOT) and apt-get is not available here. Put the four idx files of https://github.com/zalandoresearch/fashion-mnist in a folder and run: make demo FMNIST_ROOT=/that/folder" >&2; \
		exit 1; \
	fi

# The CPU mini-reproduction: pretrain, adapt with every method over 3 seeds, cost, proxy
# Tables 2 and 4, Figures 3-5 and RESULTS.md under results/mini/ (about 15 minutes on 2 cores;
# a re-run reuses the pretraining and the finished runs in work_dirs/mini).
demo: setup data
	FMNIST_ROOT=$(FMNIST_ROOT) PYTHON=$(BIN)/python scripts/reproduce_mini.sh --out results/mini

# SLURM + munge (Debian packages) for the tests that run sweeps on a real single-node cluster
# (tests/slurm_cluster.py starts and stops the daemons). Optional: without root or apt the
# SLURM tests skip with a message.
SLURM_PKGS := slurmctld slurmd slurm-client munge
slurm:
	@if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then \
		echo "slurm: present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ -n "$(SUDO)$$( [ "$$(id -u)" = 0 ] && echo root)" ]; then \
		echo "slurm: installing $(SLURM_PKGS) (apt-get)"; \
		{ $(SUDO) apt-get install -y -qq $(SLURM_PKGS) >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(SLURM_PKGS) >/dev/null; }; } \
		|| echo "slurm: could not install $(SLURM_PKGS); the SLURM tests will skip" >&2; \
	else \
		echo "slurm: not installed and no root apt-get here; the SLURM tests will skip" >&2; \
	fi
