"""``manage.py set_role USERNAME ROLE --by ADMIN``: give a user a role.

Roles are not edited in the Django admin (view only): this goes through
``governance.services.membership_set_role`` as the admin named by ``--by``, so
the change is recorded in history and in the audit trail. Users who sign in
through single sign-on get theirs from ``OIDC_GROUP_ROLE_MAP`` instead.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser

from governance.models import Role
from governance.services import membership_set_role


class Command(BaseCommand):
    help = "Give a user a role (admin, security, reviewer, auditor, none), as an admin."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("role", choices=[r.value for r in Role])
        parser.add_argument(
            "--by", required=True, help="The admin making the change (recorded as its actor)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model().objects
        user = users.filter(username=options["username"]).first()
        actor = users.filter(username=options["by"]).first()
        for name, found in ((options["username"], user), (options["by"], actor)):
            if found is None:
                raise CommandError(f"No user named {name!r}.")
        try:
            membership = membership_set_role(actor=actor, user=user, role=options["role"])
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"{user.get_username()}: {membership.role}")
