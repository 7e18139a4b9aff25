"""`record()`: the one way an audit row is written.

It runs inside the caller's transaction, so an event and the change it describes commit
or roll back together. Writers are serialised on the chain head (a PostgreSQL advisory
lock held to commit; SQLite's immediate transactions), so concurrent writers never fork it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from audit.chain import GENESIS_HASH, canonical_json, compute_hash
from audit.models import ActorKind, AuditEvent
from controlplane.logs import REDACTED, redact
from controlplane.requestid import current_request_id

# An arbitrary constant naming the chain-head lock in pg_advisory_xact_lock.
CHAIN_LOCK_ID = 7_302_118_551

SECRET_KEY_NAMES = re.compile(
    r"secret|password|token|authorization|verifier|credential|signature|cookie", re.IGNORECASE
)
# Keys that name a token without holding one.
SAFE_KEY_NAMES = frozenset({"jti", "token_type", "token_id"})


class Action:
    """Stable action codes, grouped by subject."""

    TOKEN_MINTED = "token.minted"
    TOKEN_MINT_REFUSED = "token.mint_refused"
    TOKEN_REVOKED = "token.revoked"
    AUTH_FAILED = "auth.failed"
    AUTH_THROTTLED = "auth.throttled"
    PLATFORM_CREATED = "platform.created"
    PLATFORM_DEACTIVATED = "platform.deactivated"
    PLATFORM_REACTIVATED = "platform.reactivated"
    TRADING_HALTED = "platform.trading_halted"
    TRADING_RESUMED = "platform.trading_resumed"
    GLOBAL_TRADING_HALTED = "system.trading_halted"
    GLOBAL_TRADING_RESUMED = "system.trading_resumed"
    USER_CREATED = "user.created"
    USER_DELETED = "user.deleted"
    USER_DEACTIVATED = "user.deactivated"
    USER_REACTIVATED = "user.reactivated"
    CONNECTION_CREATED = "connection.created"
    CONNECTION_AUTHORIZED = "connection.authorized"
    CONNECTION_DELETED = "connection.deleted"
    TRADING_GRANTED = "connection.trading_granted"
    TRADING_REVOKED = "connection.trading_revoked"
    TRADE_CREATED = "trade.created"
    TRADE_APPROVED = "trade.approved"
    TRADE_REJECTED = "trade.rejected"
    TRADE_CONFIRMED = "trade.confirmed"
    TRADE_SUBMITTED = "trade.submitted"
    TRADE_CANCELLED = "trade.cancelled"
    TRADE_FAILED = "trade.failed"
    TRADE_UNKNOWN = "trade.unknown"
    TRADE_EXPIRED = "trade.expired"
    TRADE_RECONCILED = "trade.reconciled"
    # What the broker did with a submitted order, as the order follow-up saw it.
    ORDER_FILLED = "order.filled"
    ORDER_PARTIALLY_FILLED = "order.partially_filled"
    ORDER_CANCELLED = "order.cancelled"
    ORDER_REJECTED = "order.rejected"
    ORDER_EXPIRED = "order.expired"
    CONNECTION_RENEWED = "connection.renewed"
    CONNECTION_NEEDS_REAUTH = "connection.needs_reauth"
    WEBHOOK_REGISTERED = "webhook.registered"
    WEBHOOK_CHANGED = "webhook.changed"
    WEBHOOK_SECRET_ROTATED = "webhook.secret_rotated"
    WEBHOOK_DELETED = "webhook.deleted"
    WEBHOOK_DELIVERY_RETRIED = "webhook.delivery_retried"
    SIGNING_KEY_ROTATED = "key.signing_rotated"
    ENCRYPTION_KEY_ROTATED = "key.encryption_rotated"


@dataclass(frozen=True)
class Actor:
    kind: str
    id: str = ""

    @classmethod
    def platform(cls, client_id: str) -> Actor:
        return cls(ActorKind.PLATFORM, client_id)

    @classmethod
    def end_user(cls, user_id: str) -> Actor:
        return cls(ActorKind.END_USER, user_id)

    @classmethod
    def operator(cls, username: str) -> Actor:
        return cls(ActorKind.OPERATOR, username)

    @classmethod
    def system(cls, name: str = "") -> Actor:
        return cls(ActorKind.SYSTEM, name)

    @classmethod
    def anonymous(cls) -> Actor:
        return cls(ActorKind.ANONYMOUS)


def redact_detail(value: Any, key: str = "") -> Any:
    """A JSON-safe copy with secret-named fields and secret-shaped strings replaced."""
    if key and key not in SAFE_KEY_NAMES and SECRET_KEY_NAMES.search(key):
        return REDACTED
    if isinstance(value, Mapping):
        return {str(k): redact_detail(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_detail(item) for item in value]
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    # Decimals, datetimes, UUIDs: their JSON text form, as DjangoJSONEncoder writes it.
    return redact(json.loads(json.dumps(value, cls=DjangoJSONEncoder)))


def record(
    action: str,
    *,
    actor: Actor,
    outcome: str = "ok",
    platform: str = "",
    end_user: str = "",
    jti: str = "",
    target: str = "",
    detail: Mapping[str, Any] | None = None,
    latency_ms: float | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    # Normalise through JSON now so the hashed value is exactly what the database returns.
    clean_detail = json.loads(canonical_json(redact_detail(dict(detail or {}))))
    # No savepoint: inside a caller's transaction the event and the change commit or fail
    # together anyway, and a savepoint would cost two more round trips per event.
    with transaction.atomic(savepoint=False):
        _lock_chain_head()
        head = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
        seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
        event = AuditEvent(
            seq=seq,
            created_at=timezone.now(),
            actor_kind=actor.kind,
            actor_id=actor.id[:200],
            platform=platform,
            end_user=end_user,
            jti=jti,
            action=action,
            target=target[:200],
            request_id=request_id if request_id is not None else current_request_id.get(),
            outcome=outcome,
            latency_ms=round(latency_ms, 3) if latency_ms is not None else None,
            detail=clean_detail,
            prev_hash=prev_hash,
        )
        event.hash = compute_hash(event)
        event.save(force_insert=True)
    return event


def _lock_chain_head() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_ID])
    # SQLite: transactions begin IMMEDIATE (settings), which already serialises writers.
