from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.events import Actor
from controlplane.management.base import OperatorCommand
from controlplane.models import BrokerConnection
from controlplane.services.connections import set_trading_enabled


class Command(OperatorCommand):
    help = "Allow trading on a broker connection."
    enabled = True

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("connection_id")

    def handle(self, *args: Any, **options: Any) -> None:
        connection = (
            BrokerConnection.objects.filter(pk=options["connection_id"]).first()
            if (len(options["connection_id"]) == 36)
            else None
        )
        if connection is None:
            raise CommandError(f"no connection {options['connection_id']!r}")
        if connection.status == BrokerConnection.Status.REVOKED:
            raise CommandError("the connection is revoked")
        changed = set_trading_enabled(
            connection, self.enabled, actor=Actor.operator(f"cli:{self.__module__.split('.')[-1]}")
        )
        data = {
            "connection_id": str(connection.pk),
            "trading_enabled": self.enabled,
            "changed": changed,
        }
        self.emit(
            options,
            data,
            f"trading {'enabled' if self.enabled else 'disabled'} on "
            f"{connection.pk}{'' if changed else ' (already)'}",
        )
