"""The scan reporter's triggers against a real database: requests, failures, restarts."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import psycopg

from sidecar.scanner.reporter import ScanReporter, legacy_body, scanner_for, without_definitions
from tests.sidecar.proxy.conftest import admin_url, drop_database, with_database


def _bundle(requested: str | None) -> dict[str, Any]:
    return {
        "scan": {
            "interval_seconds": 0,
            "sample_rows": 20,
            "statement_timeout_ms": 2000,
            "requested": requested,
        }
    }


async def _until(check: Any, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_a_failed_request_stays_open_and_a_later_ask_is_answered(tmp_path: Path) -> None:
    name = "warden_scan_" + secrets.token_hex(4)
    url = with_database(admin_url(), name)  # not created yet: scans fail
    statuses: list[dict[str, Any]] = []

    async def scenario() -> None:
        reporter = ScanReporter(
            bundle=lambda: _bundle(None),
            scan=scanner_for(url, None),
            post=None,
            state_dir=tmp_path,
            on_status=statuses.append,
        )
        task = asyncio.create_task(reporter.run())
        try:
            await _until(lambda: reporter.failures == 1)  # the scan at start
            reporter.request("r1")
            await _until(lambda: reporter.failures == 2)
            with psycopg.connect(admin_url(), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            reporter.request("r1")  # asked again (the heartbeat repeats an open request)
            await _until(lambda: bool(statuses))
            reporter.request("r1")  # answered now: a repeat is ignored
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
        assert [(s["id"], s["trigger"]) for s in statuses] == [("r1", "request")]

    try:
        asyncio.run(scenario())
    finally:
        drop_database(name)
    report = json.loads((tmp_path / "scan-report.json").read_text())
    assert report["scan"]["id"] == "r1"


def test_a_request_made_while_down_is_answered_at_start(scratch_url: str, tmp_path: Path) -> None:
    (tmp_path / "scan-state.json").write_text(json.dumps({"answered_request": "old"}))

    def first_trigger(requested: str) -> tuple[str, str]:
        statuses: list[dict[str, Any]] = []

        async def scenario() -> None:
            reporter = ScanReporter(
                bundle=lambda: _bundle(requested),
                scan=scanner_for(scratch_url, None),
                post=None,
                state_dir=tmp_path,
                on_status=statuses.append,
            )
            task = asyncio.create_task(reporter.run())
            try:
                await _until(lambda: bool(statuses))
            finally:
                task.cancel()

        asyncio.run(scenario())
        return statuses[0]["trigger"], statuses[0]["id"]

    assert first_trigger("old")[0] == "start"  # already answered before the restart
    assert first_trigger("new") == ("request", "new")


def test_legacy_body_is_the_original_shape() -> None:
    body = {
        "snapshot": {"tables": []},
        "findings": [
            {
                "schema": "public",
                "table": "t",
                "column": "c",
                "classification": "pii.email",
                "confidence": 0.9,
                "share": 1.0,
                "detector": "email",
            }
        ],
        "scan": {"id": "x", "trigger": "start"},
    }
    assert legacy_body(body) == {
        "snapshot": {"tables": []},
        "findings": [
            {
                "schema": "public",
                "table": "t",
                "column": "c",
                "classification": "pii.email",
                "confidence": 0.9,
            }
        ],
    }


def test_a_new_interval_takes_effect_without_a_restart(scratch_url: str, tmp_path: Path) -> None:
    bundle = _bundle(None)
    statuses: list[dict[str, Any]] = []

    async def scenario() -> None:
        reporter = ScanReporter(
            bundle=lambda: bundle,
            scan=scanner_for(scratch_url, None),
            post=None,
            state_dir=tmp_path,
            on_status=statuses.append,
        )
        task = asyncio.create_task(reporter.run())
        try:
            await _until(lambda: len(statuses) == 1)  # at start; interval 0: nothing more
            await asyncio.sleep(1.5)
            assert len(statuses) == 1
            bundle["scan"] = {**bundle["scan"], "interval_seconds": 1}
            reporter.bundle_changed(bundle)
            await _until(lambda: len(statuses) == 3)
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert [s["trigger"] for s in statuses] == ["start", "schedule", "schedule"]


def test_an_undelivered_request_superseded_by_a_newer_report_stays_open(
    scratch_url: str, tmp_path: Path
) -> None:
    from sidecar.bundle import http_request
    from tests.sidecar.proxy.cluster import free_port

    unreachable = f"http://127.0.0.1:{free_port()}/api/v1/sidecar/schema"  # nothing listens

    async def post(body: dict[str, Any]) -> int:
        response = await http_request(
            "POST", unreachable, headers={}, body=json.dumps(body).encode(), timeout=2
        )
        return response.status

    statuses: list[dict[str, Any]] = []

    async def scenario() -> None:
        reporter = ScanReporter(
            bundle=lambda: _bundle(None),
            scan=scanner_for(scratch_url, None),
            post=post,
            state_dir=tmp_path,
            on_status=statuses.append,
        )
        task = asyncio.create_task(reporter.run())
        try:
            await _until(lambda: len(statuses) == 1)  # start; its delivery keeps failing
            reporter.request("r1")
            await _until(lambda: len(statuses) == 2)
            reporter.request("r1")  # still being delivered: not scanned twice
            reporter.request("r2")  # replaces r1's report, so r1 is open again
            await _until(lambda: len(statuses) == 3)
            reporter.request("r1")
            await _until(lambda: len(statuses) == 4)
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert [s["id"] for s in statuses[1:]] == ["r1", "r2", "r1"]
    assert not any(s["reported"] for s in statuses)


def test_without_definitions_drops_only_view_definitions() -> None:
    view = {"schema": "public", "name": "v", "kind": "view", "definition": "SELECT 1",
            "columns": [{"name": "a", "type": "integer", "sources": ["public.t.a"]}]}  # fmt: skip
    table = {"schema": "public", "name": "t", "kind": "table", "columns": []}
    body = {"snapshot": {"tables": [view, table]}, "findings": [], "scan": {"id": "x"}}
    slim = without_definitions(body)
    assert "definition" not in slim["snapshot"]["tables"][0]
    assert slim["snapshot"]["tables"][0]["columns"] == view["columns"]
    assert slim["snapshot"]["tables"][1] == table and slim["scan"] == body["scan"]
    assert "definition" in view  # the original is untouched
    assert without_definitions(slim) is slim
