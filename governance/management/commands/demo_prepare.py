"""``manage.py demo_prepare --control-plane URL``: what ``make run`` does before it starts anything.

``migrate``, ``seed_demo`` and ``demo_sidecar`` (same options) in one process:
each run as its own ``manage.py`` would load Django and run the system checks
again, seconds per step on every ``make run``. Idempotent, as each of them is.
"""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand

from governance.management.commands import demo_sidecar


class Command(BaseCommand):
    help = "Migrate, seed the demo and prepare the demo sidecar (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        demo_sidecar.Command().add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        call_command("seed_demo")
        call_command(
            "demo_sidecar",
            control_plane=options["control_plane"],
            listen_port=options["listen_port"],
            mcp_port=options["mcp_port"],
        )
