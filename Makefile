# The two commands a new user types: `make demo` (the CPU mini-reproduction) and `make test`.
# Both create .venv on first use with the pinned working set.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint format demo data slurm clean-venv gpu-wheels

# The last step puts lbp_wht_compat_hook.pth into the venv: on CPU-only machines, where the
# registry's torchvision is a CUDA build, it applies lbp_wht's CPU shims on the first import of
# torchvision, so `import lbp_wht, timm` works (lbp_wht/integrations/envhook.py, docs/RUNNING.md).
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml lbp_wht/integrations/envhook.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q -c constraints.txt --no-deps -e .
	$(BIN)/python -m lbp_wht.integrations.envhook --install
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

# ---- `make gpu-wheels`: the OpenMMLab stack as wheels for a GPU machine without network -------
# The lent GPU machine (its package list: torch, triton, timm, pandas, matplotlib, scipy, pytest,
# opencv-python-headless, rich, einops, pyyaml, regex, ...) has no mmengine / mmcv / mmpretrain /
# mmseg and no network. This downloads them (no dependencies resolved: the list below is the
# closure that machine lacks, pinned to the versions tested here; what the machine already holds,
# opencv's 50 MB wheel among it, is left out) into gpu-wheels/ (ignored by git), for Python 3.12
# on x86_64. scripts/gpu_check.sh installs them with `pip install --no-index --target`.
# A device run carries at most 64 MiB in all, the tracked tree (about 15 MB) and this folder
# together: checked below.
GPU_WHEELS_DIR ?= gpu-wheels
GPU_WHEELS := mmengine==0.10.7 mmcv-lite==2.1.0 mmpretrain==1.2.0 mmsegmentation==1.2.2 \
	addict==2.4.0 yapf==0.43.0 termcolor==3.3.0 mat4py==0.6.0 model-index==0.1.11 \
	ordered-set==4.1.0 ftfy==6.3.1 wcwidth==0.9.4 platformdirs==4.14.9 prettytable==3.18.0 \
	importlib-metadata==10.2.0 lazy-importer==0.1.0
gpu-wheels:
	mkdir -p $(GPU_WHEELS_DIR)
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
		-d $(GPU_WHEELS_DIR) $(GPU_WHEELS)
	@size=$$(du -sb $(GPU_WHEELS_DIR) | cut -f1); \
	tree=$$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1); \
	echo "gpu-wheels: $$size bytes in $(GPU_WHEELS_DIR), $$tree bytes of tracked files"; \
	if [ $$((size + tree)) -ge 67108864 ]; then \
		echo "gpu-wheels: tree + wheels over 64 MiB, a device run cannot carry them" >&2; exit 1; fi
