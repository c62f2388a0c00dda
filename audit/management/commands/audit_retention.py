"""``manage.py audit_retention [ENVIRONMENT DAYS --by ADMIN]``: how long the trail keeps events.

Without arguments, lists the retention of each environment. With them, sets it
(``DAYS`` at least 31, or ``default`` to go back to the default) as the admin
named by ``--by``, through ``audit.sink.retention.audit_retention_set``, which records
the change in history and in the audit trail. ``control-plane`` names the
control plane's own events (those without a datasource).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.models import DEFAULT_RETENTION_DAYS, AuditRetention
from audit.sink.retention import audit_retention_set

CONTROL_PLANE = "control-plane"


class Command(BaseCommand):
    help = "List, or set as an admin, how many days the audit trail keeps each environment."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("environment", nargs="?", help=f"Or '{CONTROL_PLANE}'.")
        parser.add_argument("days", nargs="?", help="At least 31, or 'default'.")
        parser.add_argument("--by", help="The admin making the change (recorded as its actor).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["environment"] is None:
            rows = dict(AuditRetention.objects.values_list("environment", "days"))
            self.stdout.write(f"default: {rows.pop('', DEFAULT_RETENTION_DAYS)} days")
            for environment, days in sorted(rows.items()):
                self.stdout.write(f"{environment}: {days} days")
            return
        if options["days"] is None or not options["by"]:
            raise CommandError("Give ENVIRONMENT, DAYS and --by ADMIN to change a retention.")
        actor = get_user_model().objects.filter(username=options["by"]).first()
        if actor is None:
            raise CommandError(f"No user named {options['by']!r}.")
        environment = "" if options["environment"] == CONTROL_PLANE else options["environment"]
        days: int | None = None
        if options["days"] != "default":
            try:
                days = int(options["days"])
            except ValueError as exc:
                raise CommandError(f"DAYS: a number or 'default', not {options['days']!r}") from exc
        try:
            row = audit_retention_set(actor=actor, environment=environment, days=days)
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        self.stdout.write(f"{options['environment']}: {row.days if row else 'default'} days")
