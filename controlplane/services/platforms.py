"""Creating platforms and the operator switches on them (activation, the trading kill switch)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from audit.events import Action, Actor, record
from controlplane.credentials import (
    CLIENT_SECRET_PREFIX,
    digest_secret,
    generate_client_id,
    generate_secret,
)
from controlplane.errors import InvalidArgument
from controlplane.models import ALL_SCOPES, GlobalTradingHalt, Platform, format_scopes


@dataclass(frozen=True)
class NewPlatform:
    platform: Platform
    client_secret: str  # shown once, never stored


def create_platform(
    name: str, *, scopes: frozenset[str], actor: Actor, client_id: str | None = None
) -> NewPlatform:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidArgument("name must be 1-200 characters")
    if not scopes or not scopes <= ALL_SCOPES:
        raise InvalidArgument(f"scopes must be a non-empty subset of {format_scopes(ALL_SCOPES)}")
    secret = generate_secret(CLIENT_SECRET_PREFIX)
    with transaction.atomic():
        platform = Platform.objects.create(
            name=name,
            client_id=client_id or generate_client_id(),
            client_secret_digest=digest_secret(secret),
            allowed_scopes=format_scopes(scopes),
        )
        record(
            Action.PLATFORM_CREATED,
            actor=actor,
            platform=platform.client_id,
            target=f"platform:{platform.client_id}",
            detail={"name": name, "scopes": sorted(scopes)},
        )
    return NewPlatform(platform, secret)


def regenerate_client_secret(platform: Platform, *, actor: Actor) -> str:
    secret = generate_secret(CLIENT_SECRET_PREFIX)
    with transaction.atomic():
        Platform.objects.filter(pk=platform.pk).update(client_secret_digest=digest_secret(secret))
        record(
            "platform.secret_regenerated",
            actor=actor,
            platform=platform.client_id,
            target=f"platform:{platform.client_id}",
        )
    return secret


def set_platform_active(platform: Platform, active: bool, *, actor: Actor) -> bool:
    """Returns whether anything changed. Deactivation takes effect on the next request:
    token verification reads the flag every time."""
    with transaction.atomic():
        changed = Platform.objects.filter(pk=platform.pk, is_active=not active).update(
            is_active=active
        )
        if changed:
            record(
                Action.PLATFORM_REACTIVATED if active else Action.PLATFORM_DEACTIVATED,
                actor=actor,
                platform=platform.client_id,
                target=f"platform:{platform.client_id}",
            )
    platform.is_active = active
    return bool(changed)


def set_trading_halted(platform: Platform, halted: bool, *, reason: str, actor: Actor) -> bool:
    with transaction.atomic():
        changed = Platform.objects.filter(pk=platform.pk, trading_halted=not halted).update(
            trading_halted=halted,
            trading_halted_reason=reason[:500] if halted else "",
            trading_halted_at=timezone.now() if halted else None,
        )
        if changed:
            record(
                Action.TRADING_HALTED if halted else Action.TRADING_RESUMED,
                actor=actor,
                platform=platform.client_id,
                target=f"platform:{platform.client_id}",
                detail={"reason": reason},
            )
    platform.refresh_from_db()
    return bool(changed)


def set_global_halt(halted: bool, *, reason: str, actor: Actor) -> bool:
    """The kill switch for every platform: blocks the very next create and confirm."""
    with transaction.atomic():
        switch, _ = GlobalTradingHalt.objects.select_for_update().get_or_create(pk=1)
        if switch.halted == halted:
            return False
        switch.halted, switch.reason = halted, reason[:500] if halted else ""
        switch.save()
        record(
            Action.GLOBAL_TRADING_HALTED if halted else Action.GLOBAL_TRADING_RESUMED,
            actor=actor,
            target="system:trading",
            detail={"reason": reason},
        )
    return True
