"""The demo policy builds through the services and leaves history behind."""

from audit.selectors import change_history_for


def test_demo_policy_builds_and_records_history(demo_policy, admin_user):
    guardrail = demo_policy.guardrails[0]
    history = list(change_history_for(guardrail))
    assert [r.action for r in history] == ["create"]
    assert history[0].actor_name == "admin"
    assert history[0].after["action"] == "block"
    assert demo_policy.service.owner == demo_policy.owner
