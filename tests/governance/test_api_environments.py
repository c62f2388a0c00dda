"""The environments API: everyone who may read reads the protect threshold; only policy
editors change it, nothing else of an environment is writable, and the change
reaches the bundles of the environment's datasources."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.contenttypes.models import ContentType

from audit.models import ChangeRecord
from governance import services
from governance.bundles import bundle_compile
from governance.models import Environment
from tests.governance.test_api_access import Api

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(personas: dict[str, Any]) -> dict[str, Api]:
    clients = {role: Api(user) for role, user in personas.items()}
    clients["anonymous"] = Api()
    return clients


def _url(name: str = "production") -> str:
    return f"/api/v1/environments/{Environment.objects.get(name=name).pk}/"


def _history() -> Any:
    return ChangeRecord.objects.filter(content_type=ContentType.objects.get_for_model(Environment))


def _threshold(name: str = "production") -> float | None:
    return Environment.objects.get(name=name).protect_threshold


def test_everyone_who_may_read_sees_the_threshold(api: dict[str, Api]) -> None:
    assert api["anonymous"].call("GET", "/api/v1/environments/").status_code == 401
    assert api["none"].call("GET", "/api/v1/environments/").status_code == 403
    for role in ("admin", "security", "reviewer", "auditor"):
        response = api[role].call("GET", "/api/v1/environments/")
        assert response.status_code == 200, role
        by_name = {e["name"]: e for e in response.json()["results"]}
        assert by_name["production"]["protect_threshold"] == 0.3
        assert by_name["staging"]["protect_threshold"] == 0.3
        assert by_name["sandbox"]["protect_threshold"] is None


@pytest.mark.parametrize(
    ("role", "status"), [("anonymous", 401), ("none", 403), ("reviewer", 403), ("auditor", 403)]
)
def test_only_policy_editors_may_change_it(api: dict[str, Api], role: str, status: int) -> None:
    response = api[role].call("PATCH", _url(), {"protect_threshold": 0.9})
    assert response.status_code == status
    assert _threshold() == 0.3
    assert not _history().exists()


@pytest.mark.parametrize("role", ["admin", "security"])
def test_a_policy_editor_changes_it_with_history(api: dict[str, Api], role: str) -> None:
    response = api[role].call("PATCH", _url("sandbox"), {"protect_threshold": 0.5})
    assert response.status_code == 200, response.content
    assert response.json()["protect_threshold"] == 0.5
    assert _threshold("sandbox") == 0.5
    record = _history().get()
    assert (record.before["protect_threshold"], record.after["protect_threshold"]) == (None, 0.5)
    response = api[role].call("PATCH", _url("sandbox"), {"protect_threshold": None})
    assert response.status_code == 200 and _threshold("sandbox") is None


@pytest.mark.parametrize("value", [1.5, -0.1, "high", [0.3]])
def test_a_bad_threshold_is_400_with_the_field_named(api: dict[str, Api], value: Any) -> None:
    response = api["security"].call("PATCH", _url(), {"protect_threshold": value})
    assert response.status_code == 400
    assert "protect_threshold" in str(response.json())
    assert _threshold() == 0.3


def test_only_the_threshold_is_writable(api: dict[str, Api]) -> None:
    response = api["admin"].call(
        "PATCH", _url(), {"name": "prod", "criticality": 1, "protect_threshold": 0.4}
    )
    assert response.status_code == 200
    environment = Environment.objects.get(pk=response.json()["id"])
    assert (environment.name, environment.criticality) == ("production", 5)
    assert environment.protect_threshold == 0.4
    for method in ("PUT", "DELETE"):
        assert api["admin"].call(method, _url(), {"protect_threshold": 0.5}).status_code == 405
    assert api["admin"].call("POST", "/api/v1/environments/", {"name": "x"}).status_code == 405
    assert api["admin"].call("PATCH", "/api/v1/environments/999999/", {}).status_code == 404


def test_the_new_threshold_reaches_the_bundle(api: dict[str, Api], demo_policy: Any) -> None:
    services.sidecar_schema_report(
        datasource_id=demo_policy.datasource.pk,
        snapshot=demo_policy.datasource.schema_snapshot,
        findings=[
            {
                "schema": "public",
                "table": "customers",
                "column": "phone",
                "classification": "pii.phone",
                "confidence": 0.5,
                "detector": "name",
            }
        ],
    )

    def compiled() -> set[str]:
        demo_policy.datasource.refresh_from_db()
        bundle = bundle_compile(datasource=demo_policy.datasource)
        return {c["column"] for c in bundle["column_classifications"]}

    assert "phone" in compiled()
    # Production: each change of its threshold comes with a reason.
    raised = {"protect_threshold": 0.6, "reason": "fewer false positives"}
    assert api["security"].call("PATCH", _url(), raised).status_code == 200
    assert "phone" not in compiled()
    cleared = {"protect_threshold": None, "reason": "confirmed findings only"}
    assert api["security"].call("PATCH", _url(), cleared).status_code == 200
    assert "phone" not in compiled()


def test_the_datasource_switch_for_services_in_the_api(
    api: dict[str, Api], demo_policy: Any
) -> None:
    url = f"/api/v1/datasources/{demo_policy.datasource.pk}/"
    assert api["security"].call("GET", url).json()["mask_services_provisionally"] is False
    for role in ("reviewer", "auditor", "none"):
        response = api[role].call("PATCH", url, {"mask_services_provisionally": True})
        assert response.status_code == 403, role
    response = api["security"].call("PATCH", url, {"mask_services_provisionally": "maybe"})
    assert response.status_code == 400 and "mask_services_provisionally" in str(response.json())
    switched = {"mask_services_provisionally": True, "reason": "services too"}  # production
    response = api["security"].call("PATCH", url, switched)
    assert response.status_code == 200 and response.json()["mask_services_provisionally"] is True
    demo_policy.datasource.refresh_from_db()
    bundle = bundle_compile(datasource=demo_policy.datasource)
    assert bundle["datasource"]["mask_services_provisionally"] is True
