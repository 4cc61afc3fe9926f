# Everything sets itself up: `make demo` and `make test` each create .venv and
# install the project with its test extras on a machine with only Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
DEMO_DATE ?= 2026-11-24

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=python3"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	@rm -rf demo/export demo/run
	$(BIN)/shakers-rules generate --projects 2000 --seed 7 --as-of $(DEMO_DATE) --out demo/export
	$(BIN)/shakers-rules run --export demo/export --out demo/run --ledger demo/ledger.sqlite

# Lint and types first: a style or type error fails in seconds, before the 8-minute suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q
	$(BIN)/shakers-rules test policies.yaml --coverage --fail-under 100 --quiet

clean:
	rm -rf $(VENV) demo .pytest_cache .hypothesis
