"""Invariants hold in the database itself, even for writes that skip clean()."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from governance.models import (
    AccessToken,
    Classification,
    ColumnClassification,
    Datasource,
    Environment,
    GuardrailRule,
    Identity,
    MaskingRule,
)

pytestmark = pytest.mark.django_db


def _refused(action) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        action()


def test_builtins_are_seeded_by_migration():
    assert {e.name: e.criticality for e in Environment.objects.all()} == {
        "production": 5,
        "staging": 3,
        "sandbox": 1,
    }
    names = set(Classification.objects.filter(is_builtin=True).values_list("name", flat=True))
    assert {"pii.email", "pii.ssn", "financial.card", "secret.token", "network.ip"} <= names


def test_identity_constraints(demo_policy):
    _refused(lambda: Identity.objects.create(name="orphan", kind="service"))
    _refused(lambda: Identity.objects.create(name="Bad Name", kind="human"))
    _refused(lambda: Identity.objects.create(name="x", kind="robot"))
    _refused(lambda: Identity.objects.filter(pk=demo_policy.service.pk).update(owner=None))
    _refused(
        lambda: Identity.objects.filter(pk=demo_policy.owner.pk).update(owner=demo_policy.owner)
    )
    _refused(
        lambda: Identity.objects.filter(pk=demo_policy.service.pk).update(
            user=demo_policy.owner.user
        )
    )


def test_policy_constraints(demo_policy):
    ds = demo_policy.datasource
    rule = demo_policy.masking_rules[0]
    guardrail = demo_policy.guardrails[0]
    _refused(lambda: Datasource.objects.filter(pk=ds.pk).update(engine="mysql"))
    _refused(lambda: Environment.objects.create(name="moon", criticality=9))
    _refused(lambda: Classification.objects.create(name="pii.x", level="secret"))
    _refused(lambda: MaskingRule.objects.filter(pk=rule.pk).update(strategy="rot13"))
    _refused(lambda: MaskingRule.objects.filter(pk=rule.pk).update(params=[1, 2]))
    _refused(lambda: GuardrailRule.objects.filter(pk=guardrail.pk).update(action="maybe"))
    _refused(lambda: GuardrailRule.objects.filter(pk=guardrail.pk).update(message=""))
    _refused(lambda: GuardrailRule.objects.filter(pk=guardrail.pk).update(conditions="x"))
    column = demo_policy.columns[0]
    _refused(lambda: ColumnClassification.objects.filter(pk=column.pk).update(confidence=1.5))
    _refused(lambda: ColumnClassification.objects.filter(pk=column.pk).update(confirmed_at=None))
    _refused(
        lambda: ColumnClassification.objects.create(
            datasource=ds,
            schema_name=column.schema_name,
            table_name=column.table_name,
            column_name=column.column_name,
            classification=column.classification,
        )
    )


def test_guardrail_positions_are_unique_at_commit(demo_policy):
    first, second = demo_policy.guardrails
    from django.db import connection

    with pytest.raises(IntegrityError), transaction.atomic():
        GuardrailRule.objects.filter(pk=second.pk).update(position=first.position)
        # What COMMIT would do; the test's transaction never commits.
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_token_columns_hold_only_digests(demo_policy, admin_user):
    from governance.services import token_issue

    token, _ = token_issue(actor=admin_user, identity=demo_policy.service, name="t")
    _refused(lambda: AccessToken.objects.filter(pk=token.pk).update(digest="plaintext"))
    _refused(lambda: AccessToken.objects.filter(pk=token.pk).update(scram_verifier="md5abc"))
