"""Live approval pages: the pending badge, the inbox and "My requests" follow within a second.

The pages poll once a second (htmx ``every 1s``) and most polls find nothing
new, so a poll that finds nothing must cost next to nothing. Every change to
an approval request (opened, decided, cancelled, expired, escalated) bumps
one counter in Redis once its transaction commits (``approvals_changed``, on
``post_save``, so no service has to remember it). A page carries the counter's
value it was drawn at (``v``) and when (``at``); a poll whose ``v`` is still
current answers 204 No Content, which htmx leaves alone, after one Redis GET
and no query of approvals and no template. Only a change makes every open
page draw once (its badge, its new cards, its rows) with the user's own
scope.

What the counter does not see (a reviewer moved to another team, an account
linked to an identity) reaches the page within ``REFRESH_SECONDS``: a poll
older than that draws anyway. Without Redis every poll draws, as before.

Why polling and not server-sent events: the control plane's Django stack has
sync-only middleware, so under ASGI each open event stream would hold a
thread (and maybe a database connection) for as long as a reviewer keeps a
tab open, the problem ``gateway.asgi`` works around for sidecars' long-polls.
A conditional one-second poll needs no new endpoint kind, no vendored
extension and no long-lived connection, and it stays correct across several
web processes (the counter is shared).
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.http import QueryDict
from django.utils import timezone

from approvals import selectors
from approvals.models import ApprovalRequest
from governance.bundles import redis_client

logger = logging.getLogger(__name__)

VERSION_KEY = "warden:approvals:version"

POLL_SECONDS = 1
# What the counter misses (teams, links, roles) shows up after at most this long.
REFRESH_SECONDS = 30
# A request's created_at is taken before its transaction commits: new cards are
# looked for this far back, minus those the page already shows (``seen``).
NEW_CARD_SLACK = datetime.timedelta(seconds=10)
MAX_SEEN = 200
# The inbox filters a new card must match, as the page's query string names them.
FILTER_NAMES = ("q", "state", "datasource", "environment", "identity_kind")


def _key() -> str:
    # Tests give each test its own counter; everything else shares this one.
    return str(getattr(settings, "WARDEN_APPROVALS_VERSION_KEY", VERSION_KEY))


def approvals_changed() -> None:
    try:
        redis_client().incr(_key())
    except Exception as exc:  # Redis down: pages fall back to drawing on every poll
        logger.warning("could not bump the approvals version: %s", exc)


@receiver(post_save, sender=ApprovalRequest, dispatch_uid="approvals_live_saved")
@receiver(post_delete, sender=ApprovalRequest, dispatch_uid="approvals_live_deleted")
def _request_changed(sender: Any, **kwargs: Any) -> None:
    transaction.on_commit(approvals_changed)


def approvals_version() -> str | None:
    """The counter's current value ("0" before the first change), None without Redis."""
    try:
        value = redis_client().get(_key())
    except Exception as exc:
        logger.warning("could not read the approvals version: %s", exc)
        return None
    if not value:
        return "0"
    return value.decode() if isinstance(value, bytes) else str(value)


def poll_query(version: str | None) -> str:
    """The query string a page polls with: the version it was drawn at, and when."""
    return f"v={version or ''}&at={int(time.time())}"


def unchanged(params: QueryDict, version: str | None) -> bool:
    """True when a poll drawn at ``params`` would draw the same again (answer 204).

    ``version`` is read before anything the answer would draw, so a change that
    commits meanwhile makes the next poll draw again rather than go unseen.
    """
    if version is None or params.get("v") != version:
        return False
    try:
        drawn_at = int(params.get("at", ""))
    except ValueError:
        return False
    return 0 <= time.time() - drawn_at < REFRESH_SECONDS


# --- new cards for an open inbox ---------------------------------------------------------


@dataclass
class InboxCursor:
    """What an open inbox (its first page) already shows: the cards since ``since``
    (minus the slack) it holds, and the filters it was drawn with."""

    since: datetime.datetime
    seen: list[str] = field(default_factory=list)
    filters: list[tuple[str, str]] = field(default_factory=list)
    next: str = ""

    def since_text(self) -> str:
        return self.since.isoformat()

    def seen_text(self) -> str:
        return ",".join(self.seen)


def inbox_cursor(
    *, shown: list[ApprovalRequest], since: datetime.datetime, params: QueryDict, next: str
) -> InboxCursor:
    window = since - NEW_CARD_SLACK
    return InboxCursor(
        since=since,
        seen=[str(r.pk) for r in shown if r.created_at > window][:MAX_SEEN],
        filters=[(name, params.get(name, "")) for name in FILTER_NAMES if params.get(name)],
        next=next,
    )


def cursor_from(params: QueryDict) -> InboxCursor | None:
    """The cursor a poll carries (the inbox's hidden inputs), or None (another page)."""
    raw = params.get("since")
    if not raw:
        return None
    try:
        since = datetime.datetime.fromisoformat(raw)
    except ValueError:
        return None
    if timezone.is_naive(since):
        return None
    seen = []
    for part in params.get("seen", "").split(",")[:MAX_SEEN]:
        try:
            seen.append(str(uuid.UUID(part)))
        except ValueError:
            continue
    filters = [(name, params.get(name, "")) for name in FILTER_NAMES if params.get(name)]
    return InboxCursor(since=since, seen=seen, filters=filters, next=params.get("next", ""))


def inbox_new_requests(
    *, user: Any, cursor: InboxCursor, selector_kwargs: dict[str, Any]
) -> tuple[list[ApprovalRequest], InboxCursor]:
    """Requests the inbox does not show yet (newest first), and the cursor after them.

    One query: the user's inbox (same filters) since the cursor minus the slack.
    """
    now = timezone.now()
    recent = list(
        selectors.approvals_inbox(user=user, **selector_kwargs)
        .filter(created_at__gt=cursor.since - NEW_CARD_SLACK)
        .prefetch_related("decisions__reviewer")[:MAX_SEEN]
    )
    seen = set(cursor.seen)
    new = [r for r in recent if str(r.pk) not in seen]
    after = InboxCursor(
        since=now,
        seen=[str(r.pk) for r in recent if r.created_at > now - NEW_CARD_SLACK],
        filters=cursor.filters,
        next=cursor.next,
    )
    return new, after
