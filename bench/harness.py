"""What every `make bench-*` script shares: the bench database and Redis, manage.py
commands, one pinned uvicorn process with its CPU time, percentiles, and the sections of
docs/benchmarks.md.

The database named in DATABASE_URL is dropped and recreated, and dropped again at the end;
to keep that from ever hitting a real database, its name must contain "bench" and both
services must be on a loopback address.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
DOCS_FILE = REPO / "docs" / "benchmarks.md"
PYTHON = sys.executable
APPLICATION = "controlplane.asgi:application"

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SERVER_START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 120.0
MAX_ERROR_SAMPLES = 5

DOCS_INTRO = """\
# Benchmarks

Figures come from scripts under `bench/`, each run by a `make bench-*` target against real
PostgreSQL and Redis on the development VM. The machine has 2 cores: the server process is
pinned to one (`taskset -c 0`) and the load generator to the other; PostgreSQL and Redis
are not pinned and share both. Figures drift by about ±30% from run to run on this VM, so
compare numbers taken within one run rather than across runs.
"""


class BenchError(Exception):
    """The benchmark could not be set up or run; the message says what failed."""


# ---- Services ----------------------------------------------------------------------------


def require_loopback(name: str, url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK_HOSTS:
        raise BenchError(f"{name} must point at a loopback address, got host {host!r}")


def database_name(database_url: str) -> str:
    name = urlsplit(database_url).path.lstrip("/")
    if not name or "bench" not in name:
        raise BenchError(
            f"refusing to drop database {name!r}: the bench database's name must contain 'bench'"
        )
    return name


def maintenance_url(database_url: str) -> str:
    return urlunsplit(urlsplit(database_url)._replace(path="/postgres"))


def drop_database(database_url: str, *, recreate: bool) -> None:
    name = database_name(database_url)
    with psycopg.connect(maintenance_url(database_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        if recreate:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def flush_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.flushdb()
    finally:
        client.close()


def with_services(database_url: str, redis_url: str, body: Callable[[], int]) -> int:
    """A fresh bench database and an empty Redis database around `body`, dropped after."""
    drop_database(database_url, recreate=True)
    flush_redis(redis_url)
    try:
        return body()
    finally:
        drop_database(database_url, recreate=False)
        flush_redis(redis_url)


def services_from_env(make_target: str) -> tuple[str, str]:
    """DATABASE_URL and REDIS_URL, checked: loopback only, and a database named *bench*."""
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    if not database_url or not redis_url:
        raise BenchError(f"DATABASE_URL and REDIS_URL must be set (see `make {make_target}`)")
    require_loopback("DATABASE_URL", database_url)
    require_loopback("REDIS_URL", redis_url)
    database_name(database_url)
    return database_url, redis_url


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def manage(env: dict[str, str], *args: str) -> str:
    """Run a manage.py command; its stdout, or BenchError with its stderr."""
    try:
        done = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"manage.py {args[0]} ran past {COMMAND_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"manage.py {args[0]} failed ({done.returncode}):\n{done.stderr.strip()}")
    return done.stdout


def manage_json(env: dict[str, str], *args: str) -> dict[str, str]:
    output = manage(env, *args)
    try:
        data: dict[str, str] = json.loads(output)
    except json.JSONDecodeError:
        raise BenchError(f"manage.py {args[0]} printed no JSON: {output!r}") from None
    return data


# ---- The server --------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the ")" closing the command name: state is field 3; utime, stime 14, 15.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    pinned: bool

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process, all its threads included."""
        return process_cpu_seconds(self.process.pid)


def can_pin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


@contextmanager
def running_server(
    env: dict[str, str],
    port: int,
    log_dir: Path,
    *,
    app: str = APPLICATION,
    log_name: str = "server.stderr",
) -> Iterator[Server]:
    """One uvicorn process serving `app` (pinned to CPU 0 when it can be), killed on exit."""
    command = [
        PYTHON, "-m", "uvicorn", app,
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    pinned = can_pin()
    if pinned:
        command = ["taskset", "-c", "0", *command]
    stderr_path = log_dir / log_name
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
        )
    server = Server(process, port, stderr_path, pinned)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(
                f"the server exited with {server.process.returncode} while starting:\n"
                f"{server.stderr_tail()}"
            )
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise BenchError(
        f"GET /healthz did not answer 200 within {SERVER_START_TIMEOUT_S:.0f} s:\n"
        f"{server.stderr_tail()}"
    )


def pin_load_generator() -> bool:
    if not can_pin() or not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, {1})
    return True


# ---- Load --------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one client saw: a latency per successful request, and the failures."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(what)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(max(math.ceil(pct / 100 * len(ordered)), 1), len(ordered))
    return ordered[rank - 1]


# ---- docs/benchmarks.md ------------------------------------------------------------------


def wrap(paragraph: str) -> str:
    return textwrap.fill(paragraph, width=90, break_long_words=False, break_on_hyphens=False)


def replace_section(document: str, heading: str, new_section: str) -> str:
    """`document` with the section under `heading` replaced (or appended); the rest kept."""
    lines = document.splitlines(keepends=True)
    start = end = None
    in_fence = False
    for i, text in enumerate(lines):
        if text.lstrip().startswith("```"):
            in_fence = not in_fence
        if in_fence:
            continue
        if start is None and text.rstrip() == heading:
            start = i
        elif start is not None and (text.startswith("## ") or text.startswith("# ")):
            end = i
            break
    if start is None:
        return document.rstrip("\n") + "\n\n" + new_section
    tail = "".join(lines[end:]) if end is not None else ""
    head = "".join(lines[:start])
    return head + new_section + ("\n" + tail if tail else "")


def write_docs(heading: str, new_section: str) -> None:
    document = DOCS_FILE.read_text() if DOCS_FILE.exists() else DOCS_INTRO
    DOCS_FILE.parent.mkdir(parents=True, exist_ok=True)
    DOCS_FILE.write_text(replace_section(document, heading, new_section))
