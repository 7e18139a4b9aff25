"""`make test` asks this first: are PostgreSQL and Redis reachable? If not, it stops at
once naming the missing service instead of failing a hundred tests one by one."""

from __future__ import annotations

import os
import sys

import psycopg
import redis


def main() -> int:
    database_url = os.environ["DATABASE_URL"]
    redis_url = os.environ["REDIS_URL"]
    missing = []
    try:
        # The server's maintenance database: the test database itself is created by pytest.
        with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", connect_timeout=3):
            pass
    except psycopg.Error as exc:
        missing.append(f"PostgreSQL at {database_url.split('@')[-1]} ({exc.__class__.__name__})")
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3).ping()
    except redis.RedisError as exc:
        missing.append(f"Redis at {redis_url.split('@')[-1]} ({exc.__class__.__name__})")
    for service in missing:
        print(f"error: the tests need {service}, which is not reachable", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
