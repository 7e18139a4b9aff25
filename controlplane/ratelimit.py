"""Sliding-window rate limits that hold across processes.

With Redis, one Lua script checks every bucket of a call and consumes them all only if
all allow it, using Redis's own clock; every key it writes gets a TTL in the same atomic
step, so a client dying mid-call can never leave a key that blocks forever. Without Redis
(embedded mode: one server process) an in-process limiter gives the same answers.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import redis

from controlplane.redis_client import get_redis


@dataclass(frozen=True)
class Bucket:
    key: str
    limit: int
    window_seconds: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until a call would be allowed; 0 when allowed


class LimiterUnavailable(Exception):
    """The shared limiter could not be asked (Redis down or slow)."""


class Limiter(Protocol):
    def hit(self, buckets: Sequence[Bucket], *, consume: bool = True) -> Decision: ...


# KEYS: bucket keys. ARGV: limit_1, window_us_1, ..., limit_n, window_us_n, consume, member.
SLIDING_WINDOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local consume = ARGV[2 * n + 1] == '1'
local wait = 0
for i = 1, n do
  local limit = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  if count >= limit then
    local idx = count - limit
    local entry = redis.call('ZRANGE', KEYS[i], idx, idx, 'WITHSCORES')
    local until_free = tonumber(entry[2]) + window - now
    if until_free > wait then wait = until_free end
  end
end
if wait > 0 then return {0, wait} end
if consume then
  for i = 1, n do
    redis.call('ZADD', KEYS[i], now, ARGV[2 * n + 2])
    redis.call('PEXPIRE', KEYS[i], math.ceil(tonumber(ARGV[2 * i]) / 1000))
  end
end
return {1, 0}
"""


class RedisLimiter:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.script = client.register_script(SLIDING_WINDOW_LUA)

    def hit(self, buckets: Sequence[Bucket], *, consume: bool = True) -> Decision:
        args: list[int | str] = []
        for bucket in buckets:
            args += [bucket.limit, bucket.window_seconds * 1_000_000]
        args += ["1" if consume else "0", uuid.uuid4().hex]
        try:
            allowed, wait_us = self.script(keys=[b.key for b in buckets], args=args)
        except redis.RedisError as exc:
            raise LimiterUnavailable(str(exc)) from exc
        return Decision(bool(allowed), _round_up(int(wait_us) / 1_000_000))


class LocalLimiter:
    """Exact sliding windows in this process only (embedded mode)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}

    def hit(self, buckets: Sequence[Bucket], *, consume: bool = True) -> Decision:
        now = time.monotonic()
        with self._lock:
            wait = 0.0
            for bucket in buckets:
                hits = self._hits.setdefault(bucket.key, deque())
                while hits and hits[0] <= now - bucket.window_seconds:
                    hits.popleft()
                if len(hits) >= bucket.limit:
                    wait = max(wait, hits[len(hits) - bucket.limit] + bucket.window_seconds - now)
            if wait > 0:
                return Decision(False, _round_up(wait))
            if consume:
                for bucket in buckets:
                    self._hits[bucket.key].append(now)
            return Decision(True, 0)


@cache
def get_limiter() -> Limiter:
    client = get_redis()
    return RedisLimiter(client) if client is not None else LocalLimiter()


def _round_up(seconds: float) -> float:
    return math.ceil(seconds * 1000) / 1000 if seconds > 0 else 0.0
