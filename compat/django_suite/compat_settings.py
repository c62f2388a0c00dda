"""Settings for Django's own test suite (``tests/runtests.py --settings compat_settings``).

The database comes from the environment the compatibility suite sets
(``COMPAT_PG_HOST``, ``COMPAT_PG_PORT``, ``COMPAT_PG_USER``, ``COMPAT_PG_PASSWORD``,
``COMPAT_PG_NAME``): PostgreSQL itself for the baseline, a Warden sidecar for the
measure. A sidecar serves one database, so the test database is that database
(``TEST["NAME"]`` = ``NAME``) and the runner must be given ``--keepdb`` (it then
neither creates nor drops it) and ``--parallel 1`` (no clones). The ``other``
alias points at the same database: Django's runner sees the same test database
signature and sets it up once, for both aliases (docs/compatibility.md).
"""

import os
import warnings

# A sidecar serves one database and refuses the maintenance database ``postgres``:
# Django then warns that it uses the served database for its set-up queries.
# runtests.py turns every RuntimeWarning into an error; a project's own ``manage.py
# test`` only prints it.
warnings.filterwarnings(
    "ignore",
    message="Normally Django will use a connection to the 'postgres' database",
    category=RuntimeWarning,
)

_database = {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": os.environ["COMPAT_PG_HOST"],
    "PORT": os.environ["COMPAT_PG_PORT"],
    "USER": os.environ["COMPAT_PG_USER"],
    "PASSWORD": os.environ["COMPAT_PG_PASSWORD"],
    "NAME": os.environ["COMPAT_PG_NAME"],
    "OPTIONS": {"sslmode": "disable"},
    "TEST": {"NAME": os.environ["COMPAT_PG_NAME"]},
}

DATABASES = {"default": dict(_database), "other": dict(_database)}

SECRET_KEY = "django_tests_secret_key"  # noqa: S105 (Django's own test settings)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False

# Records every test's outcome (compat_runner.py), for the comparison.
TEST_RUNNER = "compat_runner.RecordingRunner"
