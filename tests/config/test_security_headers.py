"""Browser-facing defaults: the Content-Security-Policy on every page, templates with
nothing inline for it to block, the API schema and docs behind sign-in, and Warden's
own error pages (never Django's debug pages) once DEBUG is off."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client
from django.urls import path

import config.urls
from tests.conftest import CSP_DIRECTIVES
from tests.governance.test_api_access import Api

pytestmark = pytest.mark.django_db

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def _directives(response) -> list[str]:
    return [d.strip() for d in response["Content-Security-Policy"].split(";")]


def test_every_page_carries_the_policy(admin_user, auditor_user):
    client = Client()
    pages = {"/accounts/login/": 200, "/no-such-page/": 404, "/guardrails/": 302}
    for url, status in pages.items():
        response = client.get(url)
        assert response.status_code == status, url
        assert set(CSP_DIRECTIVES) <= set(_directives(response)), url
    client.force_login(auditor_user)
    for url in ["/audit/", "/guardrails/", "/approvals/mine/", "/audit/events/"]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert set(CSP_DIRECTIVES) <= set(_directives(response)), url
    client.force_login(admin_user)
    response = client.get("/admin/governance/guardrailrule/")
    assert response.status_code == 200
    assert set(CSP_DIRECTIVES) <= set(_directives(response))


INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I), "script"),
    (re.compile(r"<style\b", re.I), "<style>"),
    (re.compile(r"\sstyle\s*=", re.I), "style attribute"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "event handler attribute"),
    (re.compile(r"\shx-on", re.I), "hx-on attribute"),
    (re.compile(r"javascript:", re.I), "javascript: URL"),
]


COMMENT = re.compile(r"{#.*?#}")


def test_templates_hold_nothing_inline_for_the_policy_to_block():
    found = [
        f"{file.relative_to(TEMPLATES)}:{n}: {what}"
        for file in sorted(TEMPLATES.rglob("*.html"))
        for n, line in enumerate(file.read_text().splitlines(), 1)
        for pattern, what in INLINE
        if pattern.search(COMMENT.sub("", line))
    ]
    assert not found, found


def test_python_that_writes_html_writes_no_inline_style_or_handler():
    root = TEMPLATES.parent
    pattern = re.compile(r"""\b(style|on[a-z]+)=\\?["']""")
    found = [
        f"{file.relative_to(root)}:{n}"
        for app in ("governance", "approvals", "audit", "config")
        for file in sorted((root / app).rglob("*.py"))
        if "migrations" not in file.parts
        for n, line in enumerate(file.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found


def test_the_api_schema_and_docs_are_for_signed_in_users_and_tokens(auditor_user, settings):
    anonymous = Client()
    assert anonymous.get("/api/schema/").status_code == 401
    docs = anonymous.get("/api/docs/")
    assert docs.status_code == 302 and docs["Location"].startswith("/accounts/login/?next=")
    assert Api().call("GET", "/api/docs/").status_code == 302
    token = Api(auditor_user)
    assert token.call("GET", "/api/schema/?format=json").status_code == 200
    signed_in = Client()
    signed_in.force_login(auditor_user)
    assert signed_in.get("/api/schema/").status_code == 200
    page = signed_in.get("/api/docs/")
    assert page.status_code == 200
    # The split view: the start-up script is a response of its own, not inline.
    assert re.findall(rb"<script[^>]*>", page.content) == [
        tag for tag in re.findall(rb"<script[^>]*>", page.content) if b"src=" in tag
    ]
    script = signed_in.get("/api/docs/?script=")
    assert script.status_code == 200 and b"SwaggerUIBundle" in script.content
    settings.WARDEN_PUBLIC_API_DOCS = True
    assert anonymous.get("/api/schema/").status_code == 200
    assert anonymous.get("/api/docs/").status_code == 200


def test_an_unknown_url_shows_warden_s_not_found_page(client, settings):
    settings.DEBUG = False
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert "404.html" in [t.name for t in response.templates]
    assert b"There is nothing here" in response.content
    assert b"URLconf" not in response.content


def _boom(request):
    raise RuntimeError("a bug")


urlpatterns = [*config.urls.urlpatterns, path("boom/", _boom)]
handler404 = config.urls.handler404
handler500 = config.urls.handler500


def test_a_crash_shows_warden_s_server_error_page(settings):
    settings.DEBUG = False
    settings.ROOT_URLCONF = __name__
    response = Client(raise_request_exception=False).get("/boom/")
    assert response.status_code == 500
    assert b"Something went wrong" in response.content
    assert b"Traceback" not in response.content and b"a bug" not in response.content
    assert set(CSP_DIRECTIVES) <= set(_directives(response))
