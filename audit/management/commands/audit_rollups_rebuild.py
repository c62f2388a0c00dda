"""``manage.py audit_rollups_rebuild --since DATE``: recount the daily rollups from the events.

The PII report and the overview read two rollups that ingestion keeps in the
same transaction as the events. Recount them after a deployment during which
processes running older code stored events, or after a restore.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date

from audit.sink.trail import audit_rollups_rebuild


class Command(BaseCommand):
    help = "Recount audit_access_daily and audit_activity_daily from the events, from a day on."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", required=True, help="First UTC day to recount (YYYY-MM-DD).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            since = parse_date(options["since"] or "")
        except ValueError:  # well formed, not a day (2026-02-30)
            since = None
        if since is None:
            raise CommandError(f"--since: {options['since']!r} is not a date (YYYY-MM-DD).")
        audit_rollups_rebuild(since=since)
        self.stdout.write(f"Rollups recounted from {since.isoformat()}.")
