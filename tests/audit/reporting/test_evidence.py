"""Evidence packs: the ZIP's files and manifest, secrets left out, failures recorded,
and the whole workflow through a real Celery worker with the page polling it."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from audit.report_models import EvidencePack
from audit.reporting.evidence import evidence_pack_build, evidence_pack_request
from governance.models import Role
from tests.audit.reporting.trail import event_add
from tests.dsn import database_url

ROOT = Path(__file__).resolve().parents[3]


def _zip(body: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _period(now: datetime.datetime) -> tuple[datetime.date, datetime.date]:
    return (now - datetime.timedelta(days=7)).date(), (now + datetime.timedelta(days=1)).date()


@pytest.mark.django_db
def test_pack_holds_policy_report_verification_and_a_true_manifest(
    auditor_user: Any, review_setup: Any, open_request: Any, now: datetime.datetime
) -> None:
    from approvals.services import approval_decide

    demo_policy = review_setup
    ds = demo_policy.datasource
    held = open_request()
    approval_decide(request_id=held.id, user=review_setup.reviewer, approve=True, reason="ok")
    event_add(occurred_at=now - datetime.timedelta(days=1), identity_name="svc-billing",
              identity_kind="service", datasource_id=ds.pk,
              classifications=["pii.ssn"])  # fmt: skip
    start, end = _period(now)
    pack = EvidencePack.objects.create(
        requested_by=auditor_user, period_start=start, period_end=end
    )
    pack = evidence_pack_build(pack_id=pack.pk)
    assert pack is not None and pack.status == "done", pack
    assert pack.progress == 100
    body = bytes(pack.content)
    assert pack.sha256 == hashlib.sha256(body).hexdigest() and pack.size == len(body)
    files = _zip(body)
    assert {"policy/crm-prod.json", "approvals.json", "access-report.csv", "verification.json",
            "manifest.json", "SHA256SUMS"} <= set(files)  # fmt: skip
    manifest = json.loads(files["manifest.json"])
    listed = {entry["name"]: entry for entry in manifest["files"]}
    assert set(listed) == set(files) - {"manifest.json", "SHA256SUMS"}
    for name, entry in listed.items():
        assert entry["sha256"] == hashlib.sha256(files[name]).hexdigest(), name
        assert entry["size"] == len(files[name])
    sums = files["SHA256SUMS"].decode().splitlines()
    assert sorted(sums) == sorted(f"{e['sha256']}  {n}" for n, e in listed.items())
    assert manifest["period"] == {"start": str(start), "end_exclusive": str(end)}
    # The policy is the compiled bundle without its secrets (and no masking key at all).
    policy = json.loads(files["policy/crm-prod.json"])
    assert "masking_key" not in policy["datasource"]
    assert {c["column"] for c in policy["column_classifications"]} >= {"email", "ssn"}
    for identity in policy["identities"]:
        for credential in identity["credentials"]:
            assert credential["scram_sha_256"] == "[redacted]"
    report = files["access-report.csv"].decode().splitlines()
    assert report[0] == "identity,identity_kind,classification,statements,raw,masked"
    assert "svc-billing,service,pii.ssn,1,1,0" in report
    approvals = json.loads(files["approvals.json"])
    assert [a["id"] for a in approvals] == [str(held.id)]
    assert approvals[0]["state"] == "approved"
    assert approvals[0]["statement"] == "DELETE FROM public.customers WHERE id = $1"
    assert [(d["reviewer"], d["approve"], d["reason"]) for d in approvals[0]["decisions"]] == [
        ("reviewer", True, "ok")
    ]
    verification = json.loads(files["verification.json"])
    assert verification["result"]["ok"] is True
    assert verification["result"]["checked"] >= 1


@pytest.mark.django_db
def test_pack_of_a_requester_who_lost_the_role_fails_closed(auditor_user, now) -> None:
    start, end = _period(now)
    pack = EvidencePack.objects.create(
        requested_by=auditor_user, period_start=start, period_end=end
    )
    auditor_user.membership.role = Role.REVIEWER
    auditor_user.membership.save()
    pack = evidence_pack_build(pack_id=pack.pk)
    assert pack is not None and pack.status == "failed" and pack.content is None
    assert "no longer read" in pack.error


@pytest.mark.django_db
def test_a_deleted_pack_is_skipped(auditor_user, now) -> None:
    start, end = _period(now)
    pack = EvidencePack.objects.create(
        requested_by=auditor_user, period_start=start, period_end=end
    )
    pack_id = pack.pk
    pack.delete()
    assert evidence_pack_build(pack_id=pack_id) is None


@pytest.mark.django_db
def test_request_validates_the_period(auditor_user, client) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        evidence_pack_request(actor=auditor_user, period_start=datetime.date(2026, 2, 1),
                              period_end=datetime.date(2026, 1, 1))  # fmt: skip
    with pytest.raises(ValidationError):
        evidence_pack_request(actor=auditor_user, period_start=datetime.date(2024, 1, 1),
                              period_end=datetime.date(2026, 1, 1))  # fmt: skip
    client.force_login(auditor_user)
    response = client.post(
        reverse("audit:evidence_list"), {"period_start": "2026-02-01", "period_end": "2026-01-01"}
    )
    assert response.status_code == 400 and b"must end after" in response.content
    assert not EvidencePack.objects.exists()


def _wait_for(predicate: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_pack_built_by_a_real_worker_and_downloaded(client, auditor_user, now, tmp_path) -> None:
    from config.celery import app as celery_app

    # A queue of our own: other tests (other xdist workers) enqueue too.
    queue = f"test-{uuid.uuid4().hex}"
    default_queue = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = queue
    client.force_login(auditor_user)
    try:
        start, end = _period(now)
        response = client.post(
            reverse("audit:evidence_list"), {"period_start": str(start), "period_end": str(end)}
        )
        assert response.status_code == 302
        pack = EvidencePack.objects.get(requested_by=auditor_user)
        # Before a worker runs, the row polls itself.
        row = client.get(reverse("audit:evidence_status", args=[pack.pk])).content.decode()
        assert 'hx-trigger="every 1s"' in row
        assert client.get(reverse("audit:evidence_download", args=[pack.pk])).status_code == 409
        env = {**os.environ, "WARDEN_DEV": "1", "DATABASE_URL": database_url()}
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo",
             "--loglevel", "WARNING", "-Q", queue],
            cwd=ROOT, env=env, start_new_session=True,
        )  # fmt: skip
        try:
            assert _wait_for(lambda: EvidencePack.objects.get(pk=pack.pk).is_finished)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        celery_app.conf.task_default_queue = default_queue
    pack.refresh_from_db()
    assert pack.status == "done", pack.error
    row = client.get(reverse("audit:evidence_status", args=[pack.pk])).content.decode()
    assert "hx-trigger" not in row and "Download ZIP" in row
    download = client.get(reverse("audit:evidence_download", args=[pack.pk]))
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    assert hashlib.sha256(download.content).hexdigest() == pack.sha256
    assert "manifest.json" in _zip(download.content)
