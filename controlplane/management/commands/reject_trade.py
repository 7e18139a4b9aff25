from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.events import Actor
from controlplane.errors import ControlPlaneError
from controlplane.management.base import OperatorCommand
from controlplane.services.trading import reject_trade


class Command(OperatorCommand):
    help = "Reject a pending trade with a reason; it can no longer be confirmed."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("confirmation_id")
        parser.add_argument("--reason", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            trade = reject_trade(
                options["confirmation_id"],
                reason=options["reason"],
                actor=Actor.operator("cli:reject_trade"),
            )
        except ControlPlaneError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from exc
        data = {
            "confirmation_id": trade.confirmation_id,
            "status": trade.status,
            "reason": trade.status_reason,
        }
        self.emit(options, data, f"rejected: {trade.summary}")
