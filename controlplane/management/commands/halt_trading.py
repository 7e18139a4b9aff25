from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.events import Actor
from controlplane.management.base import OperatorCommand
from controlplane.models import Platform
from controlplane.services.platforms import set_global_halt, set_trading_halted


class Command(OperatorCommand):
    help = "Halt trading for one platform (--platform) or for every platform (the kill switch)."
    halted = True

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--platform", metavar="CLIENT_ID")
        parser.add_argument("--reason", default="operator command")

    def handle(self, *args: Any, **options: Any) -> None:
        actor = Actor.operator(f"cli:{self.__module__.split('.')[-1]}")
        if options["platform"]:
            platform = Platform.objects.filter(client_id=options["platform"]).first()
            if platform is None:
                raise CommandError(f"no platform {options['platform']!r}")
            changed = set_trading_halted(
                platform, self.halted, reason=options["reason"], actor=actor
            )
            scope = platform.client_id
        else:
            changed = set_global_halt(self.halted, reason=options["reason"], actor=actor)
            scope = "all platforms"
        data = {"scope": scope, "halted": self.halted, "changed": changed}
        self.emit(
            options,
            data,
            f"trading {'halted' if self.halted else 'resumed'} for {scope}"
            f"{'' if changed else ' (already)'}",
        )
