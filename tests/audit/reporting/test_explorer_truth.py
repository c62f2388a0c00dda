"""The explorer and the overview on first open (issue 18): statements by default,
every event type in the filter, what a policy change touched, the columns a read
masked, and the overview's cards opening the explorer on the days they count."""

from __future__ import annotations

import datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from django.urls import reverse

from audit.sink.kinds import CONTROL_LABELS, event_type_groups
from audit.sink.trail import audit_control_event
from sidecar.events import EVENT_TYPES
from tests.audit.reporting.trail import event_add

pytestmark = pytest.mark.django_db


def test_explorer_opens_on_statements_and_lists_every_event_type(
    client, auditor_user, crm, now
) -> None:
    read = event_add(occurred_at=now - datetime.timedelta(minutes=2), datasource_id=crm.pk,
                     classifications=["pii.email"],
                     masked_columns=["public.customers.email"])  # fmt: skip
    event_add(occurred_at=now - datetime.timedelta(minutes=1), type="session_start",
              datasource_id=crm.pk, statement="", action="", outcome="")  # fmt: skip
    event_add(occurred_at=now, type="retired.kind", source="control_plane", statement="",
              action="", outcome="")  # fmt: skip
    client.force_login(auditor_user)
    page = client.get(reverse("audit:explorer"))
    assert [e.id for e in page.context["events"]] == [read]  # statements only
    assert page.context["form"]["type"].value() == "statement"
    html = page.content.decode()
    assert "masked: public.customers.email" in html
    options = {value for _, group in page.context["form"].fields["type"].choices[1:]
               for value, _ in group}  # fmt: skip
    # The contract's types, every declared control-plane type, and a stored one.
    assert options >= EVENT_TYPES | set(CONTROL_LABELS) | {"retired.kind"}
    assert '<option value="policy.change">Policy changed</option>' in html
    # "Any" is one choice away and shows every type.
    everything = client.get(reverse("audit:explorer"), {"type": ""})
    assert {e.type for e in everything.context["events"]} >= {
        "statement",
        "session_start",
        "retired.kind",
        "auth.sign_in",
    }


def test_a_policy_change_row_names_the_object_and_the_fields(
    client, auditor_user, security_user, crm
) -> None:
    from governance import services

    rule = services.guardrail_create(
        actor=security_user, name="No deletes", action="block", message="No.", datasource=crm
    )
    services.guardrail_update(actor=security_user, guardrail=rule,
                              data={"enabled": False, "message": "Ask first"},
                              reason="INC-7: replaced by a review rule")  # fmt: skip
    client.force_login(auditor_user)
    html = client.get(reverse("audit:explorer"), {"type": "policy.change"}).content.decode()
    assert "Changed guardrail rule No deletes: enabled, message" in html
    assert "Created guardrail rule No deletes" in html


def test_undeclared_control_plane_types_are_refused() -> None:
    with pytest.raises(ValueError, match="not a declared audit event type"):
        audit_control_event(action="policy.chnage")
    groups = dict(event_type_groups())
    assert "policy.change" in groups["Policy"] and "auth.sign_in" in groups["Sign-ins"]
    assert "approval.approved" in groups["Approvals"]


def test_overview_cards_open_the_explorer_on_their_days(client, auditor_user, crm, now) -> None:
    client.force_login(auditor_user)
    page = client.get(reverse("audit:overview"))
    today = now.astimezone(datetime.UTC).date()
    for key, days, extra in (("statements_14d_url", 14, {}),
                             ("blocked_7d_url", 7, {"outcome": ["blocked"]}),
                             ("held_7d_url", 7, {"outcome": ["held"]})):  # fmt: skip
        url = page.context[key]
        assert url in page.content.decode().replace("&amp;", "&")
        query = parse_qs(urlsplit(url).query)
        since = today - datetime.timedelta(days=days - 1)
        assert query == {"type": ["statement"], "since": [f"{since}T00:00:00"], **extra}
        assert client.get(url).status_code == 200
