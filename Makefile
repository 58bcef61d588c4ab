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
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# pytest exits 5 when it collected no test: that fails the target on purpose.
# A failure is re-run once (only the failed tests): a few tests are timing-sensitive on a
# loaded 2-core machine; a real failure fails both runs. The dashboard key tests run on
# their own under a hard time limit: one of them has hung intermittently in full-suite
# runs (open issue), and a hang must not eat CI's whole budget.
test: setup lint
	$(BIN)/pytest -q --ignore=tests/test_tui_keys.py || { \
		echo "== re-running only the failed tests once =="; \
		$(BIN)/pytest -q --ignore=tests/test_tui_keys.py --lf --lfnf=none; }
	for i in 1 2 3; do \
		timeout -k 10 600 $(BIN)/pytest -q -p no:cacheprovider tests/test_tui_keys.py \
			&& exit 0; \
		echo "== dashboard key tests: attempt $$i failed or hung =="; \
	done; exit 1

demo: setup
	$(BIN)/phh demo

bench: setup
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/scoreboard.py

schemas: setup
	$(BIN)/python -m phh_engine.schemas --write

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache
