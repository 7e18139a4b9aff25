"""Broker connections: connecting (with the OAuth authorization step where the broker has
one), deletion (revocation at the broker) and operator trading grants.

Broker calls never run inside a transaction: the adapter changes the connection in memory
(credentials, token times) and these services persist and audit the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from audit.events import Action, Actor, record
from brokers.base import Authorization, BrokerError
from brokers.registry import available_brokers, get_adapter, is_known_broker
from controlplane.errors import BrokerFailure, Conflict, InvalidArgument
from controlplane.models import BrokerConnection, EndUser
from controlplane.services.portfolio import discover_accounts

logger = logging.getLogger(__name__)

# Fields an adapter may change while authorizing or renewing.
CREDENTIAL_FIELDS = [
    "credentials_ciphertext",
    "token_issued_at",
    "token_last_used_at",
    "token_renewed_at",
    "token_expires_at",
]

Environment = BrokerConnection.Environment


def _check_environment(broker: str, environment: str | None) -> str:
    """The paper broker has one environment; real brokers have sandbox and production."""
    if broker == "paper":
        if environment not in (None, Environment.PAPER):
            raise InvalidArgument("the paper broker's environment is 'paper'")
        return Environment.PAPER
    if environment not in (None, Environment.SANDBOX, Environment.PRODUCTION):
        raise InvalidArgument("environment must be 'sandbox' or 'production'")
    return environment or Environment.SANDBOX


@dataclass(frozen=True)
class Connecting:
    connection: BrokerConnection
    # Where to send the person to approve access; None when the connection is active already.
    authorization: Authorization | None


def create_connection(
    user: EndUser,
    *,
    broker: str,
    environment: str | None,
    trading_requested: bool,
    actor: Actor,
) -> BrokerConnection:
    return start_connection(
        user,
        broker=broker,
        environment=environment,
        trading_requested=trading_requested,
        actor=actor,
    ).connection


def start_connection(
    user: EndUser,
    *,
    broker: str,
    environment: str | None,
    trading_requested: bool,
    actor: Actor,
) -> Connecting:
    """Create the connection and start connecting: brokers that need no approval (paper)
    are active at once; OAuth brokers wait for the person in pending_authorization, with
    their request token stored encrypted and valid until `authorization.expires_at`."""
    if not is_known_broker(broker):
        names = ", ".join(available_brokers())
        raise InvalidArgument(f"unknown broker {broker!r}; available brokers: {names}")
    environment = _check_environment(broker, environment)
    with transaction.atomic():
        connection = BrokerConnection.objects.create(
            end_user=user,
            broker=broker,
            environment=environment,
            trading_requested=trading_requested,
        )
        record(
            Action.CONNECTION_CREATED,
            actor=actor,
            platform=user.platform.client_id,
            end_user=user.user_id,
            target=f"connection:{connection.pk}",
            detail={
                "broker": broker,
                "environment": environment,
                "trading_requested": trading_requested,
            },
        )
    # Outside the transaction: an OAuth broker is called over the network here.
    try:
        authorization = get_adapter(connection).start_authorization()
    except BrokerError as exc:
        BrokerConnection.objects.filter(pk=connection.pk).update(
            status=BrokerConnection.Status.ERROR, status_reason=exc.broker_message[:500]
        )
        raise BrokerFailure(exc) from exc
    if authorization is None:
        BrokerConnection.objects.filter(pk=connection.pk).update(
            status=BrokerConnection.Status.ACTIVE
        )
    else:
        connection.token_expires_at = authorization.expires_at
        connection.save(update_fields=CREDENTIAL_FIELDS)
    connection.refresh_from_db()
    return Connecting(connection, authorization)


def complete_connection(
    connection: BrokerConnection, verifier: str, *, actor: Actor
) -> BrokerConnection:
    """Exchange the person's verifier for access credentials: the connection becomes active
    and its accounts are discovered. Only one completion can win."""
    if connection.status != BrokerConnection.Status.PENDING_AUTHORIZATION:
        raise Conflict(f"this connection is {connection.status}, not waiting for authorization")
    if connection.token_expires_at is None or connection.token_expires_at <= timezone.now():
        raise Conflict("the authorization window closed; start a new connection")
    try:
        get_adapter(connection).complete_authorization(verifier)
    except BrokerError as exc:
        raise BrokerFailure(exc) from exc
    with transaction.atomic():
        # The conditional update decides a race between two completions.
        won = BrokerConnection.objects.filter(
            pk=connection.pk, status=BrokerConnection.Status.PENDING_AUTHORIZATION
        ).update(
            status=BrokerConnection.Status.ACTIVE,
            status_reason="",
            **{name: getattr(connection, name) for name in CREDENTIAL_FIELDS},
        )
        if not won:
            raise Conflict("this connection was completed or revoked meanwhile")
        record(
            Action.CONNECTION_AUTHORIZED,
            actor=actor,
            platform=connection.end_user.platform.client_id,
            end_user=connection.end_user.user_id,
            target=f"connection:{connection.pk}",
            detail={"broker": connection.broker, "environment": connection.environment},
        )
    connection.refresh_from_db()
    discover_accounts(connection)
    return connection


def revoke_connection(connection: BrokerConnection, *, actor: Actor) -> bool:
    """The connection stops working at once; its credentials are revoked at the broker
    (best effort: a broker that cannot be reached does not keep the connection alive) and
    wiped here."""
    if connection.credentials_ciphertext and connection.status == BrokerConnection.Status.ACTIVE:
        try:
            get_adapter(connection).revoke()
        except BrokerError as exc:
            logger.warning("revoking %s at the broker failed: %s", connection.pk, exc)
    with transaction.atomic():
        changed = (
            BrokerConnection.objects.filter(pk=connection.pk)
            .exclude(status=BrokerConnection.Status.REVOKED)
            .update(
                status=BrokerConnection.Status.REVOKED,
                trading_enabled=False,
                credentials_ciphertext="",
                status_reason="deleted",
            )
        )
        if changed:
            record(
                Action.CONNECTION_DELETED,
                actor=actor,
                platform=connection.end_user.platform.client_id,
                end_user=connection.end_user.user_id,
                target=f"connection:{connection.pk}",
                detail={"broker": connection.broker},
            )
    connection.refresh_from_db()
    return bool(changed)


def set_trading_enabled(connection: BrokerConnection, enabled: bool, *, actor: Actor) -> bool:
    with transaction.atomic():
        changed = (
            BrokerConnection.objects.filter(pk=connection.pk, trading_enabled=not enabled)
            .exclude(status=BrokerConnection.Status.REVOKED)
            .update(trading_enabled=enabled)
        )
        if changed:
            record(
                Action.TRADING_GRANTED if enabled else Action.TRADING_REVOKED,
                actor=actor,
                platform=connection.end_user.platform.client_id,
                end_user=connection.end_user.user_id,
                target=f"connection:{connection.pk}",
            )
    connection.refresh_from_db()
    return bool(changed)
