"""End users of a platform: creation (secret shown once), deletion, activation."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.events import Action, Actor, record
from controlplane.credentials import USER_SECRET_PREFIX, digest_secret, generate_secret
from controlplane.errors import Conflict, InvalidArgument
from controlplane.models import (
    ALL_SCOPES,
    BrokerConnection,
    EndUser,
    Platform,
    format_scopes,
    validate_user_id,
)
from controlplane.services.connections import revoke_connection
from controlplane.services.tokens import revoke_user_tokens


@dataclass(frozen=True)
class NewEndUser:
    end_user: EndUser
    user_secret: str  # shown once, never stored


def create_end_user(
    platform: Platform,
    *,
    user_id: str | None = None,
    scopes: frozenset[str] | None = None,
    actor: Actor,
) -> NewEndUser:
    user_id = user_id if user_id is not None else f"user_{secrets.token_hex(8)}"
    try:
        validate_user_id(user_id)
    except ValidationError:
        raise InvalidArgument(
            "user_id must be 1-128 characters of letters, digits and . _ @ : -"
        ) from None
    scopes = scopes if scopes is not None else platform.scopes
    if not scopes or not scopes <= ALL_SCOPES:
        raise InvalidArgument(f"scopes must be a non-empty subset of {format_scopes(ALL_SCOPES)}")
    secret = generate_secret(USER_SECRET_PREFIX)
    try:
        with transaction.atomic():
            user = EndUser.objects.create(
                platform=platform,
                user_id=user_id,
                user_secret_digest=digest_secret(secret),
                max_scopes=format_scopes(scopes),
            )
            record(
                Action.USER_CREATED,
                actor=actor,
                platform=platform.client_id,
                end_user=user_id,
                target=f"user:{user_id}",
                detail={"scopes": sorted(scopes)},
            )
    except IntegrityError:
        raise Conflict(f"user {user_id!r} already exists") from None
    return NewEndUser(user, secret)


def regenerate_user_secret(user: EndUser, *, actor: Actor) -> str:
    secret = generate_secret(USER_SECRET_PREFIX)
    with transaction.atomic():
        EndUser.objects.filter(pk=user.pk).update(user_secret_digest=digest_secret(secret))
        record(
            "user.secret_regenerated",
            actor=actor,
            platform=user.platform.client_id,
            end_user=user.user_id,
            target=f"user:{user.user_id}",
        )
    return secret


def delete_end_user(user: EndUser, *, actor: Actor) -> None:
    """Delete for the platform's purposes: tokens revoked, connections revoked, the user id
    free for reuse. The row stays (marked deleted) so trade and audit history stays whole."""
    for connection in BrokerConnection.objects.filter(end_user=user).exclude(
        status=BrokerConnection.Status.REVOKED
    ):
        revoke_connection(connection, actor=actor)
    with transaction.atomic():
        EndUser.objects.filter(pk=user.pk).update(deleted_at=timezone.now(), is_active=False)
        revoked = revoke_user_tokens(user, reason="user deleted", actor=actor)
        record(
            Action.USER_DELETED,
            actor=actor,
            platform=user.platform.client_id,
            end_user=user.user_id,
            target=f"user:{user.user_id}",
            detail={"tokens_revoked": revoked},
        )


def set_end_user_active(user: EndUser, active: bool, *, actor: Actor) -> bool:
    with transaction.atomic():
        changed = EndUser.objects.filter(pk=user.pk, is_active=not active).update(is_active=active)
        if changed:
            record(
                Action.USER_REACTIVATED if active else Action.USER_DEACTIVATED,
                actor=actor,
                platform=user.platform.client_id,
                end_user=user.user_id,
                target=f"user:{user.user_id}",
            )
    user.is_active = active
    return bool(changed)
