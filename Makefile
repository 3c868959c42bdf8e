# The two commands a new user types: `make demo` (the CPU mini-reproduction) and `make test`.
# Both create .venv on first use with the pinned working set.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint format demo data clean-venv

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

test: setup lint
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
