"""Broker connections: creation, deletion (revocation) and operator trading grants."""

from __future__ import annotations

from django.db import transaction

from audit.events import Action, Actor, record
from brokers.base import BrokerError
from brokers.registry import available_brokers, get_adapter, is_known_broker
from controlplane.errors import BrokerFailure, InvalidArgument
from controlplane.models import BrokerConnection, EndUser

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


def create_connection(
    user: EndUser,
    *,
    broker: str,
    environment: str | None,
    trading_requested: bool,
    actor: Actor,
) -> BrokerConnection:
    """Create the connection and start connecting: brokers that need no approval (paper)
    are active at once; OAuth brokers wait for the person in pending_authorization."""
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
    connection.refresh_from_db()
    return connection


def revoke_connection(connection: BrokerConnection, *, actor: Actor) -> bool:
    """The connection stops working at once; its credentials are wiped."""
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
