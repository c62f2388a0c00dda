"""``manage.py mint_api_token <username> [--name N] [--days D]``: an API token for automation.

Prints the raw token once (on stdout, alone, so scripts can capture it); only
its SHA-256 digest is stored.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from governance.services import api_token_issue


class Command(BaseCommand):
    help = "Mint a management-API token for a user and print it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="A label to recognise it by.")
        parser.add_argument("--days", type=int, default=None, help="Expire after this many days.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user named {options['username']!r}.")
        expires_at = None
        if options["days"] is not None:
            if options["days"] < 1:
                raise CommandError("--days must be at least 1.")
            expires_at = timezone.now() + datetime.timedelta(days=options["days"])
        token, raw = api_token_issue(actor=user, name=options["name"], expires_at=expires_at)
        self.stderr.write(f"Token {token.prefix}… for {user.get_username()}; shown once:")
        self.stdout.write(raw)
