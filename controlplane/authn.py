"""Checking platform and end-user credentials, with failures throttled per client id.

Every failure raises the same InvalidCredentials whatever was wrong, and costs the same
work (a missing account is compared against a dummy digest), so a caller learns nothing
about which part was wrong.
"""

from __future__ import annotations

import contextlib

from django.conf import settings

from audit.events import Action, Actor, record
from controlplane.credentials import UNKNOWN_ACCOUNT_DIGEST, secret_matches
from controlplane.errors import InvalidCredentials, ServiceUnavailable, Throttled
from controlplane.models import EndUser, Platform
from controlplane.ratelimit import Bucket, LimiterUnavailable, get_limiter


def _failure_bucket(client_id: str) -> Bucket:
    return Bucket(
        key=f"tp:authfail:{{{client_id[:64]}}}",
        limit=settings.TRADEPLANE_AUTH_FAILURE_LIMIT,
        window_seconds=settings.TRADEPLANE_AUTH_FAILURE_WINDOW_SECONDS,
    )


def _throttle_check(client_id: str, action: str) -> None:
    try:
        decision = get_limiter().hit([_failure_bucket(client_id)], consume=False)
    except LimiterUnavailable:
        # Without a working limiter guessing would be unbounded: refuse instead.
        raise ServiceUnavailable("Credential checks are unavailable; try again shortly.") from None
    if not decision.allowed:
        record(
            Action.AUTH_THROTTLED,
            actor=Actor.anonymous(),
            outcome="rate_limited",
            platform=client_id[:64],
            detail={"for": action},
        )
        raise Throttled(decision.retry_after)


def _fail(client_id: str, action: str, reason: str, user_id: str = "") -> InvalidCredentials:
    # Had the limiter been down the check above would have refused; a race here is harmless.
    with contextlib.suppress(LimiterUnavailable):
        get_limiter().hit([_failure_bucket(client_id)])
    record(
        action,
        actor=Actor.anonymous(),
        outcome="invalid_credentials",
        platform=client_id[:64],
        end_user=user_id[:128],
        detail={"reason": reason},
    )
    return InvalidCredentials()


def authenticate_platform(
    client_id: str, client_secret: str, *, action: str = Action.AUTH_FAILED
) -> Platform:
    """The active platform these credentials belong to, or InvalidCredentials/Throttled."""
    _throttle_check(client_id, action)
    platform = Platform.objects.filter(client_id=client_id).first() if client_id else None
    digest = platform.client_secret_digest if platform else UNKNOWN_ACCOUNT_DIGEST
    if not secret_matches(client_secret, digest) or platform is None:
        raise _fail(client_id, action, "unknown platform or wrong client secret")
    if not platform.is_active:
        raise _fail(client_id, action, "platform inactive")
    return platform


def authenticate_platform_user(
    client_id: str, client_secret: str, user_id: str, user_secret: str, *, action: str
) -> EndUser:
    """Platform and user credentials together, in one query on the success path."""
    _throttle_check(client_id, action)
    user = (
        EndUser.objects.live()
        .select_related("platform")
        .filter(platform__client_id=client_id, user_id=user_id)
        .first()
        if client_id
        else None
    )
    if user is None:
        # Tell nothing apart: check the platform alone (same work), then fail as a user miss.
        platform = authenticate_platform(client_id, client_secret, action=action)
        raise _fail(platform.client_id, action, "unknown user or wrong user secret", user_id)
    platform = user.platform
    platform_ok = secret_matches(client_secret, platform.client_secret_digest)
    user_ok = secret_matches(user_secret, user.user_secret_digest)
    if not platform_ok:
        raise _fail(client_id, action, "unknown platform or wrong client secret")
    if not platform.is_active:
        raise _fail(client_id, action, "platform inactive")
    if not user_ok:
        raise _fail(client_id, action, "unknown user or wrong user secret", user_id)
    if not user.is_active:
        raise _fail(client_id, action, "user inactive", user_id)
    return user
