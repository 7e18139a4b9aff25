"""`make bench-mcp`: what Tradeplane adds to an MCP tool call, against a bare MCP server.

Two servers, each one uvicorn process pinned to CPU 0, run one at a time:

- full: Tradeplane itself (controlplane.asgi:application) answering `get_quotes` with
  {"symbols": ["AAPL"]}: the access token verified against the database (and Redis for
  revocation), the scope check, the Redis rate limiter, one audit row, a paper-broker quote;
- bare: bench/bare_server.py, the MCP SDK's app with one no-op async tool and a verifier
  that only checks the same EdDSA token's signature and claims.

A raw JSON-RPC client (stdlib http.client, pinned to CPU 1) calls them in both protocol
eras: 2026-07-28 (sessionless) and 2025-11-25 (initialize, then calls), sequentially and
with 20 concurrent clients. Server modes, servers and repetitions are interleaved; each
figure in the report is the median over the repetitions. The number that matters is the
server's CPU time per call (stabler than rates on this VM) and its ratio full/bare. Also
measured: the size of a full-scope tools/list answer. Results are printed and written to
the "MCP tool calls" section of docs/benchmarks.md.

The database named in DATABASE_URL is dropped and recreated, and dropped again at the end;
its name must contain "bench" and both services must be on a loopback address.
"""

from __future__ import annotations

import base64
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.harness import (
    DOCS_FILE,
    MAX_ERROR_SAMPLES,
    REPO,
    BenchError,
    Server,
    Tally,
    flush_redis,
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
    "REDIS_URL=redis://127.0.0.1:6379/15 .venv/bin/python -m bench.bench_mcp"
)
SECTION_HEADING = "## MCP tool calls (make bench-mcp)"

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ERAS = (MODERN, LEGACY)
FULL = "full"
BARE = "bare"

REPETITIONS = 3
WARMUP_CALLS = 20
SEQUENTIAL_CALLS = 500
CONCURRENT_CLIENTS = 20
CALLS_PER_CLIENT = 100

# Tradeplane caps its per-user limit at 100,000 calls a minute: far above what one process
# answers here, so the limiter runs on every call and never refuses.
RATE_LIMIT_PER_MINUTE = "100000"

TARGET_CPU_RATIO = 2.0
TARGET_TOOLS_LIST_BYTES = 20_000

PHASE_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 10.0
MCP_PATH = "/mcp"
QUOTE_ARGUMENTS = {"symbols": ["AAPL"]}
CALL_OK = b'"isError":false'
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


@dataclass(frozen=True)
class Mode:
    name: str
    stateless: bool
    json_response: bool

    def env(self) -> dict[str, str]:
        return {
            "TRADEPLANE_MCP_STATELESS": str(self.stateless).lower(),
            "TRADEPLANE_MCP_JSON_RESPONSE": str(self.json_response).lower(),
        }


MODES = (Mode("stateless JSON", True, True), Mode("stateful SSE", False, False))


@dataclass(frozen=True)
class Target:
    """A server under test and the call it is asked to make."""

    name: str
    app: str
    tool: str
    arguments: dict[str, Any]


TARGETS = {
    FULL: Target(FULL, "controlplane.asgi:application", "get_quotes", QUOTE_ARGUMENTS),
    BARE: Target(BARE, "bench.bare_server:app", "noop", QUOTE_ARGUMENTS),
}


# ---- The client --------------------------------------------------------------------------


def sse_data(body: bytes) -> bytes:
    """The JSON of a response, whether sent as JSON or as an SSE stream of one message."""
    if body.lstrip().startswith(b"{"):
        return body
    for line in body.splitlines():
        if line.startswith(b"data:") and b'"jsonrpc"' in line:
            return line[5:].strip()
    return body


class McpClient:
    """One keep-alive connection speaking raw JSON-RPC to /mcp in one protocol era."""

    def __init__(self, port: int, token: str, era: str, target: Target) -> None:
        self.port = port
        self.era = era
        self.target = target
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        if era == MODERN:
            self.headers["Mcp-Protocol-Version"] = MODERN
        self.session_id: str | None = None
        self.next_id = 0
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)

    def post(
        self, message: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPResponse, bytes]:
        """POST one JSON-RPC message; reconnects (and raises) when the connection fails."""
        try:
            self.conn.request(
                "POST",
                MCP_PATH,
                body=json.dumps(message, separators=(",", ":")).encode(),
                headers={**self.headers, **(headers or {})},
            )
            response = self.conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = self._connect()
            raise
        if response.will_close:
            self.conn.close()
            self.conn = self._connect()
        return response.status, response, body

    def send(self, method: str, params: dict[str, Any], name: str = "") -> tuple[int, bytes]:
        """One JSON-RPC request; in 2026-07-28 with its `_meta` and Mcp-Method/Mcp-Name."""
        self.next_id += 1
        headers = {}
        if self.era == MODERN:
            params = {**params, "_meta": MODERN_META}
            headers["Mcp-Method"] = method
            if name:
                headers["Mcp-Name"] = name
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        status, _, body = self.post(message, headers)
        return status, body

    def open(self) -> None:
        """2025-11-25: initialize (keeping the session id, if the server gives one), then
        notifications/initialized. 2026-07-28 needs nothing."""
        if self.era == MODERN:
            return
        status, response, body = self.post(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": LEGACY,
                    "capabilities": {},
                    "clientInfo": {"name": "bench-mcp", "version": "1.0"},
                },
            }
        )
        if status != 200 or b'"result"' not in body:
            raise BenchError(f"initialize answered {status}: {body[:500]!r}")
        self.session_id = response.getheader("mcp-session-id")
        self.headers["Mcp-Protocol-Version"] = LEGACY
        if self.session_id:
            self.headers["Mcp-Session-Id"] = self.session_id
        status, _, body = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if status not in (200, 202):
            raise BenchError(f"notifications/initialized answered {status}: {body[:500]!r}")

    def call_tool(self) -> tuple[int, bytes]:
        return self.send(
            "tools/call",
            {"name": self.target.tool, "arguments": self.target.arguments},
            self.target.tool,
        )

    def timed_call(self, tally: Tally) -> bool:
        start = time.perf_counter()
        try:
            status, body = self.call_tool()
        except (OSError, http.client.HTTPException) as exc:
            tally.fail(f"{type(exc).__name__}: {exc}")
            return False
        elapsed = time.perf_counter() - start
        if status != 200:
            tally.fail(f"HTTP {status}: {body[:300]!r}")
        elif CALL_OK not in body:
            tally.fail(f"not a successful tool result: {body[:300]!r}")
        else:
            tally.latencies.append(elapsed)
            return True
        return False

    def close(self) -> None:
        if self.session_id:
            try:
                self.conn.request("DELETE", MCP_PATH, headers=self.headers)
                self.conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                pass
        self.conn.close()


def check_one_call(port: int, token: str, era: str, target: Target) -> None:
    """Before timing anything: one call must answer a real, successful tool result."""
    client = McpClient(port, token, era, target)
    try:
        client.open()
        status, body = client.call_tool()
    finally:
        client.close()
    if status != 200:
        raise BenchError(f"{target.name} {era}: tools/call answered {status}: {body[:500]!r}")
    data = json.loads(sse_data(body))
    result = data.get("result") or {}
    if result.get("isError") is not False or "structuredContent" not in result:
        raise BenchError(f"{target.name} {era}: tools/call did not succeed: {data!r}")
    if target.name == FULL:
        quotes = result["structuredContent"].get("data") or []
        if not quotes or quotes[0].get("symbol") != "AAPL":
            raise BenchError(f"{target.name} {era}: no AAPL quote in {data!r}")


def tools_list_bytes(port: int, token: str, era: str, target: Target) -> tuple[int, int]:
    """The size of a tools/list answer (HTTP body bytes) and how many tools it lists."""
    client = McpClient(port, token, era, target)
    try:
        client.open()
        status, body = client.send("tools/list", {})
    finally:
        client.close()
    if status != 200:
        raise BenchError(f"tools/list answered {status}: {body[:500]!r}")
    tools = json.loads(sse_data(body)).get("result", {}).get("tools")
    if not tools:
        raise BenchError(f"tools/list answered no tools: {body[:500]!r}")
    return len(body), len(tools)


# ---- Phases ------------------------------------------------------------------------------


def services_cpu_seconds() -> float:
    """User + system CPU of every PostgreSQL and Redis process on this machine."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        if name in ("postgres", "redis-server"):
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Key:
    """What a figure is about: server mode, server, protocol era, concurrent clients."""

    mode: str
    server: str
    era: str
    clients: int

    def __str__(self) -> str:
        return f"{self.mode} | {self.server} | {self.era} | {self.clients} client(s)"


@dataclass(frozen=True)
class PhaseResult:
    key: Key
    seconds: float
    latencies: Sequence[float]
    server_cpu_seconds: float
    services_cpu_seconds: float
    client_cpu_seconds: float

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, pct: float) -> float:
        return percentile(self.latencies, pct) * 1000

    def per_call_ms(self, seconds: float) -> float:
        return seconds * 1000 / self.calls if self.calls else 0.0

    @property
    def server_cpu_ms(self) -> float:
        return self.per_call_ms(self.server_cpu_seconds)


def run_phase(
    server: Server, clients: Sequence[McpClient], calls_each: int, key: Key, label: str
) -> PhaseResult:
    """`calls_each` calls on every client, each client in its own thread; stops all
    clients at the first failure and raises BenchError naming it."""
    tallies = [Tally() for _ in clients]
    start_line = threading.Barrier(len(clients) + 1)
    failed = threading.Event()
    deadline = [float("inf")]

    def work(client: McpClient, tally: Tally) -> None:
        start_line.wait()
        for _ in range(calls_each):
            if failed.is_set():
                return
            if time.monotonic() > deadline[0]:
                tally.fail(f"phase ran past {PHASE_TIMEOUT_S:.0f} s")
            elif client.timed_call(tally):
                continue
            failed.set()
            return

    threads = [
        threading.Thread(target=work, args=(c, t), name=f"{label}-{i}", daemon=True)
        for i, (c, t) in enumerate(zip(clients, tallies, strict=True))
    ]
    for thread in threads:
        thread.start()
    server_before, services_before = server.cpu_seconds(), services_cpu_seconds()
    own_before = own_cpu_seconds()
    deadline[0] = time.monotonic() + PHASE_TIMEOUT_S
    started = time.perf_counter()
    start_line.wait()
    for thread in threads:
        thread.join(timeout=PHASE_TIMEOUT_S + 2 * REQUEST_TIMEOUT_S)
    seconds = time.perf_counter() - started
    server_cpu = server.cpu_seconds() - server_before
    services_cpu = services_cpu_seconds() - services_before
    client_cpu = own_cpu_seconds() - own_before
    if any(thread.is_alive() for thread in threads):
        raise BenchError(f"{key} {label}: clients still running past the phase's time limit")
    errors = sum(t.errors for t in tallies)
    if errors:
        samples = [s for t in tallies for s in t.error_samples][:MAX_ERROR_SAMPLES]
        raise BenchError(
            f"{key} {label}: {errors} failed call(s), so nothing more is timed; first ones:\n  "
            + "\n  ".join(samples)
            + f"\nserver stderr (tail):\n{server.stderr_tail()}"
        )
    return PhaseResult(
        key=key,
        seconds=seconds,
        latencies=[latency for t in tallies for latency in t.latencies],
        server_cpu_seconds=server_cpu,
        services_cpu_seconds=services_cpu,
        client_cpu_seconds=client_cpu,
    )


@contextmanager
def open_clients(
    count: int, port: int, token: str, era: str, target: Target
) -> Iterator[list[McpClient]]:
    clients: list[McpClient] = []
    try:
        for _ in range(count):
            clients.append(McpClient(port, token, era, target))
            clients[-1].open()
        yield clients
    finally:
        for client in clients:
            client.close()


def measure_era(
    server: Server, target: Target, mode: Mode, era: str, token: str
) -> list[PhaseResult]:
    """Sequential, then concurrent load on one server in one era, each after a warm-up."""
    check_one_call(server.port, token, era, target)
    results = []
    with open_clients(1, server.port, token, era, target) as clients:
        key = Key(mode.name, target.name, era, 1)
        run_phase(server, clients, WARMUP_CALLS, key, "warm-up")
        results.append(run_phase(server, clients, SEQUENTIAL_CALLS, key, "timed"))
    with open_clients(CONCURRENT_CLIENTS, server.port, token, era, target) as clients:
        key = Key(mode.name, target.name, era, CONCURRENT_CLIENTS)
        run_phase(server, clients, 1, key, "warm-up")
        results.append(run_phase(server, clients, CALLS_PER_CLIENT, key, "timed"))
    return results


# ---- Reporting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """One key's figures over the repetitions: medians, and the range of the CPU figure."""

    key: Key
    runs: int
    calls: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms: float
    server_cpu_ms_min: float
    server_cpu_ms_max: float
    services_cpu_ms: float
    client_cpu_ms: float


def summarize(results: Sequence[PhaseResult]) -> dict[Key, Summary]:
    groups: dict[Key, list[PhaseResult]] = {}
    for result in results:
        groups.setdefault(result.key, []).append(result)
    summaries = {}
    for key, runs in groups.items():
        cpu = [r.server_cpu_ms for r in runs]
        summaries[key] = Summary(
            key=key,
            runs=len(runs),
            calls=runs[0].calls,
            calls_per_s=statistics.median(r.calls_per_s for r in runs),
            p50_ms=statistics.median(r.percentile_ms(50) for r in runs),
            p99_ms=statistics.median(r.percentile_ms(99) for r in runs),
            server_cpu_ms=statistics.median(cpu),
            server_cpu_ms_min=min(cpu),
            server_cpu_ms_max=max(cpu),
            services_cpu_ms=statistics.median(r.per_call_ms(r.services_cpu_seconds) for r in runs),
            client_cpu_ms=statistics.median(r.per_call_ms(r.client_cpu_seconds) for r in runs),
        )
    return summaries


def results_table(summaries: dict[Key, Summary], mode: Mode) -> str:
    rows = [
        "| server | era | clients | calls | calls/s | p50 ms | p99 ms "
        "| server CPU ms/call (min-max) | PG+Redis CPU ms/call | client CPU ms/call |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server in (FULL, BARE):
        for era in ERAS:
            for clients in (1, CONCURRENT_CLIENTS):
                s = summaries.get(Key(mode.name, server, era, clients))
                if s is None:
                    continue
                rows.append(
                    f"| {server} | {era} | {clients} | {s.runs}x{s.calls} "
                    f"| {s.calls_per_s:.0f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} "
                    f"| **{s.server_cpu_ms:.2f}** ({s.server_cpu_ms_min:.2f}-"
                    f"{s.server_cpu_ms_max:.2f}) | {s.services_cpu_ms:.2f} "
                    f"| {s.client_cpu_ms:.2f} |"
                )
    return "\n".join(rows)


@dataclass(frozen=True)
class Ratio:
    mode: str
    era: str
    clients: int
    full_ms: float
    bare_ms: float

    @property
    def value(self) -> float:
        return self.full_ms / self.bare_ms if self.bare_ms > 0 else float("inf")


def cpu_ratios(summaries: dict[Key, Summary]) -> list[Ratio]:
    ratios = []
    for mode in MODES:
        for era in ERAS:
            for clients in (1, CONCURRENT_CLIENTS):
                full = summaries.get(Key(mode.name, FULL, era, clients))
                bare = summaries.get(Key(mode.name, BARE, era, clients))
                if full and bare:
                    ratios.append(
                        Ratio(mode.name, era, clients, full.server_cpu_ms, bare.server_cpu_ms)
                    )
    return ratios


def ratio_table(ratios: Sequence[Ratio]) -> str:
    rows = [
        "| server mode | era | clients | full CPU ms/call | bare CPU ms/call | full / bare "
        f"| ≤ {TARGET_CPU_RATIO:g}x |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in ratios:
        ok = "yes" if r.value <= TARGET_CPU_RATIO else "no"
        rows.append(
            f"| {r.mode} | {r.era} | {r.clients} | {r.full_ms:.2f} | {r.bare_ms:.2f} "
            f"| **{r.value:.1f}x** | {ok} |"
        )
    return "\n".join(rows)


@dataclass(frozen=True)
class ToolsList:
    era: str
    size: int
    tools: int


def verdicts(ratios: Sequence[Ratio], tools_lists: Sequence[ToolsList]) -> list[str]:
    lines = []
    for mode in MODES:
        mine = [r for r in ratios if r.mode == mode.name]
        if not mine:
            continue
        worst, best = max(mine, key=lambda r: r.value), min(mine, key=lambda r: r.value)
        met = worst.value <= TARGET_CPU_RATIO
        lines.append(
            f"Target: server CPU per call full/bare ≤ {TARGET_CPU_RATIO:g}x ({mode.name}) — "
            f"**{'met' if met else 'not met'}**: {best.value:.1f}x to {worst.value:.1f}x "
            f"(worst: {worst.era}, {worst.clients} client(s), {worst.full_ms:.2f} vs "
            f"{worst.bare_ms:.2f} ms)."
        )
    if tools_lists:
        largest = max(tools_lists, key=lambda t: t.size)
        met = largest.size <= TARGET_TOOLS_LIST_BYTES
        lines.append(
            f"Target: full-scope tools/list ≤ {TARGET_TOOLS_LIST_BYTES:,} bytes — "
            f"**{'met' if met else 'not met'}**: "
            + ", ".join(f"{t.size:,} bytes in {t.era} ({t.tools} tools)" for t in tools_lists)
            + "."
        )
    return lines


def section(
    summaries: dict[Key, Summary], tools_lists: Sequence[ToolsList], *, pinned: bool
) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    pinning = (
        "each server pinned to CPU 0, load generator to CPU 1"
        if pinned
        else "not pinned (taskset or a second core missing)"
    )
    about = (
        f"Server CPU time per MCP tool call: Tradeplane (**full**: `get_quotes` with "
        f'`{{"symbols": ["AAPL"]}}` through `controlplane.asgi:application` — token verified '
        f"against PostgreSQL with the Redis revocation check, scope check, Redis rate-limit "
        f"script, one audit row, a paper-broker quote) against **bare**: "
        f"`bench/bare_server.py`, the MCP SDK's own Streamable HTTP app with one no-op async "
        f"tool and a verifier that checks the same EdDSA token with PyJWT (algorithm, `aud`, "
        f"`iss`) and asks nothing else. Each server is one uvicorn process (`--no-access-log "
        f"--log-level warning`, uvicorn's default loop and HTTP parser), started on its own "
        f"against a fresh PostgreSQL database and Redis, with "
        f"`TRADEPLANE_RATE_LIMIT_PER_MINUTE={RATE_LIMIT_PER_MINUTE}` so the limiter runs but "
        f"never refuses. The client speaks raw JSON-RPC over stdlib `http.client` (not the "
        f"SDK client, which is CPU-bound), one keep-alive connection per client thread: "
        f"2026-07-28 is sessionless (`_meta` and `Mcp-Method`/`Mcp-Name` on every call); "
        f"2025-11-25 sends `initialize` and `notifications/initialized` first (and the "
        f"session id, when the mode gives one). Sequential: {WARMUP_CALLS} warm-up calls, "
        f"then {SEQUENTIAL_CALLS}; concurrent: {CONCURRENT_CLIENTS} clients x "
        f"{CALLS_PER_CLIENT} calls after one warm-up call each. Any non-200 answer or "
        f"`isError` aborts the run. {REPETITIONS} repetitions, interleaved (in each: for "
        f"each server mode, full then bare, the order alternating between repetitions); "
        f"figures are medians over them. Server CPU is the uvicorn process's user + system "
        f"time (all threads, from /proc) divided by the calls: the stable figure on this "
        f"VM. PG+Redis CPU is the same for every PostgreSQL and Redis process, which run "
        f"unpinned; client CPU is the load generator's own."
    )
    versions = (
        f"mcp {package_version('mcp')}, uvicorn {package_version('uvicorn')} with "
        f"{loop_and_parser()}, Django {package_version('django')}"
    )
    ratios = cpu_ratios(summaries)
    parts = [
        SECTION_HEADING,
        wrap(about),
        f"- Date: {now}\n"
        f"- Python: {platform.python_version()} ({platform.python_implementation()}); "
        f"{versions}\n"
        f"- Command: `make bench-mcp`, i.e. `{COMMAND}`\n"
        f"- CPUs: {pinning}",
    ]
    for mode in MODES:
        note = " (the primary comparison)" if mode is MODES[0] else ""
        parts += [f"### {mode.name}{note}", results_table(summaries, mode)]
    parts += ["### Full / bare, server CPU per call", ratio_table(ratios)]
    if tools_lists:
        parts.append(
            wrap(
                "tools/list with the quickstart token (scopes read and trade), stateless "
                "JSON, HTTP body size: "
                + "; ".join(f"{t.era}: {t.size:,} bytes, {t.tools} tools" for t in tools_lists)
                + "."
            )
        )
    parts += [wrap(line) for line in verdicts(ratios, tools_lists)]
    return "\n\n".join(parts) + "\n"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def loop_and_parser() -> str:
    """What uvicorn's defaults pick: uvloop and httptools when they are installed."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"{loop} + {parser}"


# ---- Main --------------------------------------------------------------------------------


def new_jwt_keyring() -> str:
    """One fresh Ed25519 signing key, as controlplane.config.parse_keyring reads it."""
    seed = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"bench{secrets.token_hex(4)}:{seed}"


def bench(database_url: str, redis_url: str) -> int:
    results: list[PhaseResult] = []
    tools_lists: list[ToolsList] = []
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as tmp:
        var_dir = Path(tmp)
        port = free_port()  # both servers, one after the other: the token's audience
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "TRADEPLANE_VAR_DIR": str(var_dir),
            "TRADEPLANE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TRADEPLANE_JWT_KEYS": new_jwt_keyring(),
            "TRADEPLANE_RATE_LIMIT_PER_MINUTE": RATE_LIMIT_PER_MINUTE,
            "LOG_LEVEL": "WARNING",
        }
        print("setting up: migrate, quickstart (demo user with a paper account)", flush=True)
        manage(env, "migrate", "--no-input", "-v0")
        token = manage_json(env, "quickstart", "--json")["access_token"]
        pinned = pin_load_generator()
        for rep in range(1, REPETITIONS + 1):
            for mode in MODES:
                order = (FULL, BARE) if rep % 2 else (BARE, FULL)
                for name in order:
                    target = TARGETS[name]
                    if name == FULL:
                        flush_redis(redis_url)  # every repetition starts with empty limiters
                    print(f"[{rep}/{REPETITIONS}] {mode.name}: {name} on :{port}", flush=True)
                    with running_server(
                        {**env, **mode.env()},
                        port,
                        var_dir,
                        app=target.app,
                        log_name=f"{name}.stderr",
                    ) as server:
                        pinned = pinned and server.pinned
                        if name == FULL and mode is MODES[0] and rep == 1:
                            tools_lists = [
                                ToolsList(era, *tools_list_bytes(port, token, era, target))
                                for era in ERAS
                            ]
                        for era in ERAS:
                            for result in measure_era(server, target, mode, era, token):
                                print(f"    {progress_line(result)}", flush=True)
                                results.append(result)

    summaries = summarize(results)
    print()
    for mode in MODES:
        print(f"{mode.name}\n{results_table(summaries, mode)}\n")
    print(ratio_table(cpu_ratios(summaries)))
    print()
    for line in verdicts(cpu_ratios(summaries), tools_lists):
        print(line.replace("**", ""))
    write_docs(SECTION_HEADING, section(summaries, tools_lists, pinned=pinned))
    print(f"\nwrote {DOCS_FILE.relative_to(REPO)}")
    return 0


def progress_line(r: PhaseResult) -> str:
    return (
        f"{r.key.era} x {r.key.clients:>2}: {r.calls} calls, {r.calls_per_s:6.0f} calls/s, "
        f"p50 {r.percentile_ms(50):6.2f} ms, p99 {r.percentile_ms(99):6.2f} ms, "
        f"server CPU {r.server_cpu_ms:.2f} ms/call"
    )


def main() -> int:
    try:
        database_url, redis_url = services_from_env("bench-mcp")
        return with_services(database_url, redis_url, lambda: bench(database_url, redis_url))
    except (BenchError, psycopg.Error, redis.RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
