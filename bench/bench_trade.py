"""`make bench-trade`: the create_order + confirm_trade round trip through the full stack.

One uvicorn process (controlplane.asgi:application, pinned to CPU 0) on a fresh PostgreSQL
database and Redis, in stateless JSON mode, with both rate limits at 100,000 a minute so
that they run on every call and never refuse. A raw JSON-RPC client (bench.bench_mcp's,
pinned to CPU 1) makes pairs of calls: create_order for a 1-share MARKET order on the paper
account that list_accounts names, then confirm_trade with the confirmation_id it answered,
which must come back `submitted`. Sides alternate BUY, SELL on one symbol so that cash and
positions stay where they started. Any error aborts the run.

Phases: sequential in the 2026-07-28 era (the one with a target) and in 2025-11-25; then 4
concurrent clients on the demo user's one account (create and confirm take that
connection's row lock, so this mostly measures queueing on it), and 4 concurrent clients
each with an end user and paper account of its own (what one server process can do).
Results are printed and written to the "Trading round trip" section of docs/benchmarks.md.

The database named in DATABASE_URL is dropped and recreated, and dropped again at the end;
its name must contain "bench" and both services must be on a loopback address.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.bench_mcp import (
    LEGACY,
    MODERN,
    Key,
    McpClient,
    PhaseResult,
    Target,
    loop_and_parser,
    new_jwt_keyring,
    own_cpu_seconds,
    package_version,
    run_phase,
    sse_data,
)
from bench.harness import (
    APPLICATION,
    DOCS_FILE,
    REPO,
    BenchError,
    Server,
    Tally,
    database_name,
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
    "REDIS_URL=redis://127.0.0.1:6379/15 .venv/bin/python -m bench.bench_trade"
)
SECTION_HEADING = "## Trading round trip (make bench-trade)"

WARMUP_PAIRS = 20
SEQUENTIAL_PAIRS = 300
CONCURRENT_CLIENTS = 4
PAIRS_PER_CLIENT = 75
DRIFT_WINDOW = 50  # pairs at each end of the sequential 2026-07-28 phase

TARGET_P50_MS = 40.0
OTHER_LOAD_WARNING_PCT = 10.0

LIMIT_PER_MINUTE = "100000"  # settings cap both limits here
SERVER_ENV = {
    "TRADEPLANE_RATE_LIMIT_PER_MINUTE": LIMIT_PER_MINUTE,
    "TRADEPLANE_TRADE_RATE_LIMIT_PER_MINUTE": LIMIT_PER_MINUTE,
    "TRADEPLANE_MCP_STATELESS": "true",
    "TRADEPLANE_MCP_JSON_RESPONSE": "true",
    "PAPER_MARKET_HOURS": "always",  # the paper market open whatever the hour
    "LOG_LEVEL": "WARNING",
}
MODE = "stateless JSON"
ONE_ACCOUNT = "one account"
OWN_ACCOUNTS = "own accounts"

# Liquid names of the paper universe; each concurrent client keeps to one of them, so that
# its SELL never meets a position another client just sold.
SYMBOLS = ("SPY", "AAPL", "MSFT", "QQQ")
# McpClient wants a target; the pair below names its tools itself.
TRADE_TARGET = Target("full", APPLICATION, "create_order", {})

# Extra end users for the own-accounts phase: the demo's own steps (services.demo) for each,
# in one manage.py shell, printing their tokens as JSON.
TRADERS_SCRIPT = """\
import json
from audit.events import Actor
from controlplane.models import ALL_SCOPES, Platform
from controlplane.services.connections import create_connection, set_trading_enabled
from controlplane.services.demo import DEMO_CLIENT_ID
from controlplane.services.tokens import issue_token
from controlplane.services.users import create_end_user

actor = Actor.operator("cli:bench_trade")
platform = Platform.objects.get(client_id=DEMO_CLIENT_ID)
tokens = []
for i in range({count}):
    user = create_end_user(platform, user_id=f"bench-trader-{{i}}", actor=actor).end_user
    connection = create_connection(
        user, broker="paper", environment=None, trading_requested=True, actor=actor
    )
    set_trading_enabled(connection, True, actor=actor)
    tokens.append(issue_token(platform, user, ALL_SCOPES, actor=actor).access_token)
print(json.dumps(tokens))
"""


# Where the time goes: profiled once (py-spy on the server, and the two service calls
# in-process), not re-measured by this script; kept in the docs section it writes.
PROFILE_NOTES = """\
### Where the time goes (profiled 2026-11-21 at commit 6b5f021; not re-measured by the script)

- The pair is CPU-bound end to end: its latency is about the server's CPU per pair plus
  PostgreSQL's (the two CPU columns add up to about the p50), with nothing waiting. It is
  about 110 SQL statements, each its own round trip from the ORM: 98 in the trading
  services (34 in `create_order`, 64 in `confirm_trade`, counted in-process), plus per
  call the token lookup and the `tool.call` audit row (5 statements); and 4 Redis round
  trips (revocation check and rate limit, per call).
- The services' 98: 43 are the paper broker's (the balance read for the risk context, 5
  statements, in create and again in confirm; the preview, 9; placing and filling the
  order, 24: each step re-reads the account, checks for resting orders and reads
  positions); 19 the three trade audit rows (advisory lock, chain head and insert each,
  plus 10 lazy loads of trade → connection → end user → platform, since `refresh_from_db`
  drops the related objects); 19 the pending trade's own bookkeeping (row lock, exposure
  sums, insert, updates, refreshes, BEGIN/COMMIT); 9 the permission checks and account and
  trade lookups; 8 the risk policy (3 queries, twice, none finding a policy, and the end
  user loaded lazily).
- Where the server's CPU goes (py-spy, GIL-holding samples, sequential 2026-07-28): about
  70% in Django's ORM (compiling queries, building model instances) and psycopg, about 10%
  in uvicorn, the MCP SDK, pydantic and asyncio, about 5% verifying the token. That is
  roughly 0.45 ms of server CPU and 0.25 ms of PostgreSQL CPU per statement on this VM;
  in-process, without HTTP or MCP, `create_order` + `confirm_trade` take about 50 ms of
  CPU.
- Before commit da44bce the risk context also read positions and the day's orders
  (`list_orders(limit=200)` with its fills prefetch) in create and in confirm, with no
  policy limit needing them: about 130 statements, ~100 ms of server CPU and a p50 of ~125
  ms per pair, growing with the account's orders (past 200 orders of the day those reads
  were ~40% of the server's CPU and a pair ~150 ms of it).
- Concurrency cannot help one process: with the machine otherwise quiet, the concurrent
  phases keep the server's core 95-98% busy (the *server busy* column), so pairs/s is
  about 1000 / (server CPU ms per pair) times that share. The demo connection's row lock
  adds little on top of that queue: one account and own accounts reach about the same
  rate.
- Levers (application changes, none made here): one read of the paper account's state per
  call instead of one per step (the account row, its resting orders and its positions are
  read twice in create and three times in confirm); passing the loaded connection, end
  user and platform to `_audit` instead of lazy loads after `refresh_from_db` (10
  statements); the three permission checks and the three policy levels one query each (8
  statements); more uvicorn workers for throughput. A 40 ms pair needs roughly 45
  statements, fewer than half of today's 110.
"""


# ---- The client --------------------------------------------------------------------------


class CallFailed(Exception):
    """A tool call that did not answer what the pair needs; the message says what."""


class TradeClient(McpClient):
    """One keep-alive connection making create_order + confirm_trade pairs on one account.

    `timed_call` (what bench.bench_mcp.run_phase calls) makes one pair and records its
    latency in the tally, and the latency of each of its two calls here."""

    def __init__(self, port: int, token: str, era: str, symbols: Sequence[str]) -> None:
        super().__init__(port, token, era, TRADE_TARGET)
        self.symbols = tuple(symbols)
        self.account_id = ""
        self.pairs = 0  # made by this client; BUY on even, SELL on odd
        self.pairs_counted = 0  # of which already in a ledger (see `measure`)
        self.create_latencies: list[float] = []
        self.confirm_latencies: list[float] = []

    def open(self) -> None:
        super().open()
        accounts = self.tool("list_accounts", {}).get("accounts") or []
        if not accounts:
            raise BenchError("list_accounts answered no account")
        self.account_id = accounts[0]["account_id"]

    def tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """tools/call; its structuredContent, or CallFailed."""
        status, body = self.send("tools/call", {"name": name, "arguments": arguments}, name)
        if status != 200:
            raise CallFailed(f"{name}: HTTP {status}: {body[:300]!r}")
        try:
            result = json.loads(sse_data(body)).get("result") or {}
        except json.JSONDecodeError:
            raise CallFailed(f"{name}: not JSON: {body[:300]!r}") from None
        content = result.get("structuredContent")
        if result.get("isError") is not False or not isinstance(content, dict):
            raise CallFailed(f"{name}: not a successful tool result: {body[:300]!r}")
        return content

    def next_order(self) -> dict[str, Any]:
        """BUY 1 then SELL 1 of a symbol, then the next symbol: the account ends as it began."""
        symbol = self.symbols[(self.pairs // 2) % len(self.symbols)]
        return {
            "account_id": self.account_id,
            "symbol": symbol,
            "side": "BUY" if self.pairs % 2 == 0 else "SELL",
            "quantity": 1,
            "order_type": "MARKET",
        }

    def pair(self) -> None:
        order = self.next_order()
        start = time.perf_counter()
        created = self.tool("create_order", order)
        if created.get("status") != "pending":
            raise CallFailed(f"create_order: status {created.get('status')!r}, not pending")
        confirmation_id = created.get("confirmation_id")
        if not isinstance(confirmation_id, str):
            raise CallFailed(f"create_order: no confirmation_id in {created!r}")
        middle = time.perf_counter()
        confirmed = self.tool("confirm_trade", {"confirmation_id": confirmation_id})
        end = time.perf_counter()
        if confirmed.get("status") != "submitted":
            raise CallFailed(
                f"confirm_trade: status {confirmed.get('status')!r}, not submitted: {confirmed!r}"
            )
        self.pairs += 1
        self.create_latencies.append(middle - start)
        self.confirm_latencies.append(end - middle)

    def timed_call(self, tally: Tally) -> bool:
        start = time.perf_counter()
        try:
            self.pair()
        except (OSError, http.client.HTTPException, CallFailed) as exc:
            tally.fail(f"{type(exc).__name__}: {exc}")
            return False
        tally.latencies.append(time.perf_counter() - start)
        return True

    def reset_latencies(self) -> None:
        self.create_latencies.clear()
        self.confirm_latencies.clear()


@contextmanager
def trade_clients(
    port: int, tokens: Sequence[str], era: str, symbols: Sequence[Sequence[str]]
) -> Iterator[list[TradeClient]]:
    clients: list[TradeClient] = []
    try:
        for token, mine in zip(tokens, symbols, strict=True):
            clients.append(TradeClient(port, token, era, mine))
            clients[-1].open()
        yield clients
    finally:
        for client in clients:
            client.close()


# ---- Phases ------------------------------------------------------------------------------


def services_cpu_seconds(database: str) -> float:
    """User + system CPU of Redis, PostgreSQL's own processes and the backends connected to
    `database`: not those of other databases, which other work on the machine may be using."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            name = stat[stat.find("(") + 1 : stat.rfind(")")]
            if name == "postgres":
                title = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                # Client backends' titles name their database and client address.
                is_client = "(" in title or "[local]" in title
                if is_client and f" {database} " not in title:
                    continue
            elif name != "redis-server":
                continue
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all CPUs, anything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class TradePhase:
    """One timed phase: bench.bench_mcp's figures plus the two calls' latencies apart, the
    orders each account had made today when it began, and the CPU of everything else."""

    result: PhaseResult
    accounts: int
    orders_at_start: int
    create: Sequence[float]
    confirm: Sequence[float]
    services_cpu_seconds: float
    other_cpu_seconds: float

    @property
    def key(self) -> Key:
        return self.result.key

    @property
    def pairs(self) -> int:
        return self.result.calls

    def per_pair_ms(self, seconds: float) -> float:
        return self.result.per_call_ms(seconds)

    @property
    def server_busy_pct(self) -> float:
        """The server's CPU time over the phase's wall time: 100% is one core saturated."""
        return 100 * self.result.server_cpu_seconds / self.result.seconds

    @property
    def other_load_pct(self) -> float:
        """CPU used by anything but the server, the client, PostgreSQL and Redis, as a share
        of the whole machine: other work sharing the VM, which skews every figure."""
        capacity = self.result.seconds * (os.cpu_count() or 1)
        return max(0.0, 100 * self.other_cpu_seconds / capacity)

    def drift(self) -> tuple[float, float]:
        """p50 ms of the first and of the last DRIFT_WINDOW pairs, in the order made."""
        latencies = self.result.latencies
        first, last = latencies[:DRIFT_WINDOW], latencies[-DRIFT_WINDOW:]
        return percentile(first, 50) * 1000, percentile(last, 50) * 1000


def measure(
    server: Server,
    clients: Sequence[TradeClient],
    pairs_each: int,
    key: Key,
    database: str,
    ledger: Counter[str],
) -> TradePhase:
    """The warm-up, then the timed pairs on every client. `ledger` counts the pairs made on
    each account so far (two orders each); this phase's are added to it."""
    run_phase(server, clients, WARMUP_PAIRS, key, "warm-up")
    for client in clients:
        client.reset_latencies()
        ledger[client.account_id] += client.pairs
        client.pairs_counted = client.pairs
    orders_at_start = max(2 * ledger[client.account_id] for client in clients)
    before = (machine_busy_seconds(), services_cpu_seconds(database), own_cpu_seconds())
    result = run_phase(server, clients, pairs_each, key, "timed")
    busy = machine_busy_seconds() - before[0]
    services = services_cpu_seconds(database) - before[1]
    own = own_cpu_seconds() - before[2]
    for client in clients:
        ledger[client.account_id] += client.pairs - client.pairs_counted
    return TradePhase(
        result=result,
        accounts=len({client.account_id for client in clients}),
        orders_at_start=orders_at_start,
        create=[latency for c in clients for latency in c.create_latencies],
        confirm=[latency for c in clients for latency in c.confirm_latencies],
        services_cpu_seconds=services,
        other_cpu_seconds=busy - result.server_cpu_seconds - services - own,
    )


def own_account_tokens(env: dict[str, str], count: int) -> list[str]:
    output = manage(env, "shell", "--no-imports", "-c", TRADERS_SCRIPT.format(count=count))
    try:
        tokens = json.loads(output.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise BenchError(f"setting up the traders printed no token list: {output!r}") from None
    if not isinstance(tokens, list) or len(tokens) != count:
        raise BenchError(f"setting up the traders printed {tokens!r}")
    return [str(token) for token in tokens]


# ---- Reporting ---------------------------------------------------------------------------


def phase_name(p: TradePhase) -> str:
    return "sequential" if p.key.clients == 1 else p.key.server


def results_table(phases: Sequence[TradePhase]) -> str:
    rows = [
        "| phase | era | clients | accounts | orders/account at start | pairs | pairs/s "
        "| p50 ms | p95 ms | p99 ms | create p50 ms | confirm p50 ms | server CPU ms/pair "
        "| server busy | PG+Redis CPU ms/pair | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        r = p.result
        rows.append(
            f"| {phase_name(p)} | {p.key.era} | {p.key.clients} | {p.accounts} "
            f"| {p.orders_at_start} | {p.pairs} | {r.calls_per_s:.1f} "
            f"| **{r.percentile_ms(50):.2f}** | {r.percentile_ms(95):.2f} "
            f"| {r.percentile_ms(99):.2f} | {percentile(p.create, 50) * 1000:.2f} "
            f"| {percentile(p.confirm, 50) * 1000:.2f} "
            f"| **{p.per_pair_ms(r.server_cpu_seconds):.2f}** | {p.server_busy_pct:.0f}% "
            f"| {p.per_pair_ms(p.services_cpu_seconds):.2f} | {p.other_load_pct:.0f}% |"
        )
    return "\n".join(rows)


def target_phase(phases: Sequence[TradePhase]) -> TradePhase:
    return next(p for p in phases if p.key.clients == 1 and p.key.era == MODERN)


def drift_line(phases: Sequence[TradePhase]) -> str:
    phase = target_phase(phases)
    first, last = phase.drift()
    orders = phase.orders_at_start
    return (
        f"Drift with the orders the account has made today, in the sequential {MODERN} "
        f"phase: p50 {first:.2f} ms over its first {DRIFT_WINDOW} pairs (from {orders} "
        f"orders on), {last:.2f} ms over its last {DRIFT_WINDOW} (up to "
        f"{orders + 2 * phase.pairs})."
    )


def load_line(phases: Sequence[TradePhase]) -> str:
    worst = max(phases, key=lambda p: p.other_load_pct)
    if worst.other_load_pct < OTHER_LOAD_WARNING_PCT:
        return (
            f"Other work on the machine stayed under {OTHER_LOAD_WARNING_PCT:g}% of its CPU "
            f"in every phase (at most {worst.other_load_pct:.0f}%)."
        )
    return (
        f"**Other work shared the machine**: up to {worst.other_load_pct:.0f}% of its CPU "
        f"(in the {phase_name(worst)} {worst.key.era} phase) went to processes that are not "
        f"this benchmark's, so latencies and CPU figures are inflated; rerun on a quiet VM."
    )


def verdict(phases: Sequence[TradePhase]) -> str:
    phase = target_phase(phases)
    p50 = phase.result.percentile_ms(50)
    met = p50 <= TARGET_P50_MS
    return (
        f"Target: p50 ≤ {TARGET_P50_MS:g} ms for the create_order + confirm_trade pair "
        f"(sequential, {MODERN}) — **{'met' if met else 'not met'}**: p50 {p50:.2f} ms "
        f"(p95 {phase.result.percentile_ms(95):.2f}, p99 "
        f"{phase.result.percentile_ms(99):.2f}), "
        f"{phase.per_pair_ms(phase.result.server_cpu_seconds):.2f} ms of server CPU per pair."
    )


def section(phases: Sequence[TradePhase], *, pinned: bool) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    pinning = (
        "server pinned to CPU 0, load generator to CPU 1"
        if pinned
        else "not pinned (taskset or a second core missing)"
    )
    about = (
        "One pair = `create_order` (`quantity` 1, `order_type` MARKET, on the paper account "
        "that `list_accounts` names) then `confirm_trade` with the `confirmation_id` it "
        "answered, which must come back `submitted`. Sides alternate BUY then SELL of one "
        f"symbol (a sequential client takes {', '.join(SYMBOLS)} in turn, each concurrent "
        "client one of them), so cash and positions end where they began. Full stack: one "
        "uvicorn process serving `controlplane.asgi:application` (`--no-access-log "
        "--log-level warning`, uvicorn's default loop and HTTP parser) on a fresh PostgreSQL "
        "database and Redis, stateless JSON mode (`TRADEPLANE_MCP_STATELESS=true`, "
        "`TRADEPLANE_MCP_JSON_RESPONSE=true`), "
        f"`TRADEPLANE_RATE_LIMIT_PER_MINUTE={LIMIT_PER_MINUTE}` and "
        f"`TRADEPLANE_TRADE_RATE_LIMIT_PER_MINUTE={LIMIT_PER_MINUTE}` so the limiters run "
        "but never refuse, the paper market open around the clock. The demo user of "
        "`manage.py quickstart` (a paper account with trading granted, a read+trade token) "
        "trades; the client is `bench/bench_mcp.py`'s raw JSON-RPC one over stdlib "
        "`http.client`, one keep-alive connection per client thread, 2026-07-28 sessionless "
        "or 2025-11-25 after `initialize`. Each phase: "
        f"{WARMUP_PAIRS} warm-up pairs per client, then {SEQUENTIAL_PAIRS} pairs on one "
        f"client or {PAIRS_PER_CLIENT} on each of {CONCURRENT_CLIENTS}; any error aborts the "
        "run. The phases run in the order shown against one server process and database, "
        "so the demo account's orders of the day pile up through the run (the column "
        "*orders/account at start*). **one account**: concurrent clients of the demo user; "
        "create and confirm both take the connection's row lock, so this mostly measures "
        f"queueing. **own accounts**: {CONCURRENT_CLIENTS} end users made for the run the "
        "way the demo's is (user, paper connection, trading granted, token), a client each. "
        "Latencies are the pair's (create p50 and confirm p50: each call's own), "
        "client-side. Server CPU is the uvicorn process's user + system time (all threads, "
        "from /proc) per pair; *server busy* the same over wall time (100% = its one core "
        "saturated); PG+Redis CPU that of Redis, PostgreSQL's own processes and the "
        "backends of the bench database; *other load* the share of the machine's CPU used "
        "by everything else, i.e. other work on the VM."
    )
    versions = (
        f"mcp {package_version('mcp')}, uvicorn {package_version('uvicorn')} with "
        f"{loop_and_parser()}, Django {package_version('django')}"
    )
    parts = [
        SECTION_HEADING,
        wrap(about),
        f"- Date: {now}\n"
        f"- Python: {platform.python_version()} ({platform.python_implementation()}); "
        f"{versions}\n"
        f"- Command: `make bench-trade`, i.e. `{COMMAND}`\n"
        f"- CPUs: {pinning}",
        results_table(phases),
        wrap(drift_line(phases)),
        wrap(load_line(phases)),
        wrap(verdict(phases)),
        PROFILE_NOTES.rstrip("\n"),
    ]
    return "\n\n".join(parts) + "\n"


def progress_line(p: TradePhase) -> str:
    r = p.result
    return (
        f"{phase_name(p)} {p.key.era} x {p.key.clients}: {p.pairs} pairs "
        f"(orders/account at start {p.orders_at_start}), {r.calls_per_s:5.1f} pairs/s, "
        f"p50 {r.percentile_ms(50):6.2f} ms, p95 {r.percentile_ms(95):6.2f} ms, "
        f"p99 {r.percentile_ms(99):6.2f} ms, server CPU {p.per_pair_ms(r.server_cpu_seconds):.2f}"
        f" ms/pair, other load {p.other_load_pct:.0f}%"
    )


# ---- Main --------------------------------------------------------------------------------


def bench(database_url: str, redis_url: str) -> int:
    phases: list[TradePhase] = []
    database = database_name(database_url)
    ledger: Counter[str] = Counter()  # pairs made per account
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as tmp:
        var_dir = Path(tmp)
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "TRADEPLANE_VAR_DIR": str(var_dir),
            "TRADEPLANE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TRADEPLANE_JWT_KEYS": new_jwt_keyring(),
            **SERVER_ENV,
        }
        print("setting up: migrate, quickstart, traders with accounts of their own", flush=True)
        manage(env, "migrate", "--no-input", "-v0")
        token = manage_json(env, "quickstart", "--json")["access_token"]
        traders = own_account_tokens(env, CONCURRENT_CLIENTS)
        pinned = pin_load_generator()
        with running_server(env, port, var_dir) as server:
            pinned = pinned and server.pinned

            def run(name: str, era: str, tokens: Sequence[str], pairs_each: int) -> None:
                symbols = [SYMBOLS] if len(tokens) == 1 else [(s,) for s in SYMBOLS]
                with trade_clients(port, tokens, era, symbols[: len(tokens)]) as clients:
                    key = Key(MODE, name, era, len(clients))
                    phase = measure(server, clients, pairs_each, key, database, ledger)
                print(f"    {progress_line(phase)}", flush=True)
                phases.append(phase)

            print(f"server on :{port}", flush=True)
            run(ONE_ACCOUNT, MODERN, [token], SEQUENTIAL_PAIRS)
            run(ONE_ACCOUNT, LEGACY, [token], SEQUENTIAL_PAIRS)
            run(ONE_ACCOUNT, MODERN, [token] * CONCURRENT_CLIENTS, PAIRS_PER_CLIENT)
            run(OWN_ACCOUNTS, MODERN, traders, PAIRS_PER_CLIENT)

    print()
    print(results_table(phases))
    print()
    print(drift_line(phases))
    print(load_line(phases).replace("**", ""))
    print(verdict(phases).replace("**", ""))
    write_docs(SECTION_HEADING, section(phases, pinned=pinned))
    print(f"\nwrote {DOCS_FILE.relative_to(REPO)}")
    return 0


def main() -> int:
    try:
        database_url, redis_url = services_from_env("bench-trade")
        return with_services(database_url, redis_url, lambda: bench(database_url, redis_url))
    except (BenchError, psycopg.Error, redis.RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
