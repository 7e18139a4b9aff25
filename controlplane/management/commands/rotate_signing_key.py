from typing import Any

from django.conf import settings

from audit.events import Actor
from controlplane.config import format_keyring
from controlplane.management.base import OperatorCommand
from controlplane.services.keys import new_keyring_value, rotate_embedded_signing_key


class Command(OperatorCommand):
    help = (
        "Start signing access tokens with a new Ed25519 key. Embedded mode rewrites "
        "var/secrets.json (restart the server to use it); production prints the new value "
        "of TRADEPLANE_JWT_KEYS to deploy."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PRODUCTION:
            value = format_keyring(new_keyring_value(settings.TRADEPLANE_JWT_KEYS, "jwt-"))
            self.emit(
                options,
                {"TRADEPLANE_JWT_KEYS": value},
                "Set this value everywhere, then restart (old keys stay for verification):\n"
                f"TRADEPLANE_JWT_KEYS={value}",
            )
            return
        kid = rotate_embedded_signing_key(actor=Actor.operator("cli:rotate_signing_key"))
        self.emit(
            options,
            {"signing_kid": kid},
            f"new signing key {kid}; restart the server to sign with it",
        )
