"""Tradeplane settings, read from the environment.

Defaults give the embedded mode (SQLite under var/, no Redis, keys generated into var/).
With TRADEPLANE_ENV=production every secret must come from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from controlplane.config import (
    EmbeddedSecrets,
    b64decode,
    env_bool,
    env_choice,
    env_int,
    env_str,
    parse_base_url,
    parse_keyring,
)

# Lets typed generics such as ModelAdmin[Platform] work at run time too.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("TRADEPLANE_VAR_DIR") or BASE_DIR / "var")

TRADEPLANE_ENV = env_choice("TRADEPLANE_ENV", "development", ("development", "production"))
PRODUCTION = TRADEPLANE_ENV == "production"
DEBUG = env_bool("TRADEPLANE_DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("TRADEPLANE_DEBUG must be off when TRADEPLANE_ENV=production")

# ---- Secrets and keys --------------------------------------------------------------------
# In production each comes from the environment (or NAME_FILE); elsewhere a missing one is
# taken from var/secrets.json, generated on first start.
_embedded: dict[str, str] = {}


def _secret(name: str) -> str:
    value = env_str(name)
    if value:
        return value
    if PRODUCTION:
        raise ImproperlyConfigured(f"{name} must be set when TRADEPLANE_ENV=production")
    if not _embedded:
        _embedded.update(EmbeddedSecrets(VAR_DIR / "secrets.json").load())
    return _embedded[name]


SECRET_KEY = _secret("SECRET_KEY")
if len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters")

# Ed25519 private keys (32-byte seeds) for access tokens; the first signs, all verify.
TRADEPLANE_JWT_KEYS = parse_keyring(
    "TRADEPLANE_JWT_KEYS", _secret("TRADEPLANE_JWT_KEYS"), key_length=32
)
# AES-256-GCM keys for broker credentials; the first encrypts, all decrypt.
TRADEPLANE_ENCRYPTION_KEYS = parse_keyring(
    "TRADEPLANE_ENCRYPTION_KEYS", _secret("TRADEPLANE_ENCRYPTION_KEYS"), key_length=32
)
try:
    TRADEPLANE_HASH_KEY = b64decode(_secret("TRADEPLANE_HASH_KEY"))
except ValueError:
    raise ImproperlyConfigured("TRADEPLANE_HASH_KEY must be base64url") from None
if len(TRADEPLANE_HASH_KEY) < 32:
    raise ImproperlyConfigured("TRADEPLANE_HASH_KEY must decode to at least 32 bytes")

# ---- Public URL and tokens ---------------------------------------------------------------
TRADEPLANE_PUBLIC_URL = parse_base_url(
    "TRADEPLANE_PUBLIC_URL",
    env_str("TRADEPLANE_PUBLIC_URL") or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}",
    require_https=PRODUCTION,
)
# The canonical resource URL (no trailing slash) is the JWT audience; the base URL its issuer.
TRADEPLANE_MCP_URL = f"{TRADEPLANE_PUBLIC_URL}/mcp"
TRADEPLANE_TOKEN_TTL_SECONDS = env_int(
    "TRADEPLANE_TOKEN_TTL_SECONDS", 3600, minimum=60, maximum=86400
)
TRADEPLANE_TOKEN_LEEWAY_SECONDS = 60
# Failed credential checks per client id before 429, and the window they are counted in.
TRADEPLANE_AUTH_FAILURE_LIMIT = env_int(
    "TRADEPLANE_AUTH_FAILURE_LIMIT", 10, minimum=1, maximum=10_000
)
TRADEPLANE_AUTH_FAILURE_WINDOW_SECONDS = env_int(
    "TRADEPLANE_AUTH_FAILURE_WINDOW_SECONDS", 300, minimum=1, maximum=86400
)

# ---- Django ------------------------------------------------------------------------------
_public_host = urlsplit(TRADEPLANE_PUBLIC_URL).hostname or "127.0.0.1"
ALLOWED_HOSTS = [
    host.strip()
    for host in (
        env_str("TRADEPLANE_ALLOWED_HOSTS") or f"{_public_host},127.0.0.1,localhost"
    ).split(",")
    if host.strip()
]
CSRF_TRUSTED_ORIGINS = [TRADEPLANE_PUBLIC_URL]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "controlplane",
    "audit",
    "brokers",
    "brokers.paper",
    "mcp_bridge",
]

MIDDLEWARE = [
    "controlplane.requestid.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
ASGI_APPLICATION = "controlplane.asgi.application"

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
                "controlplane.context_processors.deployment",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'tradeplane.sqlite3'}"
try:
    _database: dict[str, Any] = dict(dj_database_url.parse(DATABASE_URL, conn_max_age=0))
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a supported database URL: {exc}") from exc
if _database["ENGINE"] == "django.db.backends.sqlite3":
    Path(_database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # IMMEDIATE takes SQLite's write lock when a transaction begins, so concurrent writers
    # queue instead of failing halfway (the audit chain depends on it).
    _database["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif _database["ENGINE"] == "django.db.backends.postgresql":
    _database.setdefault("OPTIONS", {})
    _database["OPTIONS"].setdefault("connect_timeout", 5)
    # Under ASGI every request runs in a thread of its own, so persistent connections never
    # get reused; a pool does (and saves a connection set-up per request).
    if env_bool("TRADEPLANE_DB_POOL", True):
        _database["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": env_int("TRADEPLANE_DB_POOL_SIZE", 20, minimum=2, maximum=500),
            "timeout": 10,
        }
    _database["TEST"] = {"NAME": f"test_{_database['NAME']}"}
else:
    raise ImproperlyConfigured("DATABASE_URL must be a postgres:// or sqlite:// URL")
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Unset = embedded mode: in-process rate limits and revocation checks in the database only.
REDIS_URL = env_str("REDIS_URL") or None
if REDIS_URL and urlsplit(REDIS_URL).scheme not in ("redis", "rediss", "unix"):
    raise ImproperlyConfigured("REDIS_URL must be a redis://, rediss:// or unix:// URL")
# Every Redis call on a request path is bounded by these (seconds).
TRADEPLANE_REDIS_TIMEOUT = 0.5

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serve admin assets straight from the app directories unless collectstatic was run.
WHITENOISE_USE_FINDERS = not PRODUCTION

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = TRADEPLANE_PUBLIC_URL.startswith("https://")
SESSION_COOKIE_HTTPONLY = True
if env_bool("TRADEPLANE_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Request bodies (REST and MCP) above this are refused.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int(
    "TRADEPLANE_MAX_BODY_BYTES", 256 * 1024, minimum=1024, maximum=16 * 1024 * 1024
)

# ---- MCP endpoint ------------------------------------------------------------------------
# Stateless: any process serves any request (no push elicitation for 2025-11-25 clients).
# Stateful: 2025-11-25 sessions live in one process (sticky sessions behind a balancer).
TRADEPLANE_MCP_STATELESS = env_bool("TRADEPLANE_MCP_STATELESS", False)
TRADEPLANE_MCP_JSON_RESPONSE = env_bool("TRADEPLANE_MCP_JSON_RESPONSE", False)
# Browsers may call /mcp only from these origins (DNS-rebinding defence); other Origins: 403.
TRADEPLANE_ALLOWED_ORIGINS = [
    origin.strip().rstrip("/")
    for origin in (
        env_str("TRADEPLANE_ALLOWED_ORIGINS")
        or f"{TRADEPLANE_PUBLIC_URL},http://127.0.0.1:*,http://localhost:*"
    ).split(",")
    if origin.strip()
]
TRADEPLANE_RATE_LIMIT_PER_MINUTE = env_int(
    "TRADEPLANE_RATE_LIMIT_PER_MINUTE", 60, minimum=1, maximum=100_000
)
TRADEPLANE_TRADE_RATE_LIMIT_PER_MINUTE = env_int(
    "TRADEPLANE_TRADE_RATE_LIMIT_PER_MINUTE", 30, minimum=1, maximum=100_000
)
# With Redis unreachable trade tools always fail closed; read tools follow this.
TRADEPLANE_READ_LIMIT_FAIL_CLOSED = env_bool("TRADEPLANE_READ_LIMIT_FAIL_CLOSED", True)

# ---- Trading -----------------------------------------------------------------------------
# How long a confirmation_id from create_order can be confirmed.
CONFIRMATION_TTL_SECONDS = env_int("CONFIRMATION_TTL_SECONDS", 120, minimum=10, maximum=3600)
# Brokers time previews out (E*TRADE's lifetime is undocumented): a trade older than this,
# such as one that waited for an operator, is previewed again just before it is placed.
BROKER_PREVIEW_MAX_AGE_SECONDS = env_int(
    "BROKER_PREVIEW_MAX_AGE_SECONDS", 120, minimum=10, maximum=86400
)

# ---- Paper broker ------------------------------------------------------------------------
PAPER_STARTING_CASH = env_str("PAPER_STARTING_CASH") or "100000"
PAPER_SECOND_ACCOUNT = env_bool("PAPER_SECOND_ACCOUNT", False)
# "always" keeps the simulated market open (the demo works at night); "regular" follows
# NYSE hours (9:30-16:00 US Eastern, Monday to Friday; 4:00-20:00 for extended hours).
PAPER_MARKET_HOURS = env_choice("PAPER_MARKET_HOURS", "always", ("always", "regular"))

# ---- E*TRADE -----------------------------------------------------------------------------
# The consumer pair from E*TRADE's developer portal. It lives only in the environment (or
# NAME_FILE), never in the database. Sandbox keys differ from production keys; with the
# sandbox pair unset, sandbox connections use the main pair.
ETRADE_CONSUMER_KEY = env_str("ETRADE_CONSUMER_KEY")
ETRADE_CONSUMER_SECRET = env_str("ETRADE_CONSUMER_SECRET")
ETRADE_SANDBOX_CONSUMER_KEY = env_str("ETRADE_SANDBOX_CONSUMER_KEY")
ETRADE_SANDBOX_CONSUMER_SECRET = env_str("ETRADE_SANDBOX_CONSUMER_SECRET")
# Empty: by the connection's environment, https://apisb.etrade.com for sandbox and
# https://api.etrade.com for production.
ETRADE_API_BASE_URL = (
    parse_base_url("ETRADE_API_BASE_URL", env_str("ETRADE_API_BASE_URL"), require_https=PRODUCTION)
    if env_str("ETRADE_API_BASE_URL")
    else ""
)
# Empty: {ETRADE_API_BASE_URL}/oauth when that is set, else https://api.etrade.com/oauth for
# both environments, as E*TRADE's own sample client does.
ETRADE_OAUTH_BASE_URL = (
    parse_base_url(
        "ETRADE_OAUTH_BASE_URL", env_str("ETRADE_OAUTH_BASE_URL"), require_https=PRODUCTION
    )
    if env_str("ETRADE_OAUTH_BASE_URL")
    else ""
)
ETRADE_AUTHORIZE_URL = parse_base_url(
    "ETRADE_AUTHORIZE_URL",
    env_str("ETRADE_AUTHORIZE_URL") or "https://us.etrade.com/e/t/etws/authorize",
    require_https=PRODUCTION,
)
# Both the connect and the read timeout of every call to E*TRADE.
ETRADE_TIMEOUT_SECONDS = env_int("ETRADE_TIMEOUT_SECONDS", 10, minimum=1, maximum=120)

# ---- Logging: JSON lines on stderr, secrets redacted -------------------------------------
LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "redact": {"()": "controlplane.logs.RedactSecretsFilter"},
        "request_id": {"()": "controlplane.logs.RequestIdFilter"},
    },
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "json",
            "filters": ["request_id", "redact"],
        },
    },
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "uvicorn.access": {"level": "WARNING"},
    },
}

# ---- Background work (Celery) ------------------------------------------------------------
# Production: Redis (CELERY_BROKER_URL may name a Redis of its own, so that no eviction
# policy meant for rate limits can ever drop queued tasks). Embedded mode: kombu's
# filesystem transport under var/celery/, so that `make run` runs the very same tasks on
# the same schedule in a worker process of its own, with no Redis.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL or "filesystem://localhost//"
_celery_dir = VAR_DIR / "celery"  # the beat's schedule file; the queue in embedded mode
_celery_dir.mkdir(parents=True, exist_ok=True)
if urlsplit(CELERY_BROKER_URL).scheme == "filesystem":
    for _folder in ("queue", "control"):
        (_celery_dir / _folder).mkdir(exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        "data_folder_in": str(_celery_dir / "queue"),
        "data_folder_out": str(_celery_dir / "queue"),
        "control_folder": str(_celery_dir / "control"),
    }
elif urlsplit(CELERY_BROKER_URL).scheme in ("redis", "rediss", "unix"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # A task held by a worker that died is handed out again after this: far above the
        # longest task (the time limits below) and above every retry countdown.
        "visibility_timeout": 600,
        "socket_connect_timeout": 2,
        # Above the 1 s BRPOP an idle worker waits on, or its reads would time out. Request
        # paths never publish through these: see webhooks.publish_deliveries.
        "socket_timeout": 5,
    }
else:
    raise ImproperlyConfigured(
        "CELERY_BROKER_URL must be a redis://, rediss://, unix:// or filesystem:// URL"
    )
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Acknowledged only when done, and handed out again if the worker process dies: every task
# is idempotent, so running one twice is safe and losing one is not.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_SOFT_TIME_LIMIT = 60
CELERY_TASK_TIME_LIMIT = 90
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # keep the JSON logging above
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(_celery_dir / "beat-schedule")


def _every(task: str, seconds: int) -> dict[str, Any]:
    # A run not started within its interval is dropped: the next one does the same work.
    return {
        "task": f"controlplane.tasks.{task}",
        "schedule": seconds,
        "options": {"expires": seconds},
    }


# One beat process runs this schedule (docs/deploy.md); every task is safe to run twice.
CELERY_BEAT_SCHEDULE = {
    "expire-pending-trades": _every("expire_pending_trades", 15),
    "send-pending-webhooks": _every("send_pending_webhooks", 15),
    "follow-open-orders": _every("follow_open_orders", 30),
    "evaluate-paper-orders": _every("evaluate_paper_orders", 30),
    "reconcile-unknown-trades": _every("reconcile_unknown_trades", 60),
    "renew-broker-tokens": _every("renew_broker_tokens", 300),
}

# ---- Platform webhooks -------------------------------------------------------------------
# The read timeout of one delivery attempt (connecting gets 5 s more).
TRADEPLANE_WEBHOOK_TIMEOUT_SECONDS = env_int(
    "TRADEPLANE_WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1, maximum=20
)
# Attempts per event before it is marked failed; the first retry waits this many seconds,
# each later one twice as long as the one before, at most an hour.
TRADEPLANE_WEBHOOK_MAX_ATTEMPTS = env_int(
    "TRADEPLANE_WEBHOOK_MAX_ATTEMPTS", 10, minimum=1, maximum=30
)
TRADEPLANE_WEBHOOK_RETRY_SECONDS = env_int(
    "TRADEPLANE_WEBHOOK_RETRY_SECONDS", 30, minimum=1, maximum=3600
)
# Off in production: webhook URLs must resolve to public addresses only (no requests into
# this server's own network on a platform's behalf).
TRADEPLANE_WEBHOOK_ALLOW_PRIVATE_NETWORKS = env_bool(
    "TRADEPLANE_WEBHOOK_ALLOW_PRIVATE_NETWORKS", not PRODUCTION
)
