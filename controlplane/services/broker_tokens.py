"""Keeping broker credentials alive, and noticing when only the person can revive them.

Connections that hold credentials (OAuth brokers; the paper broker holds none) are renewed
through the adapter interface, `BrokerAdapter.renew()`, once their token has been idle for
RENEW_AFTER_IDLE: E*TRADE inactivates an access token after two idle hours, and a renewal
revives it. At `token_expires_at` (E*TRADE: midnight US Eastern) only a new login helps,
so the connection becomes `needs_reauth`, audited, and the platform gets a
`connection.needs_reauth` webhook. AUTH_EXPIRED from a renewal means the same.

`renew()` is also the hook for OAuth 2 brokers: there it refreshes the access token with
the refresh token and puts the new pair on the connection (`set_credentials`, token
timestamps). The adapter only changes the connection in memory; this service persists it
while holding the connection's row lock, so two workers never refresh one connection at
once. That matters: a rotating refresh token used twice makes the authorization server
revoke the whole token family (RFC 9700, section 4.14), logging the person out.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from audit.events import Action, Actor, record
from brokers.base import BrokerError, BrokerErrorCode
from brokers.registry import get_adapter
from controlplane.models import BrokerConnection
from controlplane.services import webhooks

logger = logging.getLogger(__name__)

RENEW_AFTER_IDLE = timedelta(minutes=90)
# A sweep starts no renewal after this long, well inside the task's soft time limit, so a
# renewal is never cut off between the broker's answer and saving it.
SWEEP_BUDGET_SECONDS = 40
ACTOR = Actor.system("renew_broker_tokens")
# What the adapter may change on the connection during renew().
RENEWED_FIELDS = [
    "credentials_ciphertext",
    "token_issued_at",
    "token_last_used_at",
    "token_renewed_at",
    "token_expires_at",
    "updated_at",
]


@dataclass
class RenewalReport:
    renewed: int = 0
    needs_reauth: int = 0
    deferred: int = 0  # a transient broker error: the next cycle tries again
    failed: int = 0
    skipped: int = 0  # renewed meanwhile, or being renewed by another worker


def _due(now: datetime) -> QuerySet[BrokerConnection]:
    idle_since = now - RENEW_AFTER_IDLE
    idle = (
        (Q(token_renewed_at__isnull=True) | Q(token_renewed_at__lte=idle_since))
        & (Q(token_last_used_at__isnull=True) | Q(token_last_used_at__lte=idle_since))
        & (Q(token_issued_at__isnull=True) | Q(token_issued_at__lte=idle_since))
    )
    return (
        BrokerConnection.objects.filter(status=BrokerConnection.Status.ACTIVE)
        .exclude(credentials_ciphertext="")
        .filter(idle | Q(token_expires_at__lte=now))
    )


def renew_broker_tokens() -> RenewalReport:
    """Renew every connection that is due, at most once each; expire the expired."""
    report = RenewalReport()
    started = time.monotonic()
    due = _due(timezone.now()).order_by("token_renewed_at", "created_at")
    for pk in due.values_list("pk", flat=True):
        if time.monotonic() - started > SWEEP_BUDGET_SECONDS:
            break  # the rest are still due at the next cycle
        outcome = renew_connection(pk)
        setattr(report, outcome, getattr(report, outcome) + 1)
    return report


def renew_connection(pk: uuid.UUID) -> str:
    """Renew one connection if it is still due; the name of a RenewalReport counter."""
    with transaction.atomic():
        # skip_locked: another worker renewing this connection right now is enough. The
        # lock is held across the broker call on purpose (see the module docstring); the
        # adapter's own timeout bounds it.
        connection = (
            _due(timezone.now())
            .select_for_update(skip_locked=True, of=("self",))
            .select_related("end_user__platform")
            .filter(pk=pk)
            .first()
        )
        if connection is None:
            return "skipped"
        now = timezone.now()
        if connection.token_expires_at is not None and connection.token_expires_at <= now:
            expired = connection.token_expires_at.isoformat(timespec="seconds")
            mark_needs_reauth(connection, reason=f"the broker's access token expired at {expired}")
            return "needs_reauth"
        try:
            get_adapter(connection).renew()
        except BrokerError as exc:
            if exc.code == BrokerErrorCode.AUTH_EXPIRED:
                mark_needs_reauth(connection, reason=exc.broker_message)
                return "needs_reauth"
            logger.warning(
                "renewing connection %s failed (%s): %s", pk, exc.code, exc.broker_message
            )
            return "deferred" if exc.transient else "failed"
        if connection.token_renewed_at is None or connection.token_renewed_at < now:
            connection.token_renewed_at = now
        connection.save(update_fields=RENEWED_FIELDS)
        record(
            Action.CONNECTION_RENEWED,
            actor=ACTOR,
            platform=connection.end_user.platform.client_id,
            end_user=connection.end_user.user_id,
            target=f"connection:{connection.pk}",
            detail={
                "broker": connection.broker,
                "token_expires_at": connection.token_expires_at,
            },
        )
    return "renewed"


def mark_needs_reauth(connection: BrokerConnection, *, reason: str, actor: Actor = ACTOR) -> bool:
    """The connection's credentials are dead; only the person can connect again. Audited
    and notified once, whoever notices first (renewal, order follow-up, reconciliation)."""
    with transaction.atomic():
        changed = BrokerConnection.objects.filter(
            pk=connection.pk, status=BrokerConnection.Status.ACTIVE
        ).update(status=BrokerConnection.Status.NEEDS_REAUTH, status_reason=reason[:500])
        if not changed:
            return False
        connection.refresh_from_db(fields=["status", "status_reason", "updated_at"])
        record(
            Action.CONNECTION_NEEDS_REAUTH,
            actor=actor,
            platform=connection.end_user.platform.client_id,
            end_user=connection.end_user.user_id,
            target=f"connection:{connection.pk}",
            detail={"broker": connection.broker, "reason": reason},
        )
        webhooks.notify_needs_reauth(connection)
    return True
