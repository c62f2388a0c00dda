"""/healthz and /readyz, in-process and on the real ASGI server with a dependency down."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

from tests.livesrv import free_port, uvicorn_server


def test_healthz_answers_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db
def test_readyz_ok_when_postgres_and_redis_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"postgresql": "ok", "redis": "ok"}}


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
@pytest.mark.parametrize("down", ["postgresql", "redis"])
def test_readyz_names_the_dependency_that_is_down(down):
    # A port nobody listens on: bound then released.
    dead = free_port()
    overrides = {
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "REDIS_URL": os.environ["REDIS_URL"],
    }
    if down == "postgresql":
        overrides["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{dead}/nothing"
    else:
        overrides["REDIS_URL"] = f"redis://127.0.0.1:{dead}/0"
    with uvicorn_server(overrides) as url:
        assert _get(f"{url}/healthz") == (200, {"status": "ok"})
        status, body = _get(f"{url}/readyz")
    assert status == 503
    assert body["status"] == "unavailable"
    up = {"postgresql", "redis"} - {down}
    assert body["checks"][down].startswith("failed: ")
    assert all(body["checks"][name] == "ok" for name in up), body


@pytest.mark.django_db
def test_unknown_api_url_answers_in_the_api_error_shape(client):
    response = client.get("/api/v1/no-such-thing/")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "not_found", "message": "Not found.", "fields": {}}
    }
    assert client.get("/no-such-page/").status_code == 404
