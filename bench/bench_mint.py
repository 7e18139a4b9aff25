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
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import redis

from bench.harness import (
    DOCS_FILE,
    MAX_ERROR_SAMPLES,
    REPO,
    BenchError,
    Server,
    Tally,
    free_port,
    manage,
    manage_json,
    percentile,
    pin_load_generator,
    running_server,
    services_from_env,
    with_services,
    wrap,
    write_docs,
)

COMMAND = (
    "DATABASE_URL=postgres://postgres@127.0.0.1:5432/tradeplane_bench "
    "REDIS_URL=redis://127.0.0.1:6379/15 .venv/bin/python -m bench.bench_mint"
)

MINT_PATH = "/auth/tokens/user"
MINT_BODY = json.dumps({"scopes": ["read", "trade"]}).encode()

WARMUP_REQUESTS = 100
SEQUENTIAL_REQUESTS = 1000
CONCURRENT_REQUESTS = 2000
CONCURRENCY_LEVELS = (8, 32)

TARGET_P50_MS = 5.0
TARGET_TOKENS_PER_S = 300.0

PHASE_TIMEOUT_S = 180.0  # a phase stops early (and says so) past this
REQUEST_TIMEOUT_S = 10.0

SECTION_HEADING = "## Token minting (make bench-mint)"


# ---- Load --------------------------------------------------------------------------------


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


# ---- Main --------------------------------------------------------------------------------


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
    write_docs(SECTION_HEADING, section(results, pinned=pinned))
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
    try:
        database_url, redis_url = services_from_env("bench-mint")
        return with_services(database_url, redis_url, lambda: bench(database_url, redis_url))
    except (BenchError, psycopg.Error, redis.RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
