"""The shared Redis connection, when one is configured (REDIS_URL), with bounded timeouts."""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings


@cache
def get_redis() -> redis.Redis | None:
    if not settings.REDIS_URL:
        return None
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=settings.TRADEPLANE_REDIS_TIMEOUT,
        socket_connect_timeout=settings.TRADEPLANE_REDIS_TIMEOUT,
        health_check_interval=30,
    )
