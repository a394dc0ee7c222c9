# The few commands people and CI run. `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
PYTEST_ARGS ?=

.PHONY: serve test test-sqlite test-postgres lint format clean screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

## Start the server on 127.0.0.1:8000 with SQLite and ./data (MODELPORT_* variables override).
serve: $(STAMP)
	$(VENV)/bin/modelport serve --host 127.0.0.1 --port 8000

## The whole suite on SQLite, then again on PostgreSQL when one answers at $(PG_URL).
test: $(STAMP)
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory test-sqlite
	$(MAKE) --no-print-directory test-postgres

test-sqlite: $(STAMP)
	MODELPORT_TEST_DATABASE=sqlite $(PY) -m pytest $(PYTEST_ARGS)

test-postgres: $(STAMP)
	@if $(PY) scripts/pg_available.py "$(PG_URL)"; then \
		MODELPORT_TEST_DATABASE=postgresql MODELPORT_TEST_PG_URL="$(PG_URL)" $(PY) -m pytest $(PYTEST_ARGS); \
	elif [ "$$CI" = "true" ]; then \
		echo "PostgreSQL is required in CI but does not answer at $(PG_URL)"; exit 1; \
	else \
		echo "SKIPPED the PostgreSQL run: no server answers at $(PG_URL) (set PG_URL=... to point at one)"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy

## Retake docs/images/*.png: the web console test's tour, in Debian's chromium.
screenshots: $(STAMP)
	MODELPORT_TEST_DATABASE=sqlite MODELPORT_SCREENSHOTS=docs/images $(PY) -m pytest tests/e2e/test_web.py -q

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks scripts

clean:
	rm -rf $(VENV) .venvs .pytest_cache .mypy_cache .ruff_cache
