"""A real Celery worker (with beat) on the real broker runs what services enqueue on commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import transaction

from config.celery import app as celery_app
from governance import services
from governance.bundles import bundle_current
from governance.models import Environment, Identity
from tests.dsn import database_url

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


def _wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_policy_change_reaches_a_worker_only_after_commit(admin_user, tmp_path):
    env = {**os.environ, "WARDEN_DEV": "1", "DATABASE_URL": database_url()}
    # A queue of our own: other tests (other xdist workers) enqueue too.
    queue = f"test-{uuid.uuid4().hex}"
    default_queue = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = queue
    broker = redis.Redis.from_url(settings.REDIS_URL)
    datasource = services.datasource_create(
        actor=admin_user, name="celery-ds", environment=Environment.objects.get(name="staging")
    )
    assert broker.llen(queue) == 1  # the committed create enqueued its recompile
    with pytest.raises(RuntimeError), transaction.atomic():
        services.datasource_update(
            actor=admin_user, datasource=datasource, data={"description": "x"}
        )
        raise RuntimeError("abort")
    # Nothing was committed by the rolled-back change, so nothing more was enqueued.
    assert broker.llen(queue) == 1
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-B", "--pool", "solo",
         "--loglevel", "WARNING", "--schedule", str(tmp_path / "beat"), "-Q", queue],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        # The committed change reaches the worker, which publishes the bundle.
        assert _wait_for(lambda: bundle_current(datasource_id=datasource.pk) is not None)
        # The expiry sweep (scheduled by beat every 5 minutes) runs on the worker too.
        identity = Identity.objects.get(user=admin_user)
        Identity.objects.filter(pk=identity.pk).update(expires_at="2000-01-01T00:00:00Z")
        celery_app.send_task("governance.tasks.identities_expire", queue=queue)
        assert _wait_for(lambda: not Identity.objects.get(pk=identity.pk).is_active)
    finally:
        celery_app.conf.task_default_queue = default_queue
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
