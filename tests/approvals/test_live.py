"""Live approval pages (approvals.live): a poll that finds nothing new costs a Redis GET
and the sign-in's own queries, answers 204, and draws nothing; a change makes the next
poll draw the badge, the inbox's new cards (in the viewer's scope and filters only) and
"My requests" again. The browser side is tests/integration/test_approvals_browser.py."""

from __future__ import annotations

import re
import time
import uuid
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from django.test import Client
from django.urls import reverse

from approvals import live, services
from tests.approvals import scenario

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once", "_scenario_once")]

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _own_counter(settings: Any) -> None:
    # Other tests running beside this one bump the shared counter; this one counts alone.
    settings.WARDEN_APPROVALS_VERSION_KEY = f"test:approvals:version:{uuid.uuid4()}"


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _poll_url(html: bytes, element_id: str) -> str:
    """The hx-get of the element with this id (what htmx polls next)."""
    found = re.search(rb'id="' + element_id.encode() + rb'"[^>]*?hx-get="([^"]+)"', html, re.S)
    assert found, html[:3000]
    return found.group(1).decode().replace("&amp;", "&")


def _cursor(html: bytes) -> dict[str, str]:
    block = re.search(rb'<div id="inbox-cursor".*?</div>', html, re.S)
    assert block, html[:3000]
    inputs = re.findall(rb'name="([^"]+)" value="([^"]*)"', block.group(0))
    return {k.decode(): v.decode().replace("&amp;", "&") for k, v in inputs}


def _poll(client: Client, url: str, cursor: dict[str, str] | None = None) -> Any:
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    params.update(cursor or {})
    return client.get(parts.path, params, **HTMX)


def _open(s: SimpleNamespace, capture: Any, identity: Any, statement: str) -> Any:
    with capture(execute=True):
        return scenario.hold(
            datasource=s.agent_request.datasource, identity=identity, statement=statement
        )


def test_an_unchanged_badge_answers_204_with_no_query_of_approvals(
    s: SimpleNamespace, django_assert_max_num_queries: Any
) -> None:
    client = _client(s.reviewer)
    page = client.get(reverse("approvals:inbox"))
    url = _poll_url(page.content, "pending-badge")
    assert "v=0" in url and "at=" in url
    # The session, its user and the user's role: nothing of approvals, no template.
    with django_assert_max_num_queries(3):
        response = _poll(client, url)
    assert response.status_code == 204 and response.content == b""
    # Without htmx (a plain GET) it is drawn as before.
    assert client.get(url).status_code == 200


def test_a_change_makes_the_next_poll_draw_the_new_count(
    s: SimpleNamespace, django_capture_on_commit_callbacks: Any
) -> None:
    client = _client(s.reviewer)
    url = _poll_url(client.get(reverse("approvals:inbox")).content, "pending-badge")
    before = int(
        re.search(rb'data-count="(\d+)"', _poll(client, url.replace("v=0", "v=x")).content).group(1)
    )
    _open(
        s,
        django_capture_on_commit_callbacks,
        s.agent_request.identity,
        "DELETE FROM t WHERE a = $1",
    )
    assert live.approvals_version() == "1"
    response = _poll(client, url)
    assert response.status_code == 200
    assert re.search(rb'data-count="(\d+)"', response.content).group(1) == str(before + 1).encode()
    assert "v=1" in _poll_url(response.content, "pending-badge")


def test_an_old_poll_draws_even_unchanged(s: SimpleNamespace) -> None:
    client = _client(s.reviewer)
    stale = (
        f"{reverse('approvals:pending_badge')}?v=0&at={int(time.time()) - live.REFRESH_SECONDS - 1}"
    )
    assert _poll(client, stale).status_code == 200
    assert _poll(client, f"{reverse('approvals:pending_badge')}?v=0&at=junk").status_code == 200


def test_the_inbox_gets_only_new_cards_in_its_scope_and_filters(
    s: SimpleNamespace, django_capture_on_commit_callbacks: Any, admin_user: Any
) -> None:
    client = _client(s.reviewer)
    page = client.get(reverse("approvals:inbox"))
    url, cursor = _poll_url(page.content, "pending-badge"), _cursor(page.content)
    assert cursor["next"] == "/approvals/"
    shown = set(re.findall(rb'<article id="request-([0-9a-f-]{36})"', page.content))
    assert str(s.agent_request.pk).encode() in shown

    new = _open(
        s,
        django_capture_on_commit_callbacks,
        s.agent_request.identity,
        "DELETE FROM a WHERE b = $1",
    )
    # Another team's datasource: a new request there is not this reviewer's.
    with django_capture_on_commit_callbacks(execute=True):
        theirs = scenario.hold(
            datasource=s.billing, identity=s.agent_request.identity, statement="DELETE FROM x"
        )
    response = _poll(client, url, cursor)
    assert response.status_code == 200
    html = response.content
    assert b'hx-swap-oob="afterbegin:#approval-list"' in html
    cards = re.findall(rb'<article id="request-([0-9a-f-]{36})"', html)
    assert cards == [str(new.pk).encode()]  # not the ones shown, not another team's
    assert str(theirs.pk).encode() not in html
    after = _cursor(html)
    assert str(new.pk) in after["seen"].split(",")
    # The next poll with the new cursor: nothing new, nothing drawn.
    assert _poll(client, _poll_url(html, "pending-badge"), after).status_code == 204
    # A filter that the new request does not match brings nothing.
    filtered = {**cursor, "identity_kind": "human"}
    response = _poll(client, url.replace("v=0", "v=stale"), filtered)
    assert b"afterbegin" not in response.content and b'id="inbox-cursor"' in response.content
    # Nor from a page that carries no cursor (another page than the inbox's first).
    response = _poll(client, url.replace("v=0", "v=stale"))
    assert b"<article" not in response.content and b'id="inbox-cursor"' not in response.content


def test_my_requests_poll_204_until_a_decision_then_the_new_state(
    s: SimpleNamespace, django_capture_on_commit_callbacks: Any
) -> None:
    owner = s.reviewer  # owns agent-cleanup (owned_agent_request)
    client = _client(owner)
    page = client.get(reverse("approvals:mine"))
    url = _poll_url(page.content, "my-requests-live")
    assert _poll(client, url).status_code == 204
    with django_capture_on_commit_callbacks(execute=True):
        services.approval_decide(
            request_id=s.owned_agent_request.pk, user=s.reviewer2, approve=False, reason="No."
        )
    response = _poll(client, url)
    assert response.status_code == 200
    row = re.search(
        rb'id="mine-' + str(s.owned_agent_request.pk).encode() + rb'"[^>]*data-state="(\w+)"',
        response.content,
    )
    assert row and row.group(1) == b"denied"
    assert b"<html" not in response.content  # the list alone
    assert _poll(client, _poll_url(response.content, "my-requests-live")).status_code == 204


def test_signed_out_polls_send_the_page_to_sign_in(s: SimpleNamespace) -> None:
    for name in ("approvals:mine", "approvals:pending_badge"):
        response = Client().get(
            f"{reverse(name)}?v=0&at={int(time.time())}",
            headers={"HX-Request": "true", "HX-Current-URL": "http://testserver/approvals/mine/"},
        )
        assert response.status_code == 200 and "/accounts/login/" in response["HX-Redirect"]


def test_a_role_that_reviews_nothing_stops_polling_the_badge(
    s: SimpleNamespace, auditor_user: Any
) -> None:
    url = f"{reverse('approvals:pending_badge')}?v=0&at={int(time.time())}"
    assert _client(auditor_user).get(url, **HTMX).status_code == 286
