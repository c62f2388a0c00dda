"""A security team's ordinary day, for browser tests that look at every page:
pending approvals, a scanner proposal, sidecars in each state, audit events.

Built on ``demo_policy`` and the approvals scenario; audit events use identity
names of their own (the trail is append-only and outlives the live server's flush).
"""

from __future__ import annotations

import datetime
import uuid
from types import SimpleNamespace
from typing import Any

from django.utils import timezone

from governance import services
from governance.models import ClassificationStatus, ColumnClassification, Sidecar
from tests.approvals import scenario
from tests.audit.reporting.trail import event_add


def seed_day(*, demo: Any, admin: Any, reviewer: Any) -> SimpleNamespace:
    review = scenario.build(demo=demo, admin=admin, reviewer=reviewer)
    ds = demo.datasource
    ColumnClassification.objects.filter(pk=demo.columns[0].pk).update(
        status=ClassificationStatus.PROPOSED, confidence=0.91
    )
    never, _ = services.sidecar_register(actor=admin, datasource=ds, name="crm-prod-new")
    live, _ = services.sidecar_register(actor=admin, datasource=ds, name="crm-prod-1")
    silent, _ = services.sidecar_register(actor=admin, datasource=ds, name="crm-prod-2")
    for sidecar, counters in [
        (live, {"connections": 12, "statements": 3401, "privileged_upstream": 1}),
        (silent, {"connections": 0, "statements": 17}),
    ]:
        services.sidecar_heartbeat_record(
            sidecar_id=sidecar.pk,
            revision="",
            version="0.9.0",
            counters=counters,
            bundle_status={},
        )
    Sidecar.objects.filter(pk=silent.pk).update(
        last_heartbeat_at=timezone.now() - datetime.timedelta(hours=3)
    )
    who = f"ana-{uuid.uuid4().hex[:6]}"
    now = datetime.datetime.now(datetime.UTC)
    long_statement = (
        "SELECT customers.id, customers.full_name, customers.email, customers.phone, "
        "customers.ssn, orders.card_number, orders.amount FROM public.customers JOIN "
        "public.orders ON orders.customer_id = customers.id WHERE customers.id = ?"
    )
    for i in range(12):
        event_add(
            occurred_at=now - datetime.timedelta(hours=i * 5),
            identity_name=who if i % 3 else "svc-billing",
            datasource_id=ds.pk,
            statement=long_statement,
            tables=["public.customers", "public.orders"],
            classifications=["pii.email", "pii.ssn", "financial.card"],
            masked_columns=["public.customers.email", "public.customers.ssn"],
            outcome=["allowed", "blocked", "held"][i % 3],
            action=["allow", "block", "review"][i % 3],
        )
    return SimpleNamespace(review=review, sidecars={"never": never, "live": live, "silent": silent})
