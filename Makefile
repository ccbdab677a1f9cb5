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

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

test: setup
	$(BIN)/python -m pytest

cycle: setup
	@test -d $(WORKSPACE)/specs || $(BIN)/koschei init $(WORKSPACE)
	cd $(WORKSPACE) && $(abspath $(BIN))/koschei cycle

lint: setup
	$(BIN)/ruff check koschei tests
