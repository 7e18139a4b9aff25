from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.events import Actor
from controlplane.management.base import OperatorCommand, parse_scope_list
from controlplane.models import EndUser
from controlplane.services.tokens import issue_token


class Command(OperatorCommand):
    help = "Mint an access token for an end user (operators' shortcut past the REST API)."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--user-id", required=True)
        parser.add_argument("--platform", metavar="CLIENT_ID", help="needed if the id is ambiguous")
        parser.add_argument("--scopes", default="read")

    def handle(self, *args: Any, **options: Any) -> None:
        users = EndUser.objects.live().select_related("platform").filter(user_id=options["user_id"])
        if options["platform"]:
            users = users.filter(platform__client_id=options["platform"])
        found = list(users[:2])
        if not found:
            raise CommandError(f"no end user {options['user_id']!r}")
        if len(found) > 1:
            raise CommandError("that user id exists on several platforms; add --platform")
        user = found[0]
        scopes = parse_scope_list(options["scopes"])
        refused = scopes - (user.scopes & user.platform.scopes)
        if refused:
            raise CommandError(f"scope(s) {', '.join(sorted(refused))} not allowed for this user")
        if not (user.is_active and user.platform.is_active):
            raise CommandError("the user or its platform is inactive")
        minted = issue_token(user.platform, user, scopes, actor=Actor.operator("cli:mint_token"))
        data = {
            "access_token": minted.access_token,
            "jti": minted.jti,
            "expires_at": minted.expires_at.isoformat(),
            "scopes": sorted(minted.scopes),
        }
        self.emit(options, data, minted.access_token)
