"""Platform webhooks: the endpoint a platform registers, the events recorded for it, and
their signed delivery.

What a platform receives (the contract; README and docs/deploy.md say the same):
- `POST <url>` with a JSON body `{"id", "type", "created", "data"}` and the headers
  `Tradeplane-Event-Id`, `Tradeplane-Event-Type` and
  `Tradeplane-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of f"{t}.{body}">` under the
  endpoint's signing secret. A receiver recomputes the HMAC over the raw body, compares in
  constant time, and refuses a `t` more than five minutes from its own clock, so a captured
  request cannot be replayed later (`verify_signature` is the reference implementation).
- Any 2xx is success. Anything else, a timeout or a refused connection is tried again with
  exponential backoff, up to TRADEPLANE_WEBHOOK_MAX_ATTEMPTS attempts. Delivery is at least
  once, so receivers drop an event id they have already handled.

How it stays reliable: the WebhookDelivery row is the source of truth. It is written in the
transaction of the change it reports; after commit a Celery task is published to send it,
with a bounded wait, so no request hangs on a Celery broker that is down. A row that could
not be published, or whose message got lost, is published again by the periodic sweep.
A sender claims one attempt of one row with a conditional UPDATE (the attempt number must
still match and no other sender may hold the lease); recording the result moves the
attempt number on, so a duplicate or late message for that attempt finds nothing to claim.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from audit.events import Action, Actor, record
from controlplane import encryption
from controlplane.celery import app as celery_app
from controlplane.errors import InvalidArgument, NotFound
from controlplane.models import (
    BrokerConnection,
    PendingTrade,
    Platform,
    WebhookDelivery,
    WebhookEndpoint,
)

logger = logging.getLogger(__name__)

Status = WebhookDelivery.Status

SIGNATURE_HEADER = "Tradeplane-Signature"
EVENT_ID_HEADER = "Tradeplane-Event-Id"
EVENT_TYPE_HEADER = "Tradeplane-Event-Type"
SIGNATURE_TOLERANCE_SECONDS = 300
SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2000
CONNECT_TIMEOUT_SECONDS = 5
# A sender holds its claim this long: longer than one attempt can take (the HTTP timeouts,
# and the deliver task's time limit below it), so a claim only lapses when its worker died.
CLAIM_LEASE = timedelta(seconds=60)
# A delivery handed to Celery is left alone by the sweep this long: its message is queued.
REDISPATCH_AFTER = timedelta(seconds=60)
MAX_RETRY_DELAY = timedelta(hours=1)
SWEEP_BATCH = 500


class EventType:
    """The events a platform can receive: a public contract, so never renamed."""

    ORDER_FILLED = "order.filled"
    ORDER_PARTIALLY_FILLED = "order.partially_filled"
    ORDER_CANCELLED = "order.cancelled"
    ORDER_REJECTED = "order.rejected"
    ORDER_EXPIRED = "order.expired"
    CONNECTION_NEEDS_REAUTH = "connection.needs_reauth"
    TRADE_EXPIRED = "trade.expired"
    WEBHOOK_TEST = "webhook.test"


# ---- The endpoint ------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookRegistration:
    endpoint: WebhookEndpoint
    created: bool
    signing_secret: str | None  # only when new (created or rotated): shown once, then never


def check_url(url: str) -> str:
    """The URL deliveries may go to, or InvalidArgument saying why not."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument("url must be an http:// or https:// URL with a host")
    if settings.PRODUCTION and parts.scheme != "https":
        raise InvalidArgument("url must use https")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument("url must not carry a user name or password")
    if parts.fragment or len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(f"url must have no fragment and at most {MAX_URL_LENGTH} characters")
    refusal = destination_refusal(url)
    if refusal:
        raise InvalidArgument(refusal)
    return url


def destination_refusal(url: str) -> str:
    """Why deliveries may not go to this URL's host, or "" when they may.

    Unless TRADEPLANE_WEBHOOK_ALLOW_PRIVATE_NETWORKS is on (the default outside production),
    every address the host resolves to must be a public one, so a platform cannot make this
    server call into its own network (cloud metadata, the database, the admin). Checked at
    registration and again before each attempt, because DNS answers change.
    """
    if settings.TRADEPLANE_WEBHOOK_ALLOW_PRIVATE_NETWORKS:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        return f"the webhook host {host!r} does not resolve"
    for *_, sockaddr in answers:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global:
            return f"the webhook host {host!r} resolves to a non-public address"
    return ""


def new_signing_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def set_webhook(
    platform: Platform, *, url: str, rotate_secret: bool = False, actor: Actor
) -> WebhookRegistration:
    """Register the platform's webhook URL, or change it. A new endpoint gets a signing
    secret, returned here once; `rotate_secret` replaces the secret of an existing one."""
    url = check_url(url)
    with transaction.atomic():
        # One writer per platform, so two concurrent registrations cannot both create.
        Platform.objects.select_for_update().filter(pk=platform.pk).get()
        endpoint = WebhookEndpoint.objects.filter(platform=platform).first()
        secret: str | None = None
        if endpoint is None:
            endpoint = WebhookEndpoint(platform=platform, url=url)
            secret = new_signing_secret()
            endpoint.set_signing_secret(secret)
            endpoint.save(force_insert=True)
            _audit_endpoint(Action.WEBHOOK_REGISTERED, endpoint, actor)
            return WebhookRegistration(endpoint, created=True, signing_secret=secret)
        if endpoint.url != url:
            old_host = urlsplit(endpoint.url).hostname
            endpoint.url = url
            endpoint.save(update_fields=["url", "updated_at"])
            _audit_endpoint(Action.WEBHOOK_CHANGED, endpoint, actor, old_host=old_host)
        if rotate_secret:
            secret = new_signing_secret()
            endpoint.set_signing_secret(secret)
            endpoint.save(update_fields=["secret_ciphertext", "updated_at"])
            _audit_endpoint(Action.WEBHOOK_SECRET_ROTATED, endpoint, actor)
    return WebhookRegistration(endpoint, created=False, signing_secret=secret)


def rotate_signing_secret(endpoint: WebhookEndpoint, *, actor: Actor) -> str:
    """A new signing secret, effective from the next attempt; returned once."""
    registration = set_webhook(endpoint.platform, url=endpoint.url, rotate_secret=True, actor=actor)
    assert registration.signing_secret is not None
    return registration.signing_secret


def get_webhook(platform: Platform) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(platform=platform).first()
    if endpoint is None:
        raise NotFound("no webhook is registered; PUT /v1/webhook registers one")
    return endpoint


def delete_webhook(platform: Platform, *, actor: Actor) -> bool:
    """Remove the endpoint. Events not yet delivered are cancelled; the log is kept."""
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().filter(platform=platform).first()
        if endpoint is None:
            return False
        WebhookDelivery.objects.filter(endpoint=endpoint, status=Status.PENDING).update(
            status=Status.CANCELLED, last_error="the webhook endpoint was removed"
        )
        _audit_endpoint(Action.WEBHOOK_DELETED, endpoint, actor)
        endpoint.delete()
    return True


def reencrypt_signing_secrets() -> tuple[int, int]:
    """Rewrite every signing secret under the active encryption key (key rotation):
    (rows, rewritten). Unreadable ones raise: their key was removed too early."""
    active = encryption.active_key_id()
    rows = rewritten = 0
    for pk in WebhookEndpoint.objects.values_list("pk", flat=True).iterator():
        with transaction.atomic():
            endpoint = WebhookEndpoint.objects.select_for_update().get(pk=pk)
            rows += 1
            if encryption.key_id_of(endpoint.secret_ciphertext) == active:
                continue
            endpoint.set_signing_secret(endpoint.get_signing_secret())
            endpoint.save(update_fields=["secret_ciphertext"])
            rewritten += 1
    return rows, rewritten


def _audit_endpoint(action: str, endpoint: WebhookEndpoint, actor: Actor, **detail: Any) -> None:
    # The host only: a URL path or query often carries the receiver's own secret.
    record(
        action,
        actor=actor,
        platform=endpoint.platform.client_id,
        target=f"webhook:{endpoint.pk}",
        detail={"host": urlsplit(endpoint.url).hostname, **detail},
    )


# ---- Events ------------------------------------------------------------------------------


def emit(platform_id: int, event_type: str, data: Mapping[str, Any]) -> WebhookDelivery | None:
    """Record one event for the platform's endpoint (nothing when it has none), sent after
    the surrounding transaction commits. Call it inside the transaction of the change the
    event reports, so the two commit or roll back together and the event exists once."""
    endpoint = WebhookEndpoint.objects.filter(platform_id=platform_id).first()
    if endpoint is None:
        return None
    now = timezone.now()
    delivery = WebhookDelivery.objects.create(
        event_id="evt_" + secrets.token_urlsafe(18),
        event_type=event_type,
        platform_id=platform_id,
        endpoint=endpoint,
        data=json.loads(json.dumps(dict(data), cls=DjangoJSONEncoder)),
        created_at=now,
        # Left to the publish after commit; a publish that fails makes it due at once.
        next_attempt_at=now + REDISPATCH_AFTER,
    )
    delivery_id = delivery.pk
    transaction.on_commit(lambda: publish_deliveries([(delivery_id, 0)]))
    return delivery


def send_test_event(platform: Platform) -> WebhookDelivery:
    """A `webhook.test` event, so a platform can check its receiver end to end."""
    get_webhook(platform)
    delivery = emit(
        platform.pk,
        EventType.WEBHOOK_TEST,
        {"message": "A test event from Tradeplane.", "client_id": platform.client_id},
    )
    assert delivery is not None
    return delivery


def notify_trade_expired(trade: PendingTrade) -> None:
    emit(
        trade.connection.end_user.platform_id,
        EventType.TRADE_EXPIRED,
        {
            "confirmation_id": trade.confirmation_id,
            "client_order_id": trade.client_order_id,
            "kind": trade.kind,
            "user_id": trade.end_user.user_id,
            "account_id": trade.account_id,
            "summary": trade.summary,
            "expires_at": trade.expires_at,
        },
    )


def notify_order_changed(trade: PendingTrade, event_type: str, reason: str = "") -> None:
    """An order event; the trade carries what the follow-up last recorded."""
    emit(
        trade.connection.end_user.platform_id,
        event_type,
        {
            "confirmation_id": trade.confirmation_id,
            "client_order_id": trade.client_order_id,
            "broker_order_id": trade.broker_order_id,
            "user_id": trade.end_user.user_id,
            "account_id": trade.account_id,
            "broker": trade.connection.broker,
            "order": trade.order,
            "order_status": trade.order_status,
            "filled_quantity": trade.filled_quantity,
            "average_fill_price": trade.average_fill_price,
            "reason": reason,
            "summary": trade.summary,
        },
    )


def notify_needs_reauth(connection: BrokerConnection) -> None:
    emit(
        connection.end_user.platform_id,
        EventType.CONNECTION_NEEDS_REAUTH,
        {
            "connection_id": str(connection.pk),
            "user_id": connection.end_user.user_id,
            "broker": connection.broker,
            "environment": connection.environment,
            "reason": connection.status_reason,
        },
    )


# ---- Publishing to Celery ----------------------------------------------------------------


def publish_deliveries(pending: Sequence[tuple[int, int]]) -> int:
    """Queue a send of each (delivery id, attempt). Returns how many were queued.

    Waits on the Celery broker for about two TRADEPLANE_REDIS_TIMEOUTs at most (one connect,
    one command, no retries), because it runs at the end of requests: Celery's own publish
    can block far longer when Redis is down. What could not be queued stays pending and is
    made due at once, for the sweep to publish when the broker is back."""
    from controlplane.tasks import deliver_webhook  # the task module imports this one

    timeout = settings.TRADEPLANE_REDIS_TIMEOUT
    published = 0
    try:
        with celery_app.connection_for_write(
            connect_timeout=timeout,
            transport_options={
                "socket_connect_timeout": timeout,
                "socket_timeout": timeout,
                "max_retries": 0,
            },
        ) as connection:
            for delivery_id, attempt in pending:
                deliver_webhook.apply_async(
                    (delivery_id, attempt), connection=connection, retry=False
                )
                published += 1
    except (KombuError, OSError, RedisError) as exc:
        logger.warning(
            "could not queue %d webhook deliveries (%s); the sweep will send them",
            len(pending) - published,
            type(exc).__name__,
        )
        for delivery_id, attempt in pending[published:]:
            WebhookDelivery.objects.filter(
                pk=delivery_id, status=Status.PENDING, attempts=attempt
            ).update(next_attempt_at=timezone.now())
    return published


def dispatch_due_deliveries(limit: int = SWEEP_BATCH) -> int:
    """The sweep: queue a send of every pending delivery that is due (a retry whose backoff
    has passed, or one whose publish failed or whose message was lost)."""
    now = timezone.now()
    due = list(
        WebhookDelivery.objects.filter(status=Status.PENDING, next_attempt_at__lte=now)
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lte=now))
        .order_by("next_attempt_at")
        .values_list("pk", "attempts")[:limit]
    )
    claimed = [
        (pk, attempts)
        for pk, attempts in due
        # Only one sweep queues an attempt, and not again while its message waits.
        if WebhookDelivery.objects.filter(
            pk=pk, status=Status.PENDING, attempts=attempts, next_attempt_at__lte=now
        ).update(next_attempt_at=now + REDISPATCH_AFTER)
    ]
    return publish_deliveries(claimed) if claimed else 0


# ---- Sending -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptResult:
    url: str
    status_code: int | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def deliver(delivery_id: int, attempt: int) -> str:
    """Make attempt `attempt + 1` of one delivery, unless it was made (or is being made)
    already. Returns the delivery's status afterwards, or "skipped"."""
    now = timezone.now()
    claimed = (
        WebhookDelivery.objects.filter(pk=delivery_id, status=Status.PENDING, attempts=attempt)
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lte=now))
        .update(locked_until=now + CLAIM_LEASE)
    )
    if not claimed:
        return "skipped"
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    if delivery.endpoint is None:  # removed after the event was recorded
        WebhookDelivery.objects.filter(pk=delivery_id, attempts=attempt).update(
            status=Status.CANCELLED, locked_until=None, last_error="no webhook endpoint"
        )
        return Status.CANCELLED
    # No transaction is open here: the HTTP call may take seconds.
    result = _send(delivery, delivery.endpoint)
    return _record_attempt(delivery, attempt, result)


def signed_request(
    delivery: WebhookDelivery, secret: str, timestamp: int
) -> tuple[bytes, dict[str, str]]:
    """The exact body and headers of one attempt."""
    envelope = {
        "id": delivery.event_id,
        "type": delivery.event_type,
        "created": delivery.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": delivery.data,
    }
    body = json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()
    return body, {
        "Content-Type": "application/json",
        "User-Agent": "Tradeplane-Webhooks/1",
        EVENT_ID_HEADER: delivery.event_id,
        EVENT_TYPE_HEADER: delivery.event_type,
        SIGNATURE_HEADER: signature_header(secret, timestamp, body),
    }


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """What a receiver does: the HMAC over `f"{t}.{body}"` matches one `v1` value, in
    constant time, and `t` is within `tolerance` seconds of now (replays are refused)."""
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _send(delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> AttemptResult:
    url = endpoint.url
    refusal = destination_refusal(url)
    if refusal:
        return AttemptResult(url, error=refusal)
    try:
        secret = endpoint.get_signing_secret()
    except encryption.DecryptionError:
        return AttemptResult(url, error="the signing secret cannot be decrypted")
    body, headers = signed_request(delivery, secret, int(time.time()))
    try:
        # No redirects: a 3xx could point anywhere, including inside our own network.
        with requests.post(
            url,
            data=body,
            headers=headers,
            timeout=(CONNECT_TIMEOUT_SECONDS, settings.TRADEPLANE_WEBHOOK_TIMEOUT_SECONDS),
            allow_redirects=False,
            stream=True,
        ) as response:
            status_code = response.status_code
    except requests.RequestException as exc:
        return AttemptResult(url, error=f"{type(exc).__name__}: {exc}")
    error = "" if 200 <= status_code < 300 else f"HTTP {status_code}"
    return AttemptResult(url, status_code=status_code, error=error)


def retry_delay(attempts: int) -> timedelta:
    """Backoff after `attempts` failed attempts: the base, doubling, at most an hour."""
    base = timedelta(seconds=settings.TRADEPLANE_WEBHOOK_RETRY_SECONDS)
    return min(base * (1 << (attempts - 1)), MAX_RETRY_DELAY)


def _record_attempt(delivery: WebhookDelivery, attempt: int, result: AttemptResult) -> str:
    finished = timezone.now()
    attempts = attempt + 1
    fields: dict[str, Any] = {
        "attempts": attempts,
        "locked_until": None,
        "last_attempt_at": finished,
        "last_status_code": result.status_code,
        "last_error": result.error[:500],
        "url": result.url[:MAX_URL_LENGTH],
    }
    if result.ok:
        fields.update(status=Status.DELIVERED, delivered_at=finished)
    elif attempts >= settings.TRADEPLANE_WEBHOOK_MAX_ATTEMPTS:
        fields.update(status=Status.FAILED)
        logger.warning(
            "webhook %s to platform %s failed after %d attempts: %s",
            delivery.event_id,
            delivery.platform_id,
            attempts,
            result.error,
        )
    else:
        fields.update(next_attempt_at=finished + retry_delay(attempts))
    # Conditional on our claim: a removal of the endpoint meanwhile (cancelled) stands.
    WebhookDelivery.objects.filter(pk=delivery.pk, status=Status.PENDING, attempts=attempt).update(
        **fields
    )
    return str(fields.get("status", Status.PENDING))


def retry_delivery(delivery: WebhookDelivery, *, actor: Actor) -> bool:
    """An operator sends a failed delivery once more (one attempt; the backoff does not
    start over)."""
    with transaction.atomic():
        changed = WebhookDelivery.objects.filter(
            pk=delivery.pk, status=Status.FAILED, endpoint__isnull=False
        ).update(
            status=Status.PENDING,
            next_attempt_at=timezone.now() + REDISPATCH_AFTER,
            locked_until=None,
        )
        if not changed:
            return False
        delivery.refresh_from_db()
        record(
            Action.WEBHOOK_DELIVERY_RETRIED,
            actor=actor,
            platform=delivery.platform.client_id,
            target=f"webhook_delivery:{delivery.event_id}",
            detail={"event_type": delivery.event_type, "attempts": delivery.attempts},
        )
        pending = [(delivery.pk, delivery.attempts)]
        transaction.on_commit(lambda: publish_deliveries(pending))
    return True
