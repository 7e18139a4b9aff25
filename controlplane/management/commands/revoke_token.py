from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.events import Actor
from controlplane.errors import NotFound
from controlplane.management.base import OperatorCommand
from controlplane.services.tokens import revoke_token_by_jti


class Command(OperatorCommand):
    help = "Revoke an access token by its jti; effective on the token's next request."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("jti")
        parser.add_argument("--reason", default="revoked by operator")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            issued = revoke_token_by_jti(
                options["jti"], reason=options["reason"], actor=Actor.operator("cli:revoke_token")
            )
        except NotFound as exc:
            raise CommandError(f"no token with jti {options['jti']!r}") from exc
        data = {"jti": issued.jti, "revoked_at": issued.revoked_at}
        self.emit(options, data, f"revoked {issued.jti} at {issued.revoked_at}")
