from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.events import Actor
from controlplane.errors import ControlPlaneError
from controlplane.management.base import OperatorCommand, parse_scope_list
from controlplane.models import Platform
from controlplane.services.users import create_end_user


class Command(OperatorCommand):
    help = "Create an end user of a platform; prints its user id and secret (only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--platform", required=True, metavar="CLIENT_ID")
        parser.add_argument("--user-id", help="the platform's own id for the user")
        parser.add_argument("--scopes", help="maximum scopes, e.g. read or read,trade")

    def handle(self, *args: Any, **options: Any) -> None:
        platform = Platform.objects.filter(client_id=options["platform"]).first()
        if platform is None:
            raise CommandError(f"no platform with client id {options['platform']!r}")
        scopes = parse_scope_list(options["scopes"]) if options["scopes"] else None
        try:
            created = create_end_user(
                platform,
                user_id=options["user_id"],
                scopes=scopes,
                actor=Actor.operator("cli:create_end_user"),
            )
        except ControlPlaneError as exc:
            raise CommandError(exc.message) from exc
        data = {"user_id": created.end_user.user_id, "user_secret": created.user_secret}
        self.emit(options, data, f"user_id={data['user_id']}\nuser_secret={data['user_secret']}")
