from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.events import Actor
from controlplane.errors import ControlPlaneError
from controlplane.management.base import OperatorCommand
from controlplane.services.trading import approve_trade


class Command(OperatorCommand):
    help = "Approve a trade waiting for operator approval; the person may then confirm it."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("confirmation_id")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            trade = approve_trade(
                options["confirmation_id"], actor=Actor.operator("cli:approve_trade")
            )
        except ControlPlaneError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from exc
        data = {
            "confirmation_id": trade.confirmation_id,
            "status": trade.status,
            "expires_at": trade.expires_at,
        }
        self.emit(options, data, f"approved: {trade.summary} (confirm by {trade.expires_at})")
