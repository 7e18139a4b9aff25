"""Rotation of the JWT signing keys and the credential encryption keys.

In production the keys live in the environment, so rotation is: put a new key first in
the variable (the commands print one), restart, then re-encrypt. In embedded mode the
commands rewrite var/secrets.json themselves.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from audit.events import Action, Actor, record
from controlplane import accesstokens, encryption
from controlplane.config import EmbeddedSecrets, format_keyring, new_key_id
from controlplane.models import BrokerConnection, IssuedToken
from controlplane.services import webhooks


def new_keyring_value(current: list[tuple[str, bytes]], prefix: str) -> list[tuple[str, bytes]]:
    return [(new_key_id(prefix), secrets.token_bytes(32)), *current]


def _embedded_store() -> EmbeddedSecrets:
    return EmbeddedSecrets(settings.VAR_DIR / "secrets.json")


def rotate_embedded_signing_key(*, actor: Actor) -> str:
    """Sign with a new key from now on; older keys keep verifying the tokens they signed."""
    keys = new_keyring_value(settings.TRADEPLANE_JWT_KEYS, "jwt-")
    # Keys with no unexpired token left are dropped: nothing needs them any more.
    live_kids = set(IssuedToken.objects.unexpired().values_list("key_id", flat=True))
    keys = [keys[0], *[(kid, key) for kid, key in keys[1:] if kid in live_kids]]
    store = _embedded_store()
    values = store.load()
    values["TRADEPLANE_JWT_KEYS"] = format_keyring(keys)
    store.save(values)
    settings.TRADEPLANE_JWT_KEYS = keys
    accesstokens.reset_key_cache()
    record(
        Action.SIGNING_KEY_ROTATED,
        actor=actor,
        detail={"new_kid": keys[0][0], "kept": [kid for kid, _ in keys[1:]]},
    )
    return keys[0][0]


def add_embedded_encryption_key() -> str:
    keys = new_keyring_value(settings.TRADEPLANE_ENCRYPTION_KEYS, "enc-")
    store = _embedded_store()
    values = store.load()
    values["TRADEPLANE_ENCRYPTION_KEYS"] = format_keyring(keys)
    store.save(values)
    settings.TRADEPLANE_ENCRYPTION_KEYS = keys
    encryption.reset_cache()
    return keys[0][0]


@dataclass(frozen=True)
class ReencryptionReport:
    active_kid: str
    rows: int
    rewritten: int
    unreadable: list[str]


def reencrypt_credentials(*, actor: Actor) -> ReencryptionReport:
    """Rewrite every stored credential under the active (first) key, row by row."""
    active = encryption.active_key_id()
    rows = rewritten = 0
    unreadable: list[str] = []
    candidates = BrokerConnection.objects.exclude(credentials_ciphertext="").values_list(
        "pk", flat=True
    )
    for pk in candidates.iterator():
        with transaction.atomic():
            connection = BrokerConnection.objects.select_for_update().get(pk=pk)
            rows += 1
            if encryption.key_id_of(connection.credentials_ciphertext) == active:
                continue
            try:
                credentials = connection.get_credentials()
            except encryption.DecryptionError:
                unreadable.append(str(pk))
                continue
            connection.set_credentials(credentials)
            connection.save(update_fields=["credentials_ciphertext"])
            rewritten += 1
    # Webhook signing secrets are encrypted under the same keys.
    webhook_rows, webhook_rewritten = webhooks.reencrypt_signing_secrets()
    rows += webhook_rows
    rewritten += webhook_rewritten
    record(
        Action.ENCRYPTION_KEY_ROTATED,
        actor=actor,
        outcome="ok" if not unreadable else "partial",
        detail={
            "active_kid": active,
            "rows": rows,
            "rewritten": rewritten,
            "unreadable": unreadable,
        },
    )
    return ReencryptionReport(active, rows, rewritten, unreadable)
