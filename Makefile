# The few commands people and CI run. `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Exact versions of everything installed (requirements/together-*.txt: the test clients' venvs).
LOCK ?= requirements/lock.txt
NEXT := .venv-next
PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
PYTEST_ARGS ?=
# Test processes side by side (pytest-xdist) for the SQLite and PostgreSQL steps: most of the suite waits
# on servers, clients and browsers it starts, so two halve the time on two cores. 0 runs them in one.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS))

.PHONY: serve test test-sqlite test-postgres test-ray lint format clean screenshots lock-refresh

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c $(LOCK) --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c $(LOCK) -e '.[test,ray]'
	touch $(STAMP)

## Start the server on 127.0.0.1:8000 with SQLite and ./data (MODELPORT_* variables override).
serve: $(STAMP)
	$(VENV)/bin/modelport serve --host 127.0.0.1 --port 8000

## The whole suite on SQLite, then again on PostgreSQL when one answers at $(PG_URL), then the Ray
## group on a local three-node cluster; each step says how long it took.
test: $(STAMP)
	@for step in lint test-sqlite test-postgres test-ray; do \
		start=$$(date +%s); \
		$(MAKE) --no-print-directory $$step || exit $$?; \
		echo "== make $$step: $$(( $$(date +%s) - start )) s"; \
	done

test-sqlite: $(STAMP)
	MODELPORT_TEST_DATABASE=sqlite $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-postgres: $(STAMP)
	@if $(PY) scripts/pg_available.py "$(PG_URL)"; then \
		MODELPORT_TEST_DATABASE=postgresql MODELPORT_TEST_PG_URL="$(PG_URL)" $(PY) -m pytest $(XDIST) $(PYTEST_ARGS); \
	elif [ "$$CI" = "true" ]; then \
		echo "PostgreSQL is required in CI but does not answer at $(PG_URL)"; exit 1; \
	else \
		echo "SKIPPED the PostgreSQL run: no server answers at $(PG_URL) (set PG_URL=... to point at one)"; \
	fi

## The Ray group (tests/onray): a head and two worker nodes started by the tests, with the servers and
## clients, inside a loopback-only network namespace (Ray binds the host's interface address otherwise).
test-ray: $(STAMP)
	@if unshare -n true 2>/dev/null; then \
		unshare -n sh -c 'ip link set lo up && MODELPORT_TEST_DATABASE=sqlite MODELPORT_TEST_RAY=1 $(PY) -m pytest tests/onray $(PYTEST_ARGS)'; \
	elif [ "$$CI" = "true" ]; then \
		echo "The Ray tests need a network namespace of their own (unshare -n: root or user namespaces)"; exit 1; \
	else \
		echo "SKIPPED the Ray tests: unshare -n is not allowed here"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy

## Retake docs/images/*.png: the web console test's tour, in Debian's chromium.
screenshots: $(STAMP)
	MODELPORT_TEST_DATABASE=sqlite MODELPORT_SCREENSHOTS=docs/images $(PY) -m pytest tests/e2e/test_web.py -q

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks scripts

## Move the lock on deliberately: install the newest releases pyproject.toml allows into $(NEXT), say
## what moved, run the whole suite (and the together clients) on them, and write the locks only if it passes.
lock-refresh:
	rm -rf $(NEXT) .venvs-next
	$(PYTHON) -m venv $(NEXT)
	$(NEXT)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(NEXT)/bin/python -m pip install -q --disable-pip-version-check -e '.[test,ray]'
	$(NEXT)/bin/python scripts/lock.py freeze $(NEXT) > $(NEXT)/lock.txt
	$(NEXT)/bin/python scripts/lock.py diff $(LOCK) $(NEXT)/lock.txt
	touch $(NEXT)/.installed-stamp
	MODELPORT_TEST_UNLOCKED=1 MODELPORT_TEST_VENVS=$(CURDIR)/.venvs-next $(MAKE) --no-print-directory test VENV=$(NEXT)
	cp $(NEXT)/lock.txt $(LOCK)
	@for v in .venvs-next/together-*; do \
		$(NEXT)/bin/python scripts/lock.py freeze $$v > requirements/$$(basename $$v).next; \
		$(NEXT)/bin/python scripts/lock.py diff requirements/$$(basename $$v).txt requirements/$$(basename $$v).next; \
		mv requirements/$$(basename $$v).next requirements/$$(basename $$v).txt; \
	done
	@echo "The suite passed on the newest releases; $(LOCK) and requirements/together-*.txt now pin them."

clean:
	rm -rf $(VENV) $(NEXT) .venvs .venvs-next .pytest_cache .mypy_cache .ruff_cache
