# The two commands: `make run` starts Warden, `make test` runs the tests.
# Both create the virtualenv and install what they need first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench clean native fuzz compat dist-check screenshots

$(STAMP): requirements.txt requirements-demo.txt requirements-dev.txt sidecar/requirements.txt sidecar/requirements-mcp.txt
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
# and fragmented messages; schemathesis against the API; the engine's property tests at
# five times the examples `make test` runs (none of it part of `make test`).
fuzz: $(STAMP) native
	$(PY) tests/fuzz/relay.py --seconds $(or $(FUZZ_SECONDS),120)
	WARDEN_FUZZ=1 $(PY) -m config.devstack test -m fuzz tests/governance tests/approvals -p no:cacheprovider
	WARDEN_FUZZ=1 $(PY) -m config.devstack test tests/sidecar/engine/test_properties.py -p no:cacheprovider

# Native clients' own suites (psycopg, asyncpg, Django's, pg_dump/pg_restore), directly
# and through a sandbox sidecar, with the ratio of each (docs/compatibility.md; not part
# of `make test`). DATABASE_URL must name an administrator of the server (the run makes
# and drops its role and scratch databases); PSYCOPG_SRC a psycopg checkout, if wanted.
compat: $(STAMP) native
	$(PY) -m pip install --quiet -r compat/requirements.txt
	$(PY) -m compat.run $(COMPAT_ARGS)

# The sidecar's wheel (sidecar/pyproject.toml) in a fresh virtualenv without Django:
# `warden-sidecar --help`, `check` and a decision (not part of `make test`; needs the
# package index or a mirror for the wheel's dependencies).
dist-check: $(STAMP)
	PY=$(PY) sh deploy/dist-check.sh

# PNG screenshots of each role's home, the approvals inbox, the configuration history
# and the masking rule form, at 1440x900 and 390x844, in var/screenshots/ (Chromium;
# not part of `make test`).
screenshots: $(STAMP) native
	$(PY) -m config.devstack test tests/e2e/test_screenshots.py -m screenshots -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) var
