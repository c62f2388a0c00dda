"""Benchmark of the audit UI's reads on 5 million events: the PII report and a
filtered explorer page, through Django's test client (views, forms, templates).

Creates a scratch database (the name of ``DATABASE_URL`` plus ``_auditbench``),
migrates it, seeds 5,000,000 events straight into the partitioned
``audit_event`` with ``INSERT ... SELECT generate_series`` (indexes dropped
during the load and rebuilt after, exactly as the migration defined them),
builds the ``audit_access_daily`` rollup from them, measures, and drops the
database again, also on failure:

    WARDEN_DEV=1 DATABASE_URL=postgresql://postgres@127.0.0.1:5432/warden \\
    REDIS_URL=redis://127.0.0.1:6379/N .venv/bin/python bench/audit_queries.py [--events N]

Chains are not plausible (hashes are filler): verification is not measured
here, only query latency. Ends with ``<metric>=<value> ms target=300 met|missed``
lines (p50 and p99 over repeated requests).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET_MS = 300.0
DAYS = 180  # the last quarter and this one are both full of events
IDENTITIES = 300  # people, services and agents; each mostly on one home datasource
DATASOURCES = 12
ENVIRONMENTS = ("production", "staging", "sandbox")


def _scratch_url(base: str) -> tuple[str, str, str]:
    parts = urlsplit(base)
    name = (parts.path.lstrip("/") or "warden") + "_auditbench"
    admin = urlunsplit(parts._replace(path="/postgres"))
    return urlunsplit(parts._replace(path=f"/{name}")), admin, name


def _admin(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


SEED = """
INSERT INTO audit_event (
    event_id, occurred_at, received_at, chain, seq, prev_hash, hash, source, type,
    identity_name, identity_kind, datasource_id, environment, sidecar_id, client_addr,
    application_name, statement_kind, statement, fingerprint, tables, columns,
    classifications, masked_columns, action, outcome, "rows", duration_ms, risk
)
SELECT
    'bench-' || i,
    ts,
    ts,
    'datasource:' || ds,
    i,
    repeat('0', 64),
    md5(i::text) || md5((i + 1)::text),
    'sidecar',
    CASE WHEN i % 50 = 0 THEN 'session_start' ELSE 'statement' END,
    'user-' || u,
    (ARRAY['human', 'service', 'agent'])[1 + u % 3],
    ds,
    (ARRAY['production', 'staging', 'sandbox'])[1 + ds % 3],
    'sc-' || ds,
    '10.0.' || (i % 250) || '.' || (i % 200),
    'psql',
    CASE WHEN i % 10 = 0 THEN 'update' ELSE 'select' END,
    'SELECT id, email FROM public.t' || (i % 60) || ' WHERE id = ?',
    md5((i % 500)::text),
    ARRAY['public.t' || (i % 60)],
    ARRAY['public.t' || (i % 60) || '.id', 'public.t' || (i % 60) || '.email'],
    CASE i % 7
        WHEN 0 THEN ARRAY['pii.email']
        WHEN 1 THEN ARRAY['pii.email', 'pii.ssn']
        WHEN 2 THEN ARRAY['financial.card']
        ELSE ARRAY[]::text[]
    END,
    -- A third of the identities read through masks, the others raw (exempt).
    CASE WHEN u % 3 = 0 AND i % 7 < 3 THEN ARRAY['public.t' || (i % 60) || '.email']
         ELSE ARRAY[]::text[] END,
    CASE WHEN i % 20 = 0 THEN 'block' WHEN i % 20 = 1 THEN 'review' ELSE 'allow' END,
    CASE WHEN i % 20 = 0 THEN 'blocked' WHEN i % 20 = 1 THEN 'held' ELSE 'allowed' END,
    i % 100,
    (i % 1000) / 10.0,
    (i % 100)
FROM (
    SELECT i, u,
           CASE WHEN i % 10 = 0 THEN 1 + i % __datasources__
                ELSE 1 + u % __datasources__ END AS ds,
           ts
    FROM (
        SELECT i,
               ((i::bigint * 2654435761) % 4294967296) % __identities__ AS u,
               now() - (__days__ * interval '1 day') * (i::float8 / __n__) AS ts
        FROM generate_series(1, __n__) AS i
    ) AS h
) AS g
"""


def seed(n: int) -> dict[str, float]:
    """Fill the scratch database; returns the seconds each phase took."""
    from django.db import connection

    from audit.services import audit_rollups_rebuild
    from governance.models import Datasource, Environment

    timings: dict[str, float] = {}
    envs = {e.name: e for e in Environment.objects.all()}
    for pk in range(1, DATASOURCES + 1):
        Datasource.objects.create(pk=pk, name=f"bench-{pk}", environment=envs[ENVIRONMENTS[pk % 3]])
    with connection.cursor() as cur:
        start = time.perf_counter()
        t = start
        for month in range(0, DAYS // 28 + 2):
            for env in ENVIRONMENTS:
                cur.execute(
                    "SELECT audit_partition_ensure(now() - %s * interval '1 month', %s)",
                    [month, env],
                )
        timings["partitions_s"] = time.perf_counter() - t
        cur.execute(
            "SELECT c.relname, pg_get_indexdef(c.oid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'audit_event'::regclass AND NOT i.indisprimary"
        )
        indexes = cur.fetchall()
        assert indexes, "no secondary index found on audit_event"
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        cur.execute("SET maintenance_work_mem = '256MB'")
        t = time.perf_counter()
        # Plain integers spliced in: the statement uses % as the modulo operator.
        sql = SEED
        for key, value in {"n": n, "days": DAYS, "identities": IDENTITIES,
                           "datasources": DATASOURCES}.items():  # fmt: skip
            sql = sql.replace(f"__{key}__", str(int(value)))
        cur.execute(sql)
        timings["insert_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for _, definition in indexes:
            # The parent's definition reads "ON ONLY audit_event"; rebuild every partition's too.
            cur.execute(definition.replace(" ON ONLY ", " ON "))
        timings["indexes_s"] = time.perf_counter() - t
        t = time.perf_counter()
        audit_rollups_rebuild(since=datetime.date(2000, 1, 1))
        timings["rollup_s"] = time.perf_counter() - t
        t = time.perf_counter()
        cur.execute("SET default_statistics_target = 30")
        cur.execute("ANALYZE audit_event")
        cur.execute("ANALYZE audit_access_daily")
        cur.execute("ANALYZE audit_activity_daily")
        timings["analyze_s"] = time.perf_counter() - t
        timings["seed_total_s"] = time.perf_counter() - start
    return timings


CPU_MS: dict[str, float] = {}


def _measure(client: Any, url: str, params: dict[str, str], repeat: int) -> list[float]:
    """Wall-clock ms per request; the Django process's median CPU ms is kept in CPU_MS."""
    samples, cpu = [], []
    for _ in range(repeat + 2):
        t, c = time.perf_counter(), time.process_time()
        response = client.get(url, params)
        elapsed = (time.perf_counter() - t) * 1000
        cpu.append((time.process_time() - c) * 1000)
        assert response.status_code == 200, (url, response.status_code)
        samples.append(elapsed)
    CPU_MS[url + "?" + "&".join(f"{k}={v}" for k, v in params.items())] = statistics.median(cpu[2:])
    return samples[2:]  # the first two warm caches and templates


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(repeat: int) -> dict[str, list[float]]:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.urls import reverse

    from audit.reporting.reports import period_named
    from governance.models import Membership, Role

    user = get_user_model().objects.create_user("bench-auditor", password="x")
    Membership.objects.create(user=user, role=Role.AUDITOR)
    setup_test_environment()  # so responses carry their template context
    client = Client()
    client.force_login(user)
    last_q = period_named("last_quarter")
    report = reverse("audit:pii_report")
    explorer = reverse("audit:explorer")
    pii = client.get(report, {"period": "last_quarter"})
    rows = pii.context["row_count"]
    filtered = {"identity": "user-42", "classification": "pii.email", "type": "statement"}
    first = client.get(explorer, filtered)
    print(f"explorer_filtered_page_events={len(first.context['events'])}")
    # A deep page: the cursor of page 3 of a broad filter (keyset, no OFFSET).
    broad = {"environment": "production", "action": "allow"}
    cursor: dict[str, str] = {}
    for _ in range(3):
        page = client.get(explorer, {**broad, **cursor})
        next_url = page.context["next_url"]
        cursor = {"after": next_url.rsplit("after=", 1)[1]}
    print(f"pii_report_rows={rows} period={last_q.start}..{last_q.end}")
    from audit.templatetags.audit_links import event_url

    detail_path, _, detail_query = event_url(first.context["events"][0]).partition("?")
    detail_params = dict([detail_query.split("=", 1)])
    measured = {
        "audit_pii_report": _measure(client, report, {}, repeat),  # the last 30 days
        "audit_pii_report_quarter": _measure(client, report, {"period": "last_quarter"}, repeat),
        "audit_explorer_page": _measure(client, explorer, filtered, repeat),
        "audit_explorer_deep_page": _measure(client, explorer, {**broad, **cursor}, repeat),
        "audit_explorer_text_search": _measure(
            client, explorer, {"q": "public.t7 where", "since": str(last_q.start)}, repeat
        ),
        "audit_overview": _measure(client, reverse("audit:overview"), {}, max(5, repeat // 3)),
        # An event's page as the explorer links it (?at=: one partition's primary key).
        "audit_event_detail": _measure(client, detail_path, detail_params, repeat),
    }
    names = iter(measured)
    for cpu in CPU_MS.values():
        print(f"{next(names)}_django_cpu_p50={cpu:.1f} ms")
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/warden")
    url, admin, name = _scratch_url(base)
    _admin(admin, f'DROP DATABASE IF EXISTS "{name}"')
    _admin(admin, f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    try:
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command
        from django.db import connections

        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
        call_command("migrate", verbosity=0)
        timings = seed(args.events)
        for key, value in timings.items():
            print(f"{key}={value:.1f}")
        results = measure(args.repeat)
        connections.close_all()
    finally:
        _admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"events={args.events} repeat={args.repeat}")
    for metric, samples in results.items():
        p50, p99 = statistics.median(samples), _p(samples, 0.99)
        if metric in ("audit_pii_report", "audit_pii_report_quarter", "audit_explorer_page"):
            print(f"{metric}_p50={p50:.1f} ms target={TARGET_MS:.0f} "
                  f"{'met' if p50 < TARGET_MS else 'missed'}")  # fmt: skip
            print(f"{metric}_p99={p99:.1f} ms target={TARGET_MS:.0f} "
                  f"{'met' if p99 < TARGET_MS else 'missed'}")  # fmt: skip
        else:
            print(f"{metric}_p50={p50:.1f} ms")
            print(f"{metric}_p99={p99:.1f} ms")


if __name__ == "__main__":
    main()
