"""Registering a sidecar ends with a config file and a command that the sidecar's
own loader accepts, with the token read from a file, never written in the config."""

from __future__ import annotations

import html
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from governance.models import Sidecar
from governance.sidecar_setup import install_commands, sidecar_paths
from governance.signing import published_public_keys
from sidecar.config import load_config

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]

DSN = "postgresql://warden_guard@db.example.org:5433/crm"


def _textarea(page: str, element_id: str) -> str:
    match = re.search(rf'<textarea id="{element_id}"[^>]*>(.*?)</textarea>', page, re.S)
    assert match, element_id
    return html.unescape(match.group(1))


def _register(client: Client, datasource: Any, name: str, dsn: str = "") -> Any:
    data = {"datasource": datasource.pk, "name": name, "upstream_dsn": dsn}
    return client.post(reverse("governance:sidecar_list"), data)


def _started(page: str, tmp_path: Path) -> tuple[Any, str]:
    """Do what the page says without systemd (files in tmp_path for /etc/warden/sidecar)
    and load the config as ``warden-sidecar run`` would: (the config, the raw token)."""
    raw = html.unescape(re.search(r'id="raw-token" type="text" value="([^"]+)"', page).group(1))
    config_text = _textarea(page, "sidecar-config")
    command = shlex.split(_textarea(page, "sidecar-command").replace("\\\n", " "))
    env = dict(word.split("=", 1) for word in command if "=" in word and word[0].isupper())
    assert command[-4:-1] == ["warden-sidecar", "run", "--config"]
    assert set(env) == {"WARDEN_SIDECAR_TOKEN_FILE", "WARDEN_SIDECAR_UPSTREAM_PASSWORD_FILE"}
    assert raw not in config_text  # the token is only in its own file
    moved = {path: str(tmp_path / Path(path).name) for path in [*env.values(), command[-1]]}
    Path(moved[env["WARDEN_SIDECAR_TOKEN_FILE"]]).write_text(raw + "\n")
    Path(moved[env["WARDEN_SIDECAR_UPSTREAM_PASSWORD_FILE"]]).write_text("s3cret\n")
    Path(moved[command[-1]]).write_text(config_text)
    config = load_config(moved[command[-1]], env={k: moved[v] for k, v in env.items()})
    return config, raw


def test_registering_shows_a_config_the_sidecar_loads(
    security_user: Any, demo_policy: Any, tmp_path: Path
) -> None:
    client = Client()
    client.force_login(security_user)
    response = _register(client, demo_policy.datasource, "crm-prod-7", DSN)
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    page = response.content.decode()
    config, raw = _started(page, tmp_path)
    assert config.token == raw and config.upstream_password == "s3cret"
    assert config.datasource == "crm-prod" and config.sidecar_id == "crm-prod-7"
    assert config.upstream_dsn == DSN
    assert config.control_plane_url == settings.WARDEN_BASE_URL
    assert config.bundle_public_keys == ",".join(
        f"{kid}:{key}" for kid, key in published_public_keys().items()
    )
    assert config.state_dir.endswith("/crm-prod-7")
    assert _textarea(page, "sidecar-start") == "systemctl enable --now warden-sidecar@crm-prod-7"
    assert _textarea(page, "sidecar-install") == install_commands("crm-prod-7")
    assert config.state_dir == sidecar_paths("crm-prod-7").state_dir

    # Without the database's address the config still loads, with an example to edit.
    page = _register(client, demo_policy.datasource, "crm-prod-8").content.decode()
    config, _ = _started(page, tmp_path)
    assert config.upstream_dsn.startswith("postgresql://") and "Change <code>upstream_dsn" in page


def test_the_address_is_checked_and_never_takes_a_password(
    security_user: Any, reviewer_user: Any, demo_policy: Any
) -> None:
    client = Client()
    client.force_login(security_user)
    for dsn in [
        "postgresql://guard:pw@db/crm",
        "postgresql://guard@db/crm?sslmode=require&password=pw",
        "postgresql://guard@db/crm?sslpassword=pw",
        "postgresql://guard@db/crm?%70assfile=pgpass",  # percent-encoded, as libpq reads
        "mysql://db/crm",
        "postgresql://db:port/x",
    ]:
        response = _register(client, demo_policy.datasource, "refused-1", dsn)
        assert response.status_code == 400, dsn
        assert response.context["form"].errors["upstream_dsn"], dsn
    assert not Sidecar.objects.filter(name="refused-1").exists()
    client.force_login(reviewer_user)  # reads the list, registers nothing
    assert _register(client, demo_policy.datasource, "refused-2", DSN).status_code == 403
    assert not Sidecar.objects.filter(name="refused-2").exists()


@pytest.mark.django_db
def test_no_credential_or_its_digest_reaches_the_configuration_history(
    admin_user: Any, demo_policy: Any
) -> None:
    from audit.models import ChangeRecord
    from governance import services

    sidecar, _ = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-history"
    )
    services.sidecar_rotate_token(actor=admin_user, sidecar=sidecar)
    identity = demo_policy.datasource.connect_teams.first().identities.first()
    services.token_issue(actor=admin_user, identity=identity, name="laptop")
    records = ChangeRecord.objects.filter(content_type__model__in=["sidecar", "accesstoken"])
    assert records.count() >= 3
    for record in records:
        for side in (record.before or {}, record.after or {}):
            assert not {"token_digest", "digest", "scram_verifier"} & set(side), record
