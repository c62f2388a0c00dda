# The two commands: `make run` starts Warden, `make test` runs the tests.
# Both create the virtualenv and install what they need first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench clean native fuzz compat

$(STAMP): requirements.txt requirements-dev.txt sidecar/requirements.txt sidecar/requirements-mcp.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# The sidecar's native relay (sidecar/proxy/_relay.c): optional, so a machine
# without a C compiler runs the pure-Python relay instead of failing.
native: $(STAMP)
	-$(PY) -m sidecar.proxy.build_relay

run: $(STAMP) native
	$(PY) -m config.run

test: $(STAMP) native
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m config.devstack test $(PYTEST_ARGS)

# The native relay under AddressSanitizer, against the Python relay, with malformed
# and fragmented messages (not part of `make test`).
fuzz: $(STAMP)
	$(PY) tests/fuzz/relay.py --seconds $(or $(FUZZ_SECONDS),120)

# Native clients' own suites (psycopg, asyncpg, Django's, pg_dump/pg_restore), directly
# and through a sandbox sidecar, with the ratio of each (docs/compatibility.md; not part
# of `make test`). DATABASE_URL must name an administrator of the server (the run makes
# and drops its role and scratch databases); PSYCOPG_SRC a psycopg checkout, if wanted.
compat: $(STAMP) native
	$(PY) -m pip install --quiet -r compat/requirements.txt
	$(PY) -m compat.run $(COMPAT_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) var
