"""Secrets at rest: generated secrets only as keyed digests, broker credentials only as
ciphertext bound to their row, and key rotation that leaves every row readable."""

from __future__ import annotations

import io
import json
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from controlplane import encryption
from controlplane.credentials import digest_secret, secret_matches
from controlplane.models import BrokerConnection, EndUser, Platform
from controlplane.services.keys import reencrypt_credentials
from tests.conftest import OPERATOR, UserCreds

OAUTH = {"token": "canary-oauth-token-7f3a", "token_secret": "canary-oauth-secret-91bd"}


@pytest.fixture
def keys_reset() -> Iterator[None]:
    encryption.reset_cache()
    yield
    encryption.reset_cache()


def make_connection(user: UserCreds, credentials: dict[str, str] = OAUTH) -> BrokerConnection:
    connection_ = BrokerConnection.objects.create(
        end_user=user.user, broker="paper", environment="paper"
    )
    connection_.set_credentials(credentials)
    connection_.save()
    return connection_


def dump_database() -> str:
    """Every text column of every row of our tables, as a database dump would show them."""
    chunks = []
    with connection.cursor() as cursor:
        for model in (Platform, EndUser, BrokerConnection):
            cursor.execute(f"SELECT * FROM {model._meta.db_table}")  # noqa: S608
            chunks.append(repr(cursor.fetchall()))
        cursor.execute("SELECT * FROM audit_auditevent")
        chunks.append(repr(cursor.fetchall()))
    return "\n".join(chunks)


def test_generated_secrets_are_prefixed_and_stored_only_as_digests(alice: UserCreds) -> None:
    assert alice.platform.client_secret.startswith("tp_cs_")
    assert alice.user_secret.startswith("tp_us_")
    assert len(alice.user_secret) >= 6 + 43  # 256 bits of entropy
    dump = dump_database()
    assert alice.platform.client_secret not in dump
    assert alice.user_secret not in dump
    assert digest_secret(alice.user_secret) in dump
    assert alice.user.user_secret_digest == digest_secret(alice.user_secret)


def test_digests_are_keyed(alice: UserCreds) -> None:
    import hashlib

    assert alice.user.user_secret_digest != hashlib.sha256(alice.user_secret.encode()).hexdigest()
    with override_settings(TRADEPLANE_HASH_KEY=secrets.token_bytes(32)):
        assert not secret_matches(alice.user_secret, alice.user.user_secret_digest)


def test_comparison_is_constant_time() -> None:
    """secret_matches must go through hmac.compare_digest, never ==."""
    import inspect

    from controlplane import credentials

    assert "hmac.compare_digest" in inspect.getsource(credentials.secret_matches)


def test_broker_credentials_are_stored_only_as_ciphertext(
    alice: UserCreds, keys_reset: None
) -> None:
    connection_ = make_connection(alice)
    dump = dump_database()
    assert OAUTH["token"] not in dump
    assert OAUTH["token_secret"] not in dump
    stored = BrokerConnection.objects.get(pk=connection_.pk)
    assert stored.credentials_ciphertext.startswith("v1.")
    assert stored.get_credentials() == OAUTH


def test_a_ciphertext_moved_to_another_row_is_refused(
    alice: UserCreds, bob: UserCreds, keys_reset: None
) -> None:
    victim = make_connection(alice)
    thief = make_connection(bob, {"token": "bobs", "token_secret": "bobs-secret"})
    BrokerConnection.objects.filter(pk=thief.pk).update(
        credentials_ciphertext=victim.credentials_ciphertext
    )
    thief.refresh_from_db()
    with pytest.raises(encryption.DecryptionError):
        thief.get_credentials()


def test_a_tampered_ciphertext_is_refused(alice: UserCreds, keys_reset: None) -> None:
    connection_ = make_connection(alice)
    token = connection_.credentials_ciphertext
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    connection_.credentials_ciphertext = flipped
    with pytest.raises(encryption.DecryptionError):
        connection_.get_credentials()
    connection_.credentials_ciphertext = "v1.nokey.AAAA"
    with pytest.raises(encryption.DecryptionError):
        connection_.get_credentials()


def test_rotation_reencrypts_every_row_and_the_old_key_can_go(
    alice: UserCreds, bob: UserCreds, settings, keys_reset: None
) -> None:
    old_key = settings.TRADEPLANE_ENCRYPTION_KEYS[0]
    rows = [make_connection(alice), make_connection(bob), make_connection(alice)]
    new_key = ("enc-new", secrets.token_bytes(32))
    settings.TRADEPLANE_ENCRYPTION_KEYS = [new_key, old_key]
    encryption.reset_cache()
    report = reencrypt_credentials(actor=OPERATOR)
    assert (report.rows, report.rewritten, report.unreadable) == (3, 3, [])
    # Running it again rewrites nothing.
    assert reencrypt_credentials(actor=OPERATOR).rewritten == 0
    settings.TRADEPLANE_ENCRYPTION_KEYS = [new_key]
    encryption.reset_cache()
    for row in rows:
        stored = BrokerConnection.objects.get(pk=row.pk)
        assert encryption.key_id_of(stored.credentials_ciphertext) == "enc-new"
        assert stored.get_credentials() == OAUTH


def test_rotate_encryption_key_command_in_embedded_mode(
    alice: UserCreds, settings, tmp_path, keys_reset: None
) -> None:
    from controlplane.config import EmbeddedSecrets, format_keyring

    settings.VAR_DIR = tmp_path
    store = EmbeddedSecrets(tmp_path / "secrets.json")
    values = store.load()
    values["TRADEPLANE_ENCRYPTION_KEYS"] = format_keyring(settings.TRADEPLANE_ENCRYPTION_KEYS)
    store.save(values)
    row = make_connection(alice)
    out = io.StringIO()
    call_command("rotate_encryption_key", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["rewritten"] == 1
    assert report["active_kid"] != encryption.key_id_of(row.credentials_ciphertext)
    assert json.loads((tmp_path / "secrets.json").read_text())[
        "TRADEPLANE_ENCRYPTION_KEYS"
    ].startswith(report["active_kid"] + ":")
    assert BrokerConnection.objects.get(pk=row.pk).get_credentials() == OAUTH


def test_no_secret_reaches_the_logs(alice: UserCreds, client, capfd) -> None:
    """A canary secret in a request's credentials appears nowhere in what we print."""
    client.post(
        "/auth/tokens/user",
        {"scopes": ["read"]},
        content_type="application/json",
        headers={**alice.mint_headers(), "user-secret": "tp_us_CANARYCANARYCANARY"},
    )
    import logging

    logging.getLogger("tradeplane.test").warning(
        "token was %s and secret %s", "eyJhbGciOi.eyJzdWIi.c2ln", alice.user_secret
    )
    captured = capfd.readouterr()
    assert "CANARYCANARYCANARY" not in captured.err + captured.out
    assert alice.user_secret not in captured.err + captured.out
    assert "eyJhbGciOi.eyJzdWIi" not in captured.err + captured.out


def test_secrets_file_is_private(tmp_path) -> None:
    from controlplane.config import EmbeddedSecrets

    EmbeddedSecrets(tmp_path / "secrets.json").load()
    mode = (tmp_path / "secrets.json").stat().st_mode & 0o777
    assert mode == 0o600
    listing = subprocess.run(["ls", "-l", str(tmp_path)], capture_output=True, text=True).stdout
    assert "rw-------" in listing
