"""Settings refuse bad environment values at start-up, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _start(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "WARDEN_DEV", "DEBUG"}}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; settings.DATABASES",
        ],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "SECRET_KEY"),
        ({"WARDEN_DEV": "1", "DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL"),
        ({"WARDEN_DEV": "1", "DATABASE_URL": "sqlite:///x.db"}, "DATABASE_URL"),
        ({"WARDEN_DEV": "1", "REDIS_URL": "http://example.com"}, "REDIS_URL"),
        ({"WARDEN_DEV": "maybe"}, "WARDEN_DEV"),
        ({"WARDEN_DEV": "1", "DB_CONN_MAX_AGE": "soon"}, "DB_CONN_MAX_AGE"),
        ({"WARDEN_DEV": "1", "ACCOUNT_ALLOW_SIGNUPS": "perhaps"}, "ACCOUNT_ALLOW_SIGNUPS"),
        ({"WARDEN_DEV": "1", "OIDC_GROUP_ROLE_MAP": "{not json"}, "OIDC_GROUP_ROLE_MAP"),
        ({"WARDEN_DEV": "1", "OIDC_GROUP_ROLE_MAP": '{"dba": "god"}'}, "OIDC_GROUP_ROLE_MAP"),
        ({"WARDEN_DEV": "1", "OIDC_SERVER_URL": "https://idp.example"}, "OIDC_CLIENT_ID"),
        ({"WARDEN_DEV": "1", "SECRET_KEY_FILE": "/nonexistent/secret"}, "SECRET_KEY_FILE"),
    ],
)
def test_bad_value_stops_start_up_naming_it(env, named):
    result = _start(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert named in result.stderr.strip().splitlines()[-1]


def test_good_values_start():
    result = _start(SECRET_KEY="x" * 50, ALLOWED_HOSTS="warden.example")
    assert result.returncode == 0, result.stderr
