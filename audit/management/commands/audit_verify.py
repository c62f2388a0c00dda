"""``manage.py audit_verify [--datasource NAME] [--since DATE]``: check the hash chains.

Prints OK and how many events were checked, or the first broken link (chain,
seq, event id, why) and exits non-zero, so a cron job or a CI step can alert.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date, parse_datetime

from audit.models import CONTROL_PLANE_CHAIN, datasource_chain
from audit.sink.verify import audit_verify


def _since(value: str) -> datetime.datetime:
    at = parse_datetime(value)
    if at is None:
        day = parse_date(value)
        if day is None:
            raise CommandError(f"--since: {value!r} is not a date (YYYY-MM-DD) or a datetime.")
        at = datetime.datetime(day.year, day.month, day.day)
    return at if at.tzinfo else at.replace(tzinfo=datetime.UTC)


class Command(BaseCommand):
    help = "Verify the audit trail's hash chains; exit 1 at the first broken link."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--datasource",
            help=f"Only this datasource's chains (by name: its own and its sidecars'); "
            f"'{CONTROL_PLANE_CHAIN}' for the control plane's own.",
        )
        parser.add_argument("--since", help="Start at the first event on or after this date.")

    def handle(self, *args: Any, **options: Any) -> None:
        from governance.models import Datasource

        chain = None
        name = options.get("datasource")
        if name == CONTROL_PLANE_CHAIN:
            chain = CONTROL_PLANE_CHAIN
        elif name:
            pk = Datasource.objects.filter(name=name).values_list("pk", flat=True).first()
            if pk is None:
                raise CommandError(f"No datasource named {name!r}.")
            chain = datasource_chain(pk)
        since = _since(options["since"]) if options.get("since") else None
        result = audit_verify(chain=chain, since=since)
        if result.ok:
            self.stdout.write(f"OK: {result.checked} events in {result.chains} chain(s) verify.")
            return
        broken = result.first_broken or {}
        raise CommandError(
            f"BROKEN: chain {broken.get('chain')} at seq {broken.get('seq')} "
            f"(event {broken.get('event_id') or '-'}): {broken.get('reason')}. "
            f"{result.checked} events verified before it.",
            returncode=1,
        )
