"""Settings refuse bad environment values at start-up, naming the variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _start(*, show: str = "", **env: str) -> subprocess.CompletedProcess:
    """Start Django with ``env``; ``show``: print these settings (comma-separated) as JSON."""
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "WARDEN_DEV", "DEBUG"}}
    code = "import django; django.setup(); from django.conf import settings; settings.DATABASES"
    if show:
        names = show.split(",")
        code += f"; import json; print(json.dumps({{n: getattr(settings, n) for n in {names!r}}}))"
    return subprocess.run(
        [sys.executable, "-c", code],
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
        (
            {"WARDEN_DEV": "1", "WARDEN_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"},
            "WARDEN_WEBHOOK_ALLOWED_NETWORKS",
        ),
        (
            {"WARDEN_DEV": "1", "WARDEN_APPROVAL_WEBHOOK_URL": "http://169.254.169.254/"},
            "WARDEN_APPROVAL_WEBHOOK_URL",
        ),
        ({"WARDEN_DEV": "1", "SECURE_SSL_REDIRECT": "maybe"}, "SECURE_SSL_REDIRECT"),
        ({"WARDEN_DEV": "1", "SECURE_HSTS_SECONDS": "a year"}, "SECURE_HSTS_SECONDS"),
        ({"WARDEN_DEV": "1", "SECURE_HSTS_SECONDS": "-1"}, "SECURE_HSTS_SECONDS"),
        ({"WARDEN_DEV": "1", "SECURE_PROXY_SSL_HEADER": "X Proto!"}, "SECURE_PROXY_SSL_HEADER"),
        ({"WARDEN_DEV": "1", "WARDEN_PUBLIC_API_DOCS": "perhaps"}, "WARDEN_PUBLIC_API_DOCS"),
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


def test_deployments_behind_tls_turn_the_secure_settings_on():
    result = _start(
        show="SECURE_SSL_REDIRECT,SESSION_COOKIE_SECURE,CSRF_COOKIE_SECURE,SECURE_HSTS_SECONDS,"
        "SECURE_HSTS_INCLUDE_SUBDOMAINS,SECURE_PROXY_SSL_HEADER,CSRF_TRUSTED_ORIGINS,"
        "WARDEN_WEBHOOK_ALLOWED_NETWORKS,WARDEN_CSP",
        SECRET_KEY="x" * 50,
        SECURE_SSL_REDIRECT="true",
        SESSION_COOKIE_SECURE="true",
        CSRF_COOKIE_SECURE="true",
        SECURE_HSTS_SECONDS="31536000",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
        CSRF_TRUSTED_ORIGINS="https://warden.example.com",
        WARDEN_WEBHOOK_ALLOWED_NETWORKS="10.20.0.0/16, 192.168.7.7",
        WARDEN_APPROVAL_WEBHOOK_URL="http://10.20.1.1/hook",
        OIDC_SERVER_URL="https://idp.example.com/realms/corp",
        OIDC_CLIENT_ID="warden",
        OIDC_CLIENT_SECRET="s",
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values["SECURE_SSL_REDIRECT"] and values["SECURE_HSTS_INCLUDE_SUBDOMAINS"]
    assert values["SESSION_COOKIE_SECURE"] and values["CSRF_COOKIE_SECURE"]
    assert values["SECURE_HSTS_SECONDS"] == 31536000
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert values["CSRF_TRUSTED_ORIGINS"] == ["https://warden.example.com"]
    assert values["WARDEN_WEBHOOK_ALLOWED_NETWORKS"] == ["10.20.0.0/16", "192.168.7.7/32"]
    # Single sign-on redirects a posted form to the identity provider: form-action allows it.
    assert values["WARDEN_CSP"]["form-action"] == ["'self'", "https://idp.example.com"]


def test_the_secure_settings_are_off_by_default_for_plain_http():
    result = _start(
        show="SECURE_SSL_REDIRECT,SESSION_COOKIE_SECURE,SECURE_HSTS_SECONDS,"
        "SECURE_PROXY_SSL_HEADER,WARDEN_PUBLIC_API_DOCS,DEBUG",
        WARDEN_DEV="1",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "SECURE_SSL_REDIRECT": False,
        "SESSION_COOKIE_SECURE": False,
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_PROXY_SSL_HEADER": None,
        "WARDEN_PUBLIC_API_DOCS": False,
        "DEBUG": False,
    }
