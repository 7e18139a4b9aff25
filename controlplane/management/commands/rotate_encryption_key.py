from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from audit.events import Actor
from controlplane.config import format_keyring
from controlplane.management.base import OperatorCommand
from controlplane.services.keys import (
    add_embedded_encryption_key,
    new_keyring_value,
    reencrypt_credentials,
)


class Command(OperatorCommand):
    help = (
        "Re-encrypt every broker credential under the active (first) encryption key. "
        "Embedded mode first adds a new key to var/secrets.json. In production, --generate "
        "prints a new TRADEPLANE_ENCRYPTION_KEYS value to deploy before re-encrypting."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--generate", action="store_true", help="production: print a new key list and stop"
        )
        parser.add_argument(
            "--reencrypt-only", action="store_true", help="embedded: keep the current active key"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["generate"]:
            value = format_keyring(new_keyring_value(settings.TRADEPLANE_ENCRYPTION_KEYS, "enc-"))
            self.emit(
                options,
                {"TRADEPLANE_ENCRYPTION_KEYS": value},
                f"Deploy, restart, then run this command again:\n"
                f"TRADEPLANE_ENCRYPTION_KEYS={value}",
            )
            return
        if not settings.PRODUCTION and not options["reencrypt_only"]:
            add_embedded_encryption_key()
        report = reencrypt_credentials(actor=Actor.operator("cli:rotate_encryption_key"))
        data = {
            "active_kid": report.active_kid,
            "rows": report.rows,
            "rewritten": report.rewritten,
            "unreadable": report.unreadable,
        }
        self.emit(
            options,
            data,
            f"{report.rewritten} of {report.rows} credentials re-encrypted "
            f"under {report.active_kid}",
        )
        if report.unreadable:
            raise CommandError(f"{len(report.unreadable)} credential(s) could not be decrypted")
