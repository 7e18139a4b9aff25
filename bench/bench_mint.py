"""`make bench-mint`: how fast one server process mints end-user tokens.

Measures POST /auth/tokens/user against one uvicorn process on a fresh PostgreSQL database
and a flushed Redis database: sequential latency on one keep-alive connection, then
throughput with 8 and 32 concurrent clients, and the server's CPU time per token. Results
are printed and written to the "Token minting" section of docs/benchmarks.md.

The database named in DATABASE_URL is dropped and recreated, and dropped again at the end;
to keep that from ever hitting a real database, its name must contain "bench" and both
services must be on a loopback address.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
DOCS_FILE = REPO / "docs" / "benchmarks.md"
PYTHON = sys.executable
COMMAND = (
    "DATABASE_URL=postgres://postgres@127.0.0.1:5432/tradeplane_bench "
    "REDIS_URL=redis://127.0.0.1:6379/15 .venv/bin/python -m bench.bench_mint"
)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MINT_PATH = "/auth/tokens/user"
MINT_BODY = json.dumps({"scopes": ["read", "trade"]}).encode()

WARMUP_REQUESTS = 100
SEQUENTIAL_REQUESTS = 1000
CONCURRENT_REQUESTS = 2000
CONCURRENCY_LEVELS = (8, 32)

TARGET_P50_MS = 5.0
TARGET_TOKENS_PER_S = 300.0

SERVER_START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 120.0
PHASE_TIMEOUT_S = 180.0  # a phase stops early (and says so) past this
REQUEST_TIMEOUT_S = 10.0
MAX_ERROR_SAMPLES = 5

SECTION_HEADING = "## Token minting (make bench-mint)"
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
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        # Fields after the ")" closing the command name: state is field 3; utime, stime 14, 15.
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def can_pin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


@contextmanager
def running_server(env: dict[str, str], port: int, log_dir: Path) -> Iterator[Server]:
    command = [
        PYTHON, "-m", "uvicorn", "controlplane.asgi:application",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    pinned = can_pin()
    if pinned:
        command = ["taskset", "-c", "0", *command]
    stderr_path = log_dir / "server.stderr"
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


@dataclass(frozen=True)
class PhaseResult:
    name: str
    requests: int
    seconds: float
    latencies: Sequence[float]
    errors: int
    error_samples: Sequence[str]
    server_cpu_seconds: float
    timed_out: bool

    @property
    def tokens(self) -> int:
        return len(self.latencies)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, pct: float) -> float:
        return percentile(self.latencies, pct) * 1000

    @property
    def cpu_ms_per_token(self) -> float:
        return self.server_cpu_seconds * 1000 / self.tokens if self.tokens else 0.0


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(max(math.ceil(pct / 100 * len(ordered)), 1), len(ordered))
    return ordered[rank - 1]


def with_content_type(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Content-Type": "application/json"}


class Client:
    """One keep-alive connection minting tokens; reconnects after a failure."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.headers = with_content_type(headers)
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)

    def mint(self, tally: Tally) -> None:
        start = time.perf_counter()
        try:
            self.conn.request("POST", MINT_PATH, body=MINT_BODY, headers=self.headers)
            response = self.conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            tally.fail(f"{type(exc).__name__}: {exc}")
            self.conn.close()
            self.conn = self._connect()
            return
        elapsed = time.perf_counter() - start
        if response.status != 200:
            tally.fail(f"HTTP {response.status}: {body[:300]!r}")
        elif b'"access_token"' not in body:
            tally.fail(f"HTTP 200 without a token: {body[:300]!r}")
        else:
            tally.latencies.append(elapsed)
        if response.will_close:
            self.conn.close()
            self.conn = self._connect()

    def close(self) -> None:
        self.conn.close()


def check_one_token(port: int, headers: dict[str, str]) -> None:
    """Before timing anything: one mint must answer the documented shape."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("POST", MINT_PATH, body=MINT_BODY, headers=with_content_type(headers))
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"POST {MINT_PATH} answered {response.status}: {body[:500]!r}")
    data = json.loads(body)
    expected = {"token_type": "Bearer", "expires_in": 3600, "scopes": ["read", "trade"]}
    if {key: data.get(key) for key in expected} != expected or not data.get("access_token"):
        raise BenchError(f"POST {MINT_PATH} answered an unexpected body: {data!r}")


def run_phase(
    name: str, server: Server, headers: dict[str, str], *, total: int, clients: int
) -> PhaseResult:
    """`total` mints spread over `clients` threads, each on its own keep-alive connection."""
    shares = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    tallies = [Tally() for _ in range(clients)]
    connections = [Client(server.port, headers) for _ in range(clients)]
    start_line = threading.Barrier(clients + 1)
    deadline = [float("inf")]
    timed_out = threading.Event()

    def work(client: Client, tally: Tally, count: int) -> None:
        start_line.wait()
        for _ in range(count):
            if time.monotonic() > deadline[0]:
                timed_out.set()
                return
            client.mint(tally)

    threads = [
        threading.Thread(target=work, args=args, name=f"{name}-{i}", daemon=True)
        for i, args in enumerate(zip(connections, tallies, shares, strict=True))
    ]
    for thread in threads:
        thread.start()
    cpu_before = server.cpu_seconds()
    deadline[0] = time.monotonic() + PHASE_TIMEOUT_S
    started = time.perf_counter()
    start_line.wait()
    for thread in threads:
        thread.join(timeout=PHASE_TIMEOUT_S + 2 * REQUEST_TIMEOUT_S)
    seconds = time.perf_counter() - started
    cpu_after = server.cpu_seconds()
    if any(thread.is_alive() for thread in threads):
        raise BenchError(f"{name}: clients still running past the phase's time limit")
    for client in connections:
        client.close()
    return PhaseResult(
        name=name,
        requests=sum(len(t.latencies) + t.errors for t in tallies),
        seconds=seconds,
        latencies=[latency for t in tallies for latency in t.latencies],
        errors=sum(t.errors for t in tallies),
        error_samples=[sample for t in tallies for sample in t.error_samples][:MAX_ERROR_SAMPLES],
        server_cpu_seconds=cpu_after - cpu_before,
        timed_out=timed_out.is_set(),
    )


def pin_load_generator() -> bool:
    if not can_pin() or not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, {1})
    return True


def run_benchmark(server: Server, headers: dict[str, str]) -> list[PhaseResult]:
    check_one_token(server.port, headers)
    warmup = run_phase("warm-up", server, headers, total=WARMUP_REQUESTS, clients=1)
    if warmup.errors:
        raise BenchError(f"warm-up failed: {warmup.error_samples}\n{server.stderr_tail()}")
    results = [run_phase("sequential", server, headers, total=SEQUENTIAL_REQUESTS, clients=1)]
    for clients in CONCURRENCY_LEVELS:
        results.append(
            run_phase(
                f"{clients} clients", server, headers, total=CONCURRENT_REQUESTS, clients=clients
            )
        )
    return results


# ---- Reporting ---------------------------------------------------------------------------


def results_table(results: Sequence[PhaseResult]) -> str:
    rows = [
        "| phase | requests | tokens/s | p50 ms | p95 ms | p99 ms | server CPU ms/token | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        name = f"{r.name} (stopped at time limit)" if r.timed_out else r.name
        rows.append(
            f"| {name} | {r.requests} | {r.tokens_per_s:.0f} | {r.percentile_ms(50):.2f} "
            f"| {r.percentile_ms(95):.2f} | {r.percentile_ms(99):.2f} "
            f"| {r.cpu_ms_per_token:.2f} | {r.errors} |"
        )
    return "\n".join(rows)


def verdict(results: Sequence[PhaseResult]) -> str:
    sequential = results[0]
    best = max(results, key=lambda r: r.tokens_per_s)
    p50 = sequential.percentile_ms(50)
    p50_ok = p50 <= TARGET_P50_MS
    rate_ok = best.tokens_per_s >= TARGET_TOKENS_PER_S
    errors_ok = all(r.errors == 0 for r in results)
    met = p50_ok and rate_ok and errors_ok
    line = (
        f"Target: p50 ≤ {TARGET_P50_MS:g} ms (sequential) and ≥ {TARGET_TOKENS_PER_S:.0f} "
        f"tokens/s (best phase) on one server process, with no errors — "
        f"**{'met' if met else 'not met'}**: p50 {p50:.2f} ms "
        f"({'ok' if p50_ok else 'missed'}), {best.tokens_per_s:.0f} tokens/s with {best.name} "
        f"({'ok' if rate_ok else 'missed'})"
        + ("" if errors_ok else f", {sum(r.errors for r in results)} errors")
        + "."
    )
    return line


def section(results: Sequence[PhaseResult], *, pinned: bool) -> str:
    line = verdict(results)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    pinning = (
        "server pinned to CPU 0, load generator to CPU 1"
        if pinned
        else "not pinned (taskset or a second core missing)"
    )
    about = (
        f'`POST {MINT_PATH}` with `{{"scopes": ["read", "trade"]}}` against one uvicorn '
        f"process, a fresh PostgreSQL database and Redis. Sequential: one keep-alive "
        f"connection; concurrent: one keep-alive connection per client thread (stdlib "
        f"`http.client`). Latencies are client-side; server CPU is the user + system time "
        f"of the uvicorn process (all threads) divided by the tokens minted."
    )
    return (
        f"{SECTION_HEADING}\n\n"
        f"{wrap(about)}\n\n"
        f"- Date: {now}\n"
        f"- Python: {platform.python_version()} ({platform.python_implementation()})\n"
        f"- Command: `make bench-mint`, i.e. `{COMMAND}`\n"
        f"- CPUs: {pinning}\n\n"
        f"{results_table(results)}\n\n"
        f"{wrap(line)}\n"
    )


def wrap(paragraph: str) -> str:
    return textwrap.fill(paragraph, width=90, break_long_words=False, break_on_hyphens=False)


def replace_section(document: str, new_section: str) -> str:
    """`document` with the token-minting section replaced (or appended); the rest kept."""
    lines = document.splitlines(keepends=True)
    start = end = None
    in_fence = False
    for i, text in enumerate(lines):
        if text.lstrip().startswith("```"):
            in_fence = not in_fence
        if in_fence:
            continue
        if start is None and text.rstrip() == SECTION_HEADING:
            start = i
        elif start is not None and (text.startswith("## ") or text.startswith("# ")):
            end = i
            break
    if start is None:
        return document.rstrip("\n") + "\n\n" + new_section
    tail = "".join(lines[end:]) if end is not None else ""
    head = "".join(lines[:start])
    return head + new_section + ("\n" + tail if tail else "")


def write_docs(new_section: str) -> None:
    document = DOCS_FILE.read_text() if DOCS_FILE.exists() else DOCS_INTRO
    DOCS_FILE.parent.mkdir(parents=True, exist_ok=True)
    DOCS_FILE.write_text(replace_section(document, new_section))


# ---- Main --------------------------------------------------------------------------------


def with_services(database_url: str, redis_url: str, body: Callable[[], int]) -> int:
    drop_database(database_url, recreate=True)
    flush_redis(redis_url)
    try:
        return body()
    finally:
        drop_database(database_url, recreate=False)
        flush_redis(redis_url)


def bench(database_url: str, redis_url: str) -> int:
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as tmp:
        var_dir = Path(tmp)
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "TRADEPLANE_VAR_DIR": str(var_dir),
            "TRADEPLANE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "LOG_LEVEL": "WARNING",
        }
        print("setting up: migrate, create platform and user", flush=True)
        manage(env, "migrate", "--no-input", "-v0")
        created_platform = manage_json(env, "create_platform", "BenchCo", "--json")
        client_id = created_platform["client_id"]
        user = manage_json(
            env, "create_end_user", "--platform", client_id, "--user-id", "bench-user", "--json"
        )
        headers = {
            "client-id": client_id,
            "client-secret": created_platform["client_secret"],
            "user-id": user["user_id"],
            "user-secret": user["user_secret"],
        }
        print(f"starting uvicorn on 127.0.0.1:{port}", flush=True)
        with running_server(env, port, var_dir) as server:
            pinned = pin_load_generator() and server.pinned
            results = run_benchmark(server, headers)
            errors = sum(r.errors for r in results)
            server_log = server.stderr_tail() if errors else ""

    print()
    print(results_table(results))
    line = verdict(results)
    print()
    print(line.replace("**", ""))
    write_docs(section(results, pinned=pinned))
    print(f"\nwrote {DOCS_FILE.relative_to(REPO)}")
    if errors:
        print(f"\nerror: {errors} requests failed; first ones:", file=sys.stderr)
        for r in results:
            for sample in r.error_samples:
                print(f"  [{r.name}] {sample}", file=sys.stderr)
        if server_log:
            print(f"\nserver stderr (tail):\n{server_log}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    try:
        if not database_url or not redis_url:
            raise BenchError("DATABASE_URL and REDIS_URL must be set (see `make bench-mint`)")
        require_loopback("DATABASE_URL", database_url)
        require_loopback("REDIS_URL", redis_url)
        database_name(database_url)
        return with_services(database_url, redis_url, lambda: bench(database_url, redis_url))
    except (BenchError, psycopg.Error, redis.RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
