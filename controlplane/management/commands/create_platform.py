from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.events import Actor
from controlplane.errors import ControlPlaneError
from controlplane.management.base import OperatorCommand, parse_scope_list
from controlplane.services.platforms import create_platform


class Command(OperatorCommand):
    help = "Create a platform; prints its client id and secret (the secret only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("name")
        parser.add_argument("--scopes", default="read,trade", help="e.g. read or read,trade")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            created = create_platform(
                options["name"],
                scopes=parse_scope_list(options["scopes"]),
                actor=Actor.operator("cli:create_platform"),
            )
        except ControlPlaneError as exc:
            raise CommandError(exc.message) from exc
        data = {"client_id": created.platform.client_id, "client_secret": created.client_secret}
        self.emit(
            options, data, f"client_id={data['client_id']}\nclient_secret={data['client_secret']}"
        )
