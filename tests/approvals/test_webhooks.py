"""Approval webhooks are no way into the network around Warden (SSRF).

A webhook URL is set by whoever edits review settings (or the operator's
``WARDEN_APPROVAL_WEBHOOK_URL``). Deliveries go to a real local receiver: to
127.0.0.1 only once ``WARDEN_WEBHOOK_ALLOWED_NETWORKS`` allows it, never through a
redirect, and to the address that was checked (one DNS answer, not a second one).
Literal internal addresses are refused when the URL is saved.
"""

from __future__ import annotations

import datetime
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from approvals import services
from approvals.models import ApprovalEvent, ReviewSettings
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.governance.test_api_access import Api

pytestmark = pytest.mark.django_db

LOCMEM = "django.core.mail.backends.locmem.EmailBackend"
INTERNAL = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://10.0.0.1/",
    "http://127.0.0.1:9000/hook",
    "http://localhost:8080/hook",
    "http://[::ffff:127.0.0.1]/",
    "http://0.0.0.0/",
    "http://192.168.1.10/",
    "http://[fd00::1]/",
    "http://2130706433/",
]


def webhook_sent(request: Any) -> bool:
    return ApprovalEvent.objects.filter(
        request=request, kind="notified", key__startswith="created:webhook"
    ).exists()


@pytest.fixture
def notify(settings: Any, open_request: Any) -> Any:
    """Open a request (the same pending one each time) and send its "created" notice."""
    settings.EMAIL_BACKEND = LOCMEM

    def run() -> tuple[int, Any]:
        request = open_request()
        return services.approval_notify(request_id=request.pk, kind="created"), request

    return run


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """DNS for *.test names: ``answers[name]`` is what each lookup returns next (the last
    one repeats); ``lookups[name]`` what was answered. Everything else is real DNS."""
    real = socket.getaddrinfo
    state: dict[str, Any] = {"answers": {}, "lookups": {}}

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".test"):
            queue = state["answers"][host]
            ip = queue.pop(0) if len(queue) > 1 else queue[0]
            state["lookups"].setdefault(host, []).append(ip)
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            sockaddr = (ip, int(port), 0, 0) if family == socket.AF_INET6 else (ip, int(port))
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return state


def test_a_hook_to_loopback_is_refused_by_default_and_delivered_once_allowed(
    notify, settings, caplog
):
    with WebhookReceiver() as hook:
        # Slack-like: the path is the secret, so the log names the origin only.
        settings.WARDEN_APPROVAL_WEBHOOK_URL = hook.url("/services/T0/B0/s3cret")
        with caplog.at_level(logging.ERROR, logger="approvals.services"):
            sent, request = notify()
        assert sent == 2  # the two reviewers' emails, not the webhook
        assert hook.requests == []
        assert not webhook_sent(request)
        assert "not sent" in caplog.text and "127.0.0.1 is a loopback address" in caplog.text
        assert "s3cret" not in caplog.text
        settings.WARDEN_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
        sent, request = notify()
    assert sent == 1
    [received] = hook.requests
    assert (received.method, received.path) == ("POST", "/services/T0/B0/s3cret")
    assert f"/approvals/{request.pk}/" in received.body["text"]
    assert webhook_sent(request)


def test_a_redirect_is_not_followed(notify, settings, caplog):
    settings.WARDEN_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with WebhookReceiver(answer=(302, {"Location": "/elsewhere"})) as hook:
        settings.WARDEN_APPROVAL_WEBHOOK_URL = hook.url("/hook")
        with caplog.at_level(logging.ERROR, logger="approvals.services"):
            sent, request = notify()
    assert sent == 2
    assert [(r.method, r.path) for r in hook.requests] == [("POST", "/hook")]
    assert not webhook_sent(request)
    assert "redirects are not followed" in caplog.text


@pytest.mark.parametrize("address", ["169.254.169.254", "::1", "10.0.0.1", "fd00::1"])
def test_a_name_that_resolves_inside_is_refused_when_sent(
    notify, settings, resolver, caplog, address
):
    resolver["answers"]["hook.test"] = [address]
    settings.WARDEN_APPROVAL_WEBHOOK_URL = "http://hook.test/hook"
    with caplog.at_level(logging.ERROR, logger="approvals.services"):
        sent, request = notify()
    assert sent == 2 and not webhook_sent(request)
    assert f"hook.test refused: {address} is" in caplog.text


def test_the_connection_goes_to_the_address_that_was_checked(notify, settings, resolver):
    # A rebinding name: the first answer is an allowed address, any later one is not.
    # Only the first may be used, with the name in the Host header.
    settings.WARDEN_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    resolver["answers"]["hook.test"] = ["127.0.0.1", "127.0.0.2"]
    with WebhookReceiver() as hook:
        settings.WARDEN_APPROVAL_WEBHOOK_URL = hook.url("/hook", host="hook.test")
        sent, request = notify()
    assert sent == 3 and webhook_sent(request)
    assert resolver["lookups"]["hook.test"] == ["127.0.0.1"]
    assert hook.requests[0].headers["Host"] == f"hook.test:{hook.port}"


def _self_signed(tmp_path: Path, name: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp_path / "hook.pem", tmp_path / "hook.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(certfile), str(keyfile)


def test_https_to_the_checked_address_still_verifies_the_name(
    notify, settings, resolver, monkeypatch, tmp_path
):
    certfile, keyfile = _self_signed(tmp_path, "hook.test")
    monkeypatch.setenv("SSL_CERT_FILE", certfile)  # how an internal CA is trusted
    settings.WARDEN_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    resolver["answers"]["hook.test"] = ["127.0.0.1"]
    with WebhookReceiver(tls=(certfile, keyfile)) as hook:
        settings.WARDEN_APPROVAL_WEBHOOK_URL = hook.url("/hook", host="hook.test")
        sent, request = notify()
    assert sent == 3 and webhook_sent(request)
    assert hook.sni == ["hook.test"]
    assert hook.requests[0].headers["Host"] == f"hook.test:{hook.port}"


@pytest.mark.parametrize("url", INTERNAL)
def test_internal_addresses_are_refused_when_saved(review_setup, admin_user, url):
    with pytest.raises(ValidationError) as caught:
        services.review_settings_set(
            actor=admin_user, datasource=review_setup.datasource, data={"webhook_url": url}
        )
    messages = caught.value.message_dict["webhook_url"]
    assert any(m.startswith("Webhooks may not go to internal addresses") for m in messages)
    assert not ReviewSettings.objects.exists()


def test_the_api_says_why_a_webhook_url_is_refused(review_setup, security_user):
    url = "/api/v1/review-settings/crm-prod/"
    for bad in ("http://169.254.169.254/", "http://[::1]/", "http://10.0.0.1/"):
        answer = Api(security_user).call("PATCH", url, {"webhook_url": bad})
        assert answer.status_code == 400, answer.content
        [message] = answer.json()["error"]["fields"]["webhook_url"]
        assert "internal addresses" in message and "WARDEN_WEBHOOK_ALLOWED_NETWORKS" in message
    assert not ReviewSettings.objects.exists()


def test_allowed_networks_admit_on_premise_receivers_but_never_metadata(
    review_setup, admin_user, settings
):
    settings.WARDEN_WEBHOOK_ALLOWED_NETWORKS = ["10.0.0.0/8", "169.254.0.0/16"]
    saved = services.review_settings_set(
        actor=admin_user,
        datasource=review_setup.datasource,
        data={"webhook_url": "http://10.0.0.1/hook"},
    )
    assert saved.webhook_url == "http://10.0.0.1/hook"
    with pytest.raises(ValidationError, match="metadata"):
        services.review_settings_set(
            actor=admin_user,
            datasource=review_setup.datasource,
            data={"webhook_url": "http://169.254.169.254/"},
        )
    # A host name is not resolved when saved; it is checked when a notice is sent.
    services.review_settings_set(
        actor=admin_user,
        datasource=review_setup.datasource,
        data={"webhook_url": "https://hooks.slack.com/services/T0/B0/x"},
    )
