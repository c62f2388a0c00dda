"""The sidecar's client of the control plane's approvals API: the only HTTP in the hold.

``POST /api/v1/sidecar/approvals`` asks "may this identity run this statement
now?" and either consumes one use of a grant (``approved``) or opens (or finds)
a pending request; ``GET /api/v1/sidecar/approvals/<id>?wait=N`` long-polls its
state. The session (``sidecar.proxy.session``) drives the hold through the
``ApprovalGate`` seam; anything that goes wrong here is ``ApprovalUnavailable``
and the held statement is refused (fail closed).

What is sent is the engine's redacted statement and facts, never the text the
client typed: literals stay in the sidecar.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from sidecar.http import ControlPlane, HttpError

log = logging.getLogger("warden.sidecar.approvals")

APPROVALS_PATH = "/api/v1/sidecar/approvals"
MAX_WAIT = 60  # the API's upper bound for ``wait``
STATES = frozenset({"pending", "approved", "denied", "expired", "cancelled"})


class ApprovalUnavailable(Exception):
    """The control plane could not be asked, or answered something unusable."""


@dataclass(frozen=True, slots=True)
class ApprovalState:
    id: str
    state: str  # pending | approved | denied | expired | cancelled
    url: str
    reason: str = ""
    decided_by: str = ""
    identity: str = ""  # whose request it is (the state's answer names it; "": not said)

    @classmethod
    def from_json(cls, data: Any) -> ApprovalState:
        if not isinstance(data, dict):
            raise ApprovalUnavailable("the approvals API answered something that is not an object")
        state = data.get("state")
        ident = data.get("id")
        if state not in STATES or not isinstance(ident, str) or not ident:
            raise ApprovalUnavailable(f"the approvals API answered an unknown state {state!r}")
        reviewer = data.get("denied_by") or data.get("decided_by") or ""
        return cls(
            id=ident,
            state=str(state),
            url=str(data.get("url") or ""),
            reason=str(data.get("reason") or ""),
            decided_by=str(reviewer),
            identity=str(data.get("identity") or ""),
        )


class ApprovalGate(Protocol):
    """What the session calls while it holds a statement."""

    async def open(self, request: Mapping[str, Any]) -> ApprovalState:
        """Open (or find, or consume a grant for) a request; raises ``ApprovalUnavailable``."""
        ...

    async def wait(self, request_id: str, seconds: int) -> ApprovalState:
        """The request's state, answered early when it leaves ``pending``."""
        ...


class HttpApprovalGate:
    """``ApprovalGate`` over the control plane's sidecar API, with the sidecar's token."""

    def __init__(
        self,
        *,
        url: str,
        token: str | None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.control_plane = ControlPlane(url, token, ssl_context=ssl_context)
        self.timeout = timeout

    async def _call(self, method: str, path: str, body: bytes | None, timeout: float) -> Any:
        try:
            response = await self.control_plane.call(
                method, path, body=body, headers=_HEADERS, timeout=timeout
            )
        except HttpError as exc:
            raise ApprovalUnavailable(f"control plane unreachable: {exc}") from exc
        if response.status not in (200, 201):
            raise ApprovalUnavailable(f"the approvals API answered HTTP {response.status}")
        try:
            return response.json()
        except ValueError as exc:
            raise ApprovalUnavailable("the approvals API answered non-JSON") from exc

    async def open(self, request: Mapping[str, Any]) -> ApprovalState:
        body = json.dumps(request, separators=(",", ":"), default=_thawed).encode()
        return ApprovalState.from_json(await self._call("POST", "", body, self.timeout))

    async def wait(self, request_id: str, seconds: int) -> ApprovalState:
        seconds = max(0, min(int(seconds), MAX_WAIT))
        path = f"/{quote(request_id, safe='')}?wait={seconds}"
        return ApprovalState.from_json(await self._call("GET", path, None, self.timeout + seconds))


_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}


def _thawed(value: object) -> object:
    """JSON for the read-only mappings a shared verdict holds (``policy.frozen``)."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
