"""A tiny OpenID Connect identity provider, run as a real local process for SSO tests.

The identity provider is outside Warden's control, so this is the one fake the
tests use. It speaks enough OIDC for django-allauth's ``openid_connect``
provider: discovery, authorize (auto-approves, honours state/nonce/PKCE),
token (checks the client secret and the PKCE verifier, returns an RS256
id_token signed with PyJWT), jwks and userinfo.

    python -m tests.fakes.oidc_idp --client-id ID --client-secret S --claims FILE

prints ``PORT <n>`` once listening. The claims of the signing-in user are
read from FILE (JSON) at each authorization, so a test can change a user's
groups between two sign-ins.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class IdP:
    def __init__(self, client_id: str, client_secret: str, claims_file: Path) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.claims_file = claims_file
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)
        self.codes: dict[str, dict] = {}
        self.access_tokens: dict[str, dict] = {}
        self.issuer = ""

    def jwks(self) -> dict:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}


def make_handler(idp: IdP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write("idp: " + format % args + "\n")

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/.well-known/openid-configuration":
                base = idp.issuer
                self._json(
                    200,
                    {
                        "issuer": base,
                        "authorization_endpoint": f"{base}/authorize",
                        "token_endpoint": f"{base}/token",
                        "userinfo_endpoint": f"{base}/userinfo",
                        "jwks_uri": f"{base}/jwks",
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                        "token_endpoint_auth_methods_supported": ["client_secret_post"],
                        "code_challenge_methods_supported": ["S256"],
                    },
                )
            elif url.path == "/jwks":
                self._json(200, idp.jwks())
            elif url.path == "/authorize":
                if query.get("client_id") != idp.client_id or "redirect_uri" not in query:
                    self._json(400, {"error": "invalid_request"})
                    return
                code = secrets.token_urlsafe(16)
                idp.codes[code] = {
                    "nonce": query.get("nonce"),
                    "redirect_uri": query["redirect_uri"],
                    "challenge": query.get("code_challenge"),
                    "claims": json.loads(idp.claims_file.read_text()),
                }
                params = {"code": code}
                if "state" in query:
                    params["state"] = query["state"]
                self.send_response(302)
                self.send_header("Location", f"{query['redirect_uri']}?{urlencode(params)}")
                self.end_headers()
            elif url.path == "/userinfo":
                auth = self.headers.get("Authorization", "")
                grant = idp.access_tokens.get(auth.removeprefix("Bearer "))
                if grant is None:
                    self._json(401, {"error": "invalid_token"})
                else:
                    self._json(200, grant["claims"])
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/token":
                self._json(404, {"error": "not_found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if (
                form.get("client_id") != idp.client_id
                or form.get("client_secret") != idp.client_secret
            ):
                self._json(401, {"error": "invalid_client"})
                return
            grant = idp.codes.pop(form.get("code", ""), None)
            if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
                self._json(400, {"error": "invalid_grant"})
                return
            if grant["challenge"]:
                digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                if expected != grant["challenge"]:
                    self._json(400, {"error": "invalid_grant", "error_description": "PKCE"})
                    return
            now = int(time.time())
            claims = {
                **grant["claims"],
                "iss": idp.issuer,
                "aud": idp.client_id,
                "iat": now,
                "exp": now + 300,
            }
            if grant["nonce"]:
                claims["nonce"] = grant["nonce"]
            id_token = jwt.encode(claims, idp.key, algorithm="RS256", headers={"kid": idp.kid})
            access = secrets.token_urlsafe(24)
            idp.access_tokens[access] = grant
            self._json(
                200,
                {
                    "access_token": access,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": id_token,
                },
            )

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--claims", required=True, type=Path)
    args = parser.parse_args()
    idp = IdP(args.client_id, args.client_secret, args.claims)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(idp))
    port = server.server_address[1]
    idp.issuer = f"http://127.0.0.1:{port}"
    print(f"PORT {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
