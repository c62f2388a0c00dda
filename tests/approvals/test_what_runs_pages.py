"""What the inbox card and the request page show a reviewer about what will run: the
values beside the statement and at its placeholders (a classified one redacted, with
its label), nothing misleading once purged or when none were sent, the planner's
estimate, and the warning when the grant will not be bound to the values."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals import services
from approvals.models import ApprovalRequest

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once", "review_once")]

STATEMENT = "UPDATE public.orders SET status = $1 WHERE customer_email = $2"
VALUES = [
    {"statement": 0, "n": 1, "value": "'refunded'"},
    {"statement": 0, "n": 2, "classification": "pii.email"},
]
ESTIMATE = {"rows": {"orders": 993}, "top": "ModifyTable", "error": ""}
SHAPE_WARNING = "lets the requester run this statement with any values, not only those shown"


@pytest.fixture
def held(open_request: Callable[..., ApprovalRequest]) -> Callable[..., ApprovalRequest]:
    """A request as a new sidecar opens it: with values and an estimate (stored through
    the ORM: what the sidecar API stores is another test's subject)."""
    count = iter(range(100))

    def make(statement: str = STATEMENT, **fields: Any) -> ApprovalRequest:
        request = open_request(
            statement=statement, kind="update", fingerprint=f"{next(count):064x}"
        )
        fields = {"values": VALUES, "estimate": ESTIMATE, **fields}
        ApprovalRequest.objects.filter(pk=request.pk).update(**fields)
        request.refresh_from_db()
        return request

    return make


def _reviewer(review_setup: Any) -> Client:
    client = Client()
    client.force_login(review_setup.reviewer)
    return client


def _card(page: str, pk: Any) -> str:
    start = page.index(f'id="request-{pk}"')
    return page[start : page.index("</article>", start)]


def _text(html: str) -> str:
    """What a reader sees: the tags dropped, the entities read, the spacing collapsed."""
    import html as htmllib

    return re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", "", html)))


def _inbox_card(client: Client, pk: Any) -> str:
    response = client.get(reverse("approvals:inbox"))
    assert response.status_code == 200
    return _card(response.content.decode(), pk)


def _detail(client: Client, pk: Any) -> str:
    response = client.get(reverse("approvals:detail", args=[pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_card_and_page_show_the_values_the_estimate_and_the_plan(
    review_setup: Any, held: Callable[..., ApprovalRequest]
) -> None:
    request = held(estimate={"rows": {"orders": 993, "order_items": 1234567}, "top": "ModifyTable"})
    client = _reviewer(review_setup)
    for html in (_inbox_card(client, request.pk), _card(_detail(client, request.pk), request.pk)):
        text = _text(html)
        # the table beside the statement
        assert "$1 = 'refunded'" in text
        assert "$2 = redacted (pii.email)" in text
        assert '<span class="badge badge-redacted">redacted (pii.email)</span>' in html
        # and at the placeholders, inside the highlighted statement
        statement = html[html.index('<pre class="sql"') : html.index("</pre>")]
        assert (
            '<span class="sql-bound"><span class="sql-ph">$1</span>'
            '<span class="sql-val" title="$1 = &#x27;refunded&#x27;">&#x27;refunded&#x27;</span>'
        ) in statement
        assert '<span class="sql-redacted"' in statement and "redacted (pii.email)" in statement
        assert '\n<span class="sql-k">WHERE</span>' in statement  # laid out
        assert "≈ 993 rows in orders (estimate)" in text
        assert "≈ 1,234,567 rows in order_items (estimate)" in text
        assert "Plan: ModifyTable" in text
        assert SHAPE_WARNING not in text
        assert "Values not sent" not in text and "retention period" not in text


def test_a_value_cannot_inject_markup(
    review_setup: Any, held: Callable[..., ApprovalRequest]
) -> None:
    request = held(
        values=[
            {"statement": 0, "n": 1, "value": "'<script>alert(1)</script>'"},
            {"statement": 0, "n": 2, "value": "'\"><img src=x onerror=alert(1)>'"},
        ],
        estimate={"rows": {"<b>orders</b>": 1}, "top": "<i>x</i>", "error": ""},
    )
    html = _detail(_reviewer(review_setup), request.pk)
    assert "<script>alert" not in html and "<img" not in html
    assert "<b>orders" not in html and "<i>x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "≈ 1 row in <b>orders</b> (estimate)" in _text(html)


def test_multi_statement_values_are_grouped_by_statement(
    review_setup: Any, held: Callable[..., ApprovalRequest]
) -> None:
    request = held(
        statement="UPDATE public.orders SET status = $1; DELETE FROM public.carts WHERE id = $1",
        values=[
            {"statement": 0, "n": 1, "value": "'refunded'"},
            {"statement": 1, "n": 1, "value": "42"},
        ],
    )
    text = _text(_card(_detail(_reviewer(review_setup), request.pk), request.pk))
    table = text[text.index("Values Statement 1") :]
    assert table.startswith("Values Statement 1 $1 = 'refunded' Statement 2 $1 = 42")


def test_purged_values_say_so(review_setup: Any, held: Callable[..., ApprovalRequest]) -> None:
    request = held(values=[], values_purged_at=timezone.now() - timedelta(days=1))
    client = _reviewer(review_setup)
    for html in (_inbox_card(client, request.pk), _detail(client, request.pk)):
        text = _text(html)
        assert "Values removed after the retention period." in text
        assert "Values not sent" not in text and "sql-bound" not in html
    # Even if a value were left behind, a purged request shows none.
    ApprovalRequest.objects.filter(pk=request.pk).update(values=VALUES)
    html = _detail(client, request.pk)
    assert "refunded" not in html and "Values removed after the retention period." in html


def test_without_values_from_an_older_sidecar_nothing_misleading_is_said(
    review_setup: Any, held: Callable[..., ApprovalRequest]
) -> None:
    old = held(values=[], estimate={})
    no_placeholders = held(statement="DELETE FROM public.carts", values=[], estimate={})
    client = _reviewer(review_setup)
    old_text = _text(_card(_detail(client, old.pk), old.pk))
    assert "Values not sent by this sidecar." in old_text
    assert "redacted (" not in old_text and "rows in" not in old_text and "Plan:" not in old_text
    plain = _text(_card(_detail(client, no_placeholders.pk), no_placeholders.pk))
    assert "Values" not in plain and "estimate" not in plain


def test_an_estimate_that_failed_says_why(
    review_setup: Any, held: Callable[..., ApprovalRequest]
) -> None:
    request = held(estimate={"rows": {}, "top": "", "error": "EXPLAIN failed: permission denied"})
    text = _text(_inbox_card(_reviewer(review_setup), request.pk))
    assert "Row estimate unavailable: EXPLAIN failed: permission denied" in text
    assert "rows in" not in text


def test_a_shape_bound_grant_is_flagged_on_the_card_and_the_page(
    review_setup: Any, held: Callable[..., ApprovalRequest]
) -> None:
    shape = held(binding="shape")
    exact = held(
        statement="UPDATE public.orders SET status = $1",
        binding="statement",
        values_digest="a" * 64,
    )
    client = _reviewer(review_setup)
    page = client.get(reverse("approvals:inbox")).content.decode()
    assert SHAPE_WARNING in _text(_card(page, shape.pk))
    assert SHAPE_WARNING not in _text(_card(page, exact.pk))
    assert SHAPE_WARNING in _text(_detail(client, shape.pk))
    # Once approved, the grant says what it lets run.
    for request in (shape, exact):
        services.approval_decide(request_id=request.pk, user=review_setup.reviewer, approve=True)
    assert "from the same identity, with any values, runs" in _text(_detail(client, shape.pk))
    exact_page = _text(_detail(client, exact.pk))
    assert "from the same identity, with the values shown, runs" in exact_page
    assert SHAPE_WARNING not in exact_page


def test_values_are_not_shown_to_the_wrong_role_or_another_team(
    review_setup: Any,
    held: Callable[..., ApprovalRequest],
    auditor_user: Any,
    admin_user: Any,
) -> None:
    from governance import services as gov
    from governance.models import Environment
    from tests.approvals.conftest import open_payload

    request = held()
    auditor = Client()
    auditor.force_login(auditor_user)
    assert auditor.get(reverse("approvals:inbox")).status_code == 403
    detail = auditor.get(reverse("approvals:detail", args=[request.pk]))
    assert detail.status_code in (403, 404) and b"refunded" not in detail.content
    # a datasource only team A reviews: the reviewers (team B) get 404
    other = gov.datasource_create(
        actor=admin_user,
        name="other-ds",
        environment=Environment.objects.get(name="staging"),
        connect_teams=[review_setup.team_a],
        review_teams=[review_setup.team_a],
    )
    theirs, _, _ = services.approval_request_open(
        datasource=other, identity=review_setup.owner, **open_payload()
    )
    ApprovalRequest.objects.filter(pk=theirs.pk).update(values=VALUES, estimate=ESTIMATE)
    response = _reviewer(review_setup).get(reverse("approvals:detail", args=[theirs.pk]))
    assert response.status_code == 404 and b"refunded" not in response.content
    assert (
        f"request-{theirs.pk}"
        not in _reviewer(review_setup).get(reverse("approvals:inbox")).content.decode()
    )
