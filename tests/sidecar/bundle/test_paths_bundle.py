"""A path found by a scan reaches a real sidecar's bundle client as format 1.1, and the
client's engine rewrites reads of the column to mask the path.

The control plane is a real uvicorn; the bundle client a real process. Serial, like
every bundle test (tests/sidecar/bundle/conftest.py).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from governance import services
from governance.bundles import bundle_current, bundle_publish
from tests.conftest import DEMO_SCHEMA
from tests.stack import Server, SidecarClient

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

PROBE = "svc-billing:SELECT profile -> 'user' ->> 'email' FROM customers"


def test_a_path_classification_reaches_the_sidecar_as_format_1_1(
    control_plane: Server,
    sidecar_clients: list[SidecarClient],
    demo_policy: Any,
    admin_user: Any,
    tmp_path: Path,
) -> None:
    _, token = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-paths"
    )
    client = SidecarClient(url=control_plane.url, token=token, state_dir=tmp_path, probes=[PROBE])
    sidecar_clients.append(client)
    first = client.next_event(timeout=20, kind="active")
    assert first["event"] == "active"
    before = first["probes"][0]["upstream_sql"]

    snapshot = copy.deepcopy(DEMO_SCHEMA)
    snapshot["tables"][0]["columns"].append({"name": "profile", "type": "jsonb"})
    finding = {
        "schema": "public",
        "table": "customers",
        "column": "profile",
        "path": "user.email",
        "classification": "pii.email",
        "confidence": 0.97,
    }
    services.sidecar_schema_report(
        datasource_id=demo_policy.datasource.pk, snapshot=snapshot, findings=[finding]
    )
    published = bundle_publish(datasource=demo_policy.datasource)
    assert published.changed
    stored = bundle_current(datasource_id=demo_policy.datasource.pk)
    assert stored is not None
    assert json.loads(stored[1])["bundle"]["format"] == "warden.bundle/1.1"

    update = client.next_event(timeout=20, kind="active")
    assert update["event"] == "active", update
    assert update["revision"] == published.revision
    rewritten = update["probes"][0]["upstream_sql"]
    assert rewritten != before
    assert "jsonb_each" in rewritten and "'email'" in rewritten  # the path is masked
