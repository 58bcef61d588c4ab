# Everything a newcomer needs: `make demo` and `make test` set themselves up.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
CODEX   := node_modules/@openai/codex/bin/codex.js

.PHONY: setup test demo lint bench clean schemas

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,ray]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy phh_engine phh_tui

# pytest exits 5 when it collected no test: that fails the target on purpose. There is no
# rerun of failed tests: a test that needs a second chance is a bug to find and fix. The
# outer timeout turns a hang into a failure instead of eating CI's budget (each test also
# has pytest-timeout's 300 s).
test: setup lint
	timeout -k 10 2400 $(BIN)/pytest -q

demo: setup
	$(BIN)/phh demo

bench: setup
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/scoreboard.py

schemas: setup
	$(BIN)/python -m phh_engine.schemas --write

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache .mypy_cache
