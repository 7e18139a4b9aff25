"""Broker connections: creation, deletion (revocation) and operator trading grants."""

from __future__ import annotations

from django.db import transaction

from audit.events import Action, Actor, record
from brokers.registry import available_brokers, is_known_broker
from controlplane.errors import InvalidArgument
from controlplane.models import BrokerConnection, EndUser


def create_connection(
    user: EndUser, *, broker: str, environment: str, trading_requested: bool, actor: Actor
) -> BrokerConnection:
    if not is_known_broker(broker):
        names = ", ".join(available_brokers()) or "none yet"
        raise InvalidArgument(f"unknown broker {broker!r}; available brokers: {names}")
    if environment not in BrokerConnection.Environment.values:
        raise InvalidArgument(
            f"environment must be one of {', '.join(BrokerConnection.Environment.values)}"
        )
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
