"""Policy changes enqueue one bundle recompile per transaction, on the real broker.

A transaction of many changes (seeding the demo, say) enqueues one task for the
union of their datasources; a later transaction enqueues its own, so the last
change is never left waiting for another; a rolled-back one enqueues nothing.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import transaction

from config.celery import app as celery_app
from governance import services
from governance.bundles import _key, bundle_current
from governance.models import Environment
from governance.tasks import bundles_recompile

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queue() -> Iterator[tuple[redis.Redis, str]]:
    """A broker queue of this test's own (other tests enqueue too), emptied after."""
    name = f"test-{uuid.uuid4().hex}"
    default = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = name
    broker = redis.Redis.from_url(settings.REDIS_URL)
    yield broker, name
    celery_app.conf.task_default_queue = default
    broker.delete(name)


def _enqueued(broker: redis.Redis, name: str) -> list[dict[str, Any]]:
    """The keyword arguments of every task waiting in the queue, oldest first."""
    kwargs = []
    for raw in reversed(broker.lrange(name, 0, -1)):  # LPUSHed: newest first
        message = json.loads(raw)
        assert message["headers"]["task"] == "governance.bundles_recompile"
        _args, task_kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        kwargs.append(task_kwargs)
    return kwargs


def test_one_recompile_per_transaction_and_none_lost(admin_user: Any, queue: Any) -> None:
    broker, name = queue
    staging = Environment.objects.get(name="staging")

    # Many changes to two datasources in one transaction: one task for both.
    with transaction.atomic():
        a = services.datasource_create(actor=admin_user, name="batch-a", environment=staging)
        b = services.datasource_create(actor=admin_user, name="batch-b", environment=staging)
        for n in range(5):
            services.datasource_update(actor=admin_user, datasource=a, data={"description": f"{n}"})
        assert _enqueued(broker, name) == []  # nothing before the commit
    assert _enqueued(broker, name) == [{"datasource_ids": sorted([a.pk, b.pk])}]

    # A savepoint that rolls back drops its own callbacks; the batch still goes out
    # with the outer transaction's later change.
    with transaction.atomic():
        try:
            with transaction.atomic():
                services.datasource_update(
                    actor=admin_user, datasource=a, data={"description": "x"}
                )
                raise RuntimeError("roll the savepoint back")
        except RuntimeError:
            pass
        services.datasource_update(actor=admin_user, datasource=b, data={"description": "y"})
    assert len(_enqueued(broker, name)) == 2
    assert b.pk in _enqueued(broker, name)[1]["datasource_ids"]

    # A rolled-back transaction enqueues nothing.
    with pytest.raises(RuntimeError), transaction.atomic():
        services.datasource_update(actor=admin_user, datasource=a, data={"description": "z"})
        raise RuntimeError("abort")
    assert len(_enqueued(broker, name)) == 2

    # A change right after a batch went out gets a recompile of its own, and
    # running that task publishes a bundle with the change in it.
    services.guardrail_create(
        actor=admin_user, name="late-change", action="block", datasource=b, message="late"
    )
    last = _enqueued(broker, name)[-1]
    assert len(_enqueued(broker, name)) == 3 and b.pk in last["datasource_ids"]
    # (Forget any bundle an earlier run left in Redis under the same id.)
    broker.delete(*(_key(b.pk, part) for part in ("rev", "body", "content")))
    assert bundles_recompile.apply(kwargs=last).get() >= 1
    current = bundle_current(datasource_id=b.pk)
    assert current is not None and b"late-change" in current[1]

    # A change to every datasource's policy (a global guardrail) joins as "all".
    with transaction.atomic():
        services.datasource_update(actor=admin_user, datasource=a, data={"description": "w"})
        services.guardrail_create(
            actor=admin_user, name="global-change", action="block", message="no"
        )
    assert _enqueued(broker, name)[-1] == {"datasource_ids": None}
    assert len(_enqueued(broker, name)) == 4
