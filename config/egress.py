"""Requests the control plane sends to URLs someone configured (approval webhooks).

Whoever may set such a URL must not be able to make Warden reach what only Warden
can reach: its own loopback, the private network around it, a cloud metadata
endpoint. So a destination's host is resolved once, every address it resolves to
is checked, and the connection goes to a checked address (the URL's host name is
sent as ``Host`` and, for https, as SNI and the name the certificate must match),
so a second DNS answer cannot swap the address after the check (DNS rebinding).
Redirects are never followed: a 3xx could point anywhere.

Loopback, link-local, private (RFC 1918, ULA), unspecified, multicast, reserved
and other non-global addresses are refused unless an allowed network
(``WARDEN_WEBHOOK_ALLOWED_NETWORKS``) contains them, for on-premise receivers.
Cloud metadata addresses are refused even then: no receiver lives there.
Proxies (``HTTP(S)_PROXY``) are not used; trusted CAs are the system's
(``SSL_CERT_FILE`` adds an internal one).

Django-free: settings.py uses it to check ``WARDEN_APPROVAL_WEBHOOK_URL`` at start-up.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import socket
import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# AWS/GCP/Azure/OpenStack (IPv4 and AWS's IPv6), AWS ECS task metadata, Alibaba Cloud.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What inet_aton also reads as an IPv4 address: "127.1", "0x7f000001", "2130706433".
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")
_MAX_ANSWER = 64 * 1024


class EgressRefused(Exception):
    """The destination, or its answer, is refused by policy: retrying will not help."""


def parse_networks(values: Iterable[Any]) -> list[Network]:
    """CIDRs (or bare addresses) as networks; a ValueError names the bad one."""
    networks = []
    for value in values:
        if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            networks.append(value)
            continue
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a network such as 10.0.0.0/8: {exc}") from exc
    return networks


def _effective(ip: Address) -> Address:
    """The IPv4 address an IPv6 one stands for, where it does (mapped, NAT64, 6to4)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def _kind(ip: Address) -> str | None:
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a public address"
    return None


def address_refusal(ip: Address, allowed: Iterable[Any] = ()) -> str | None:
    """Why requests may not go to ``ip`` (e.g. "127.0.0.1 is a loopback address"), or None."""
    ip = ipaddress.ip_address(str(ip).split("%", 1)[0])  # an IPv6 zone changes nothing
    effective = _effective(ip)
    if ip in METADATA_ADDRESSES or effective in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    kind = _kind(effective)
    if kind is None:
        return None
    if any(
        effective.version == net.version and effective in net for net in parse_networks(allowed)
    ):
        return None
    return f"{ip}{f' ({effective})' if effective != ip else ''} is {kind}"


def _literal_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def url_refusal(url: str, allowed: Iterable[Any] = ()) -> str | None:
    """Why ``url`` may not be a destination, judged without DNS: its scheme, a localhost
    name, or a literal address that ``address_refusal`` refuses. Host names are checked
    when a request is sent (``post_json``)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"it is not a valid URL ({exc})"
    if parts.scheme not in {"http", "https"}:
        return "only http and https are allowed"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "it has no host"
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is this machine"
    ip = _literal_address(host)
    return address_refusal(ip, allowed) if ip is not None else None


def resolve(host: str, port: int, allowed: Iterable[Any] = ()) -> list[Address]:
    """Every address ``host`` resolves to, once; EgressRefused if any of them is refused
    (a name that also points inside is not a receiver to trust with the others)."""
    ip = _literal_address(host)
    if ip is not None:
        addresses = [ip]
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        addresses = []
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
    for address in addresses:
        refusal = address_refusal(address, allowed)
        if refusal is not None:
            raise EgressRefused(f"{host} refused: {refusal}")
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    return addresses


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address already checked; the URL's host name is the SNI and the name
    the certificate is verified against."""

    def __init__(self, address: str, port: int, *, server_hostname: str, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout, context=ssl.create_default_context())
        self._server_hostname = server_hostname

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_hostname)


def post_json(url: str, payload: Any, *, timeout: float, allowed: Iterable[Any] = ()) -> int:
    """POST ``payload`` as JSON to ``url``; returns the 2xx status.

    EgressRefused: the URL or an address it resolves to is refused, or the receiver
    answered with a redirect (not followed). OSError: it could not be reached, or
    answered with another non-2xx status (worth retrying).
    """
    allowed = parse_networks(allowed)
    refusal = url_refusal(url, allowed)
    if refusal is not None and refusal.startswith("it is not a valid URL"):
        raise EgressRefused(f"the URL is refused: {refusal}")
    parts = urlsplit(url)
    # Messages name the origin only: a webhook's path is often its secret (Slack's is).
    origin = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
    if refusal is not None:
        raise EgressRefused(f"{origin} refused: {refusal}")
    host = (parts.hostname or "").rstrip(".")
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    addresses = resolve(host, port, allowed)
    name = f"[{host}]" if ":" in host else host
    headers = {
        "Host": name if port == (443 if https else 80) else f"{name}:{port}",
        "Content-Type": "application/json",
        "User-Agent": "Warden",
    }
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection | None = None
    failure: OSError | None = None
    for address in addresses:
        candidate = (
            _PinnedHTTPSConnection(str(address), port, server_hostname=host, timeout=timeout)
            if https
            else http.client.HTTPConnection(str(address), port, timeout=timeout)
        )
        try:
            candidate.connect()
        except OSError as exc:  # the next address, as a browser would; nothing was sent yet
            failure = exc
            candidate.close()
            continue
        conn = candidate
        break
    if conn is None:
        raise failure or OSError(f"{host}: no address could be reached")
    try:
        conn.request("POST", target, body=json.dumps(payload).encode(), headers=headers)
        response = conn.getresponse()
        response.read(_MAX_ANSWER)
        status = response.status
        location = response.getheader("Location", "")
    finally:
        conn.close()
    if 300 <= status < 400:
        to = urlsplit(location).netloc.rsplit("@", 1)[-1] or "the same host"
        raise EgressRefused(
            f"{origin} answered {status} (a redirect to {to[:100]}); redirects are not followed"
        )
    if not 200 <= status < 300:
        raise OSError(f"{origin} answered {status}")
    return status
