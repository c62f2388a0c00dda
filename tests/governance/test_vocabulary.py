"""The control plane offers the engine's vocabulary (``sidecar.engine.vocabulary``).

Model choices, form choices, validators and the API's help text are built from
it or held equal to it here, so a policy author cannot write a name the engine
never produces (a guardrail on ``call`` that never matched a CALL) nor a masking
parameter the engine would apply differently.
"""

from __future__ import annotations

from typing import Any

import pytest

from governance import services
from governance.bundles import bundle_compile
from governance.forms import GuardrailForm, MaskingRuleForm
from governance.models import (
    STATEMENT_KINDS,
    GuardrailAction,
    Level,
    MaskingStrategy,
    strategy_params_help,
    validate_guardrail_conditions,
    validate_strategy_params,
)
from sidecar.engine import Engine, load_bundle, vocabulary


def test_model_choices_are_the_vocabulary() -> None:
    assert tuple(Level.values) == vocabulary.LEVELS
    assert tuple(GuardrailAction.values) == vocabulary.ACTIONS
    assert tuple(MaskingStrategy.values) == tuple(vocabulary.MASKING_STRATEGIES)
    assert STATEMENT_KINDS == vocabulary.GUARDRAIL_STATEMENT_KINDS


@pytest.mark.django_db
def test_forms_offer_the_vocabulary() -> None:
    kinds = [value for value, _ in GuardrailForm().fields["statement_kinds"].choices]
    assert kinds == list(vocabulary.GUARDRAIL_STATEMENT_KINDS)
    assert "call" in kinds
    actions = [v for v, _ in GuardrailForm().fields["action"].choices if v]
    assert actions == list(vocabulary.ACTIONS)
    form = MaskingRuleForm()
    strategies = [v for v, _ in form.fields["strategy"].choices if v]
    assert strategies == list(vocabulary.MASKING_STRATEGIES)
    # One typed field per parameter, bounded as the vocabulary says (the API's JSON
    # keeps strategy_params_help).
    for parameter in vocabulary.MASKING_PARAMETERS:
        field = form.fields[f"param_{parameter.name}"]
        assert (field.min_value, field.max_value) == (parameter.minimum, parameter.maximum)
    assert '"keep_last": 1 to 16' in strategy_params_help()


@pytest.mark.django_db
def test_every_engine_kind_and_category_is_a_valid_condition() -> None:
    names = sorted({*vocabulary.STATEMENT_KINDS, *vocabulary.CATEGORIES, *vocabulary.KIND_GROUPS})
    assert validate_guardrail_conditions({"statement_kinds": names}) == []


@pytest.mark.parametrize("parameter", vocabulary.MASKING_PARAMETERS, ids=lambda p: p.name)
def test_masking_parameter_bounds_are_the_vocabulary(parameter: vocabulary.IntParameter) -> None:
    strategy = next(s for s, ps in vocabulary.MASKING_STRATEGIES.items() if parameter in ps)
    for value in (parameter.minimum, parameter.maximum):
        assert validate_strategy_params(strategy, {parameter.name: value}) == []
    bounds = f"must be an integer from {parameter.minimum} to {parameter.maximum}"
    for value in (parameter.minimum - 1, parameter.maximum + 1, True, "4"):
        (problem,) = validate_strategy_params(strategy, {parameter.name: value})
        assert bounds in problem
    if parameter.required:
        (problem,) = validate_strategy_params(strategy, {})
        assert "is required" in problem


@pytest.mark.django_db
def test_a_guardrail_on_call_matches_a_call_through_the_compiled_bundle(
    demo_policy: Any, admin_user: Any
) -> None:
    services.guardrail_create(
        actor=admin_user,
        name="no-procedures",
        action="block",
        conditions={"statement_kinds": ["call"]},
        message="Procedures are not run through Warden.",
    )
    bundle = bundle_compile(datasource=demo_policy.datasource)
    rule = next(g for g in bundle["guardrails"] if g["name"] == "no-procedures")
    assert rule["conditions"]["statement_kinds"] == ["call"]
    engine = Engine(load_bundle(bundle))
    identity = bundle["identities"][0]["name"]
    decision = engine.decide(identity=identity, sql="CALL my_proc(1)")
    assert decision.statements[0].kind == "call"
    assert "no-procedures" in [r.rule for r in decision.reasons]
    other = engine.decide(identity=identity, sql="SELECT 1")
    assert "no-procedures" not in [r.rule for r in other.reasons]


@pytest.mark.django_db
def test_masking_bounds_compile_into_a_bundle_the_engine_loads(
    demo_policy: Any, admin_user: Any
) -> None:
    rule = next(r for r in demo_policy.masking_rules if r.strategy == "partial")
    for value in (vocabulary.KEEP_LAST.minimum, vocabulary.KEEP_LAST.maximum):
        services.masking_rule_update(
            actor=admin_user, rule=rule, data={"params": {"keep_last": value}}, reason="bounds"
        )
        bundle = bundle_compile(datasource=demo_policy.datasource)
        load_bundle(bundle)
        compiled = next(
            r for r in bundle["masking_rules"] if r["classification"] == rule.classification.name
        )
        assert compiled["params"] == {"keep_last": value}
