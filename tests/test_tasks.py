"""The background tasks: each one's effect, that a second run (at once, from threads or
worker processes, or after a worker was killed mid-task) records every change exactly
once, and that nothing here ever places an order.

Tasks run as real Celery tasks: in this process through `Task.apply()`, or in real worker
processes (`celery worker`, prefork) against the test database and Redis.
"""

from __future__ import annotations

import http.server
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest
import time_machine
from django.conf import settings
from django.db import connection as db_connection
from django.utils import timezone

from audit.models import AuditEvent
from brokers.base import (
    BrokerAdapter,
    BrokerError,
    BrokerErrorCode,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Preview,
    Side,
    TimeInForce,
)
from brokers.paper import prices
from brokers.paper.adapter import PaperBroker
from brokers.paper.models import PaperOrder
from brokers.paper.universe import UNIVERSE, instrument
from brokers.registry import BROKERS, adapter_class, get_adapter
from controlplane import tasks
from controlplane.accesstokens import Principal
from controlplane.celery import app as celery_app
from controlplane.models import (
    ALL_SCOPES,
    BrokerConnection,
    PendingTrade,
    WebhookDelivery,
)
from controlplane.services import orders, portfolio, trading, webhooks
from controlplane.services.connections import create_connection, set_trading_enabled
from tests.conftest import OPERATOR, UserCreds, make_platform, make_user

ROOT = Path(__file__).resolve().parent.parent
D = Decimal
Status = PendingTrade.Status
_names = itertools.count(1)


# ---- Helpers shared with the webhook and deployment tests ---------------------------------


def principal_of(user: UserCreds) -> Principal:
    return Principal(
        end_user_pk=user.user.pk,
        user_id=user.user_id,
        platform_pk=user.platform.platform.pk,
        client_id=user.platform.client_id,
        scopes=ALL_SCOPES,
        jti="test-jti-tasks",
        expires_at=timezone.now() + timedelta(days=400),
    )


def trading_user(name: str = "alice", broker: str = "paper") -> tuple[UserCreds, str]:
    """A user of a platform of its own with one connection, trading granted, and the id of
    its first account."""
    user = make_user(make_platform(f"P-{name}-{next(_names)}"), name)
    connection = create_connection(
        user.user, broker=broker, environment=None, trading_requested=True, actor=OPERATOR
    )
    set_trading_enabled(connection, True, actor=OPERATOR)
    (account, _), *_ = portfolio.list_accounts(principal_of(user))
    return user, account.id


def market_buy(symbol: str = "AAPL", quantity: int = 1) -> OrderRequest:
    return OrderRequest(
        symbol=symbol, side=Side.BUY, quantity=D(quantity), order_type=OrderType.MARKET
    )


def submit(user: UserCreds, account_id: str, request: OrderRequest) -> PendingTrade:
    principal = principal_of(user)
    trade = trading.create_order(principal, account_id, request)
    return trading.confirm_trade(principal, trade.confirmation_id)


def actions_of(trade: PendingTrade) -> list[str]:
    return list(
        AuditEvent.objects.filter(target=f"trade:{trade.confirmation_id}")
        .order_by("seq")
        .values_list("action", flat=True)
    )


def deliveries_of(event_type: str) -> list[WebhookDelivery]:
    return list(WebhookDelivery.objects.filter(event_type=event_type).order_by("pk"))


def run_in_threads(count: int, work: Callable[[], Any]) -> list[Any]:
    """`work` in `count` threads released together; what each returned (or raised)."""
    barrier = threading.Barrier(count)
    results: list[Any] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(work())
        except Exception as exc:  # reported by the caller's assertions
            results.append(exc)
        finally:
            db_connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def wait_until(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver: a real HTTP server on 127.0.0.1 that answers with the given
    statuses in turn (then 200) and keeps every request."""

    statuses: list[int] = field(default_factory=list)
    delay: float = 0
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _server: http.server.ThreadingHTTPServer | None = None
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._arrived:
                    receiver.requests.append(Received(dict(self.headers), body, time.time()))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver._arrived.notify_all()
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/tradeplane"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} of {count} webhook requests arrived")
        return list(self.requests)


@contextmanager
def receiving() -> Iterator[Receiver]:
    server = Receiver().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as server:
        yield server


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def pool_children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process that shares this test's database, Redis and keys."""
    database = settings.DATABASES["default"]
    return {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
        ),
        "REDIS_URL": settings.REDIS_URL or "",
        "TRADEPLANE_VAR_DIR": str(settings.VAR_DIR),
        "TRADEPLANE_DB_POOL_SIZE": "4",
        "LOG_LEVEL": "INFO",
        **(extra or {}),
    }


@contextmanager
def run_worker(
    tmp_dir: Path, *, concurrency: int = 1, env: dict[str, str] | None = None
) -> Iterator[Worker]:
    """A real Celery worker (prefork pool) consuming this test's Redis queue."""
    name = f"test{next(_names)}-{os.getpid()}"
    log = tmp_dir / f"worker-{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "controlplane",
                "worker",
                "--pool=prefork",
                f"--concurrency={concurrency}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=INFO",
                "-n",
                f"{name}@%h",
            ],
            cwd=ROOT,
            env=child_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(process, log)
    try:
        wait_until(
            lambda: " ready." in worker.logs() or process.poll() is not None,
            timeout=60,
            what="the worker to start",
        )
        assert process.poll() is None, worker.logs()
        yield worker
    finally:
        with_timeout_stop(process)


def with_timeout_stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# ---- Fake brokers, registered only for the tests that ask for them ------------------------


class FakeOAuthBroker(PaperBroker):
    """An OAuth broker: paper accounts, plus credentials whose `behaviour` says how the
    upstream renewal answers. Counts the renewals that reach "upstream"."""

    key = "fake_oauth"
    label = "Fake OAuth broker"
    renewals: ClassVar[Counter[str]] = Counter()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def get_order(self, account_id: str, order_id: str) -> Order:
        if self.connection.get_credentials().get("behaviour") == "auth_expired":
            raise BrokerError(BrokerErrorCode.AUTH_EXPIRED, "the token was revoked upstream")
        return super().get_order(account_id, order_id)

    def renew(self) -> None:
        credentials = self.connection.get_credentials()
        with self._lock:
            self.renewals[str(self.connection.pk)] += 1
        time.sleep(0.05)  # the round trip, so concurrent renewers really overlap
        behaviour = credentials.get("behaviour", "ok")
        if behaviour == "auth_expired":
            raise BrokerError(BrokerErrorCode.AUTH_EXPIRED, "the token was revoked upstream")
        if behaviour == "unavailable":
            raise BrokerError(BrokerErrorCode.UNAVAILABLE, "upstream is down")
        # Like an OAuth 2 refresh: a new credential generation, in memory only.
        self.connection.set_credentials(
            {**credentials, "generation": credentials.get("generation", 0) + 1}
        )


class NoLookupPaperBroker(PaperBroker):
    """Like E*TRADE: orders cannot be looked up by client order id, and listed orders do
    not carry it."""

    key = "paper_no_lookup"
    label = "Paper without client order ids"

    def find_order_by_client_order_id(self, account_id: str, client_order_id: str) -> Order | None:
        return BrokerAdapter.find_order_by_client_order_id(self, account_id, client_order_id)

    def list_orders(
        self, account_id: str, *, status: OrderStatus | None = None, limit: int = 50
    ) -> list[Order]:
        listed = super().list_orders(account_id, status=status, limit=limit)
        return [replace(order, client_order_id="") for order in listed]


@pytest.fixture
def fake_brokers() -> Iterator[None]:
    """Adds the fakes to the broker registry for one test (the registry is a table)."""
    BROKERS["fake_oauth"] = (FakeOAuthBroker.label, "tests.test_tasks.FakeOAuthBroker")
    BROKERS["paper_no_lookup"] = (NoLookupPaperBroker.label, "tests.test_tasks.NoLookupPaperBroker")
    adapter_class.cache_clear()
    FakeOAuthBroker.renewals.clear()
    yield
    del BROKERS["fake_oauth"], BROKERS["paper_no_lookup"]
    adapter_class.cache_clear()


# ---- expire_pending_trades ----------------------------------------------------------------


def test_expiry_marks_each_lapsed_trade_once_with_an_audit_row_and_a_webhook(
    committed_db: None, receiver: Receiver
) -> None:
    user, account_id = trading_user()
    webhooks.set_webhook(user.platform.platform, url=receiver.url, actor=OPERATOR)
    principal = principal_of(user)
    with time_machine.travel(timezone.now() - timedelta(seconds=200), tick=False):
        lapsed = [
            trading.create_order(principal, account_id, market_buy(quantity=n)) for n in (1, 2, 3)
        ]
    fresh = trading.create_order(principal, account_id, market_buy(quantity=4))

    results = run_in_threads(4, lambda: tasks.expire_pending_trades.apply().get())

    assert sum(results) == 3, results
    for trade in lapsed:
        trade.refresh_from_db()
        assert trade.status == Status.EXPIRED
        assert actions_of(trade) == ["trade.created", "trade.expired"]
    fresh.refresh_from_db()
    assert fresh.status == Status.PENDING
    expired_events = deliveries_of("trade.expired")
    assert sorted(d.data["confirmation_id"] for d in expired_events) == sorted(
        t.confirmation_id for t in lapsed
    )
    # Again: nothing left to do, nothing written.
    audit_rows = AuditEvent.objects.count()
    assert tasks.expire_pending_trades.apply().get() == 0
    assert AuditEvent.objects.count() == audit_rows
    assert len(deliveries_of("trade.expired")) == 3


# ---- follow_open_orders --------------------------------------------------------------------


def first_minute_at_or_below(symbol: str, price: Decimal, after: datetime) -> datetime:
    """The first whole minute after `after` at which the simulated ask is at most `price`."""
    item = instrument(symbol)
    at = after.replace(second=0, microsecond=0)
    for _ in range(60 * 24 * 60):
        at += timedelta(minutes=1)
        if prices.quote(item, at).ask <= price:
            return at
    raise AssertionError(f"{symbol} never fell to {price} in 60 days")


def test_a_resting_limit_order_is_followed_to_its_fill_audited_and_notified_once(
    db: None, receiver: Receiver
) -> None:
    user, account_id = trading_user()
    registration = webhooks.set_webhook(user.platform.platform, url=receiver.url, actor=OPERATOR)
    now = timezone.now()
    ask = prices.quote(instrument("MSFT"), now).ask
    limit = (ask * D("0.995")).quantize(D("0.01"))
    trade = submit(
        user,
        account_id,
        OrderRequest(
            symbol="MSFT",
            side=Side.BUY,
            quantity=D(3),
            order_type=OrderType.LIMIT,
            limit_price=limit,
            time_in_force=TimeInForce.GTC,
        ),
    )
    assert trade.status == Status.SUBMITTED

    tasks.follow_open_orders.apply()
    trade.refresh_from_db()
    assert trade.order_status == "OPEN"
    assert actions_of(trade) == ["trade.created", "trade.confirmed", "trade.submitted"]
    assert WebhookDelivery.objects.count() == 0

    with time_machine.travel(first_minute_at_or_below("MSFT", limit, now), tick=False):
        assert tasks.evaluate_paper_orders.apply().get() == 1
        assert tasks.evaluate_paper_orders.apply().get() == 0  # filled once
        assert tasks.follow_open_orders.apply().get()["changed"] == 1
        trade.refresh_from_db()
        assert (trade.order_status, trade.filled_quantity) == ("FILLED", D(3))
        assert trade.average_fill_price is not None
        assert trade.average_fill_price <= limit
        before = (trade.order_checked_at, AuditEvent.objects.count())
        # Again, at once and later: nothing new is asked, recorded or sent.
        assert tasks.follow_open_orders.apply().get() == {"checked": 0, "changed": 0, "deferred": 0}
    with time_machine.travel(timezone.now() + timedelta(days=2), tick=False):
        assert tasks.follow_open_orders.apply().get()["checked"] == 0
    trade.refresh_from_db()
    assert (trade.order_checked_at, AuditEvent.objects.count()) == before
    assert actions_of(trade)[-1:] == ["order.filled"]
    (filled,) = deliveries_of("order.filled")
    assert filled.data["confirmation_id"] == trade.confirmation_id
    assert filled.data["filled_quantity"] == "3.000000"

    assert tasks.deliver_webhook.apply(args=(filled.pk, 0)).get() == "delivered"
    (request,) = receiver.wait_for(1)
    assert request.headers["Tradeplane-Event-Type"] == "order.filled"
    assert webhooks.verify_signature(
        registration.signing_secret or "", request.headers["Tradeplane-Signature"], request.body
    )


def test_partial_fills_are_reported_as_they_happen_then_the_fill(db: None) -> None:
    user, account_id = trading_user()
    webhooks.set_webhook(user.platform.platform, url="http://127.0.0.1:9/", actor=OPERATOR)
    now = timezone.now()
    # The cheapest stock, and more shares than the 2,000 at most shown at the touch.
    symbol = min(UNIVERSE, key=lambda s: prices.quote(instrument(s), now).ask)
    ask = prices.quote(instrument(symbol), now).ask
    quantity = 2500
    assert ask * quantity < 90_000, "the paper account's cash must cover the order"
    trade = submit(
        user,
        account_id,
        OrderRequest(
            symbol=symbol,
            side=Side.BUY,
            quantity=D(quantity),
            order_type=OrderType.LIMIT,
            limit_price=(ask * D("1.05")).quantize(D("0.01")),
            time_in_force=TimeInForce.GTC,
        ),
    )
    # Placing it took what the touch showed; each later minute shows more.
    placed_at = timezone.now()
    seen: list[tuple[str, Decimal]] = []
    for minute in range(30):
        with time_machine.travel(placed_at + timedelta(minutes=minute), tick=False):
            tasks.follow_open_orders.apply()
            trade.refresh_from_db()
            if not seen or seen[-1] != (trade.order_status, trade.filled_quantity):
                seen.append((trade.order_status, trade.filled_quantity))
            if trade.order_status == "FILLED":
                break
    assert seen[-1] == ("FILLED", D(quantity))
    partials = [filled for status, filled in seen if status == "PARTIALLY_FILLED"]
    assert partials
    assert partials == sorted(set(partials))
    events = [a for a in actions_of(trade) if a.startswith("order.")]
    assert events == ["order.partially_filled"] * len(partials) + ["order.filled"]
    assert [d.event_type for d in WebhookDelivery.objects.order_by("pk")] == events
    assert [D(d.data["filled_quantity"]) for d in WebhookDelivery.objects.order_by("pk")] == [
        *partials,
        quantity,
    ]


def test_followers_running_at_once_record_each_fill_once(committed_db: None) -> None:
    user, account_id = trading_user()
    webhooks.set_webhook(user.platform.platform, url="http://127.0.0.1:9/", actor=OPERATOR)
    trades = [submit(user, account_id, market_buy(quantity=n)) for n in range(1, 7)]

    results = run_in_threads(4, lambda: tasks.follow_open_orders.apply().get())

    assert all(isinstance(r, dict) for r in results), results
    assert sum(r["changed"] for r in results) == len(trades)
    for trade in trades:
        trade.refresh_from_db()
        assert trade.order_status == "FILLED"
        assert actions_of(trade).count("order.filled") == 1
    assert len(deliveries_of("order.filled")) == len(trades)


def test_a_worker_killed_mid_task_is_replaced_and_the_rerun_finishes_exactly_once(
    committed_db: None, tmp_path: Path
) -> None:
    user, account_id = trading_user()
    trades = [submit(user, account_id, market_buy(quantity=n % 3 + 1)) for n in range(30)]

    def filled() -> int:
        return AuditEvent.objects.filter(action="order.filled").count()

    with run_worker(tmp_path) as worker:
        (child,) = worker.pool_children()
        tasks.follow_open_orders.delay()
        wait_until(lambda: filled() > 0, what="the first recorded fill")
        os.kill(child, signal.SIGKILL)
        at_kill = filled()
        # acks_late + reject_on_worker_lost: the message goes back to the queue and the
        # replacement pool process runs the task again from the start.
        wait_until(lambda: filled() == len(trades), timeout=90, what="every fill")
        time.sleep(0.5)  # a duplicate would show up here
        logs = worker.logs()
    assert 0 < at_kill < len(trades), "the kill did not land mid-task; rerun the test"
    assert "SIGKILL" in logs or "signal 9" in logs, logs
    received = re.findall(r"follow_open_orders\[[^\]]+\] received", logs)
    assert len(received) == 2, "the task was not delivered again"
    for trade in trades:
        trade.refresh_from_db()
        assert trade.order_status == "FILLED"
        assert actions_of(trade).count("order.filled") == 1
    assert PaperOrder.objects.count() == len(trades)  # and no order was placed by the task


def test_two_worker_processes_running_every_sweep_twice_change_each_thing_once(
    committed_db: None, tmp_path: Path, receiver: Receiver
) -> None:
    user, account_id = trading_user()
    webhooks.set_webhook(user.platform.platform, url=receiver.url, actor=OPERATOR)
    principal = principal_of(user)
    with time_machine.travel(timezone.now() - timedelta(seconds=200), tick=False):
        lapsed = [
            trading.create_order(principal, account_id, market_buy(quantity=n)) for n in (1, 2)
        ]
    submitted = [submit(user, account_id, market_buy(quantity=n)) for n in (1, 2, 3)]

    with run_worker(tmp_path, concurrency=2) as one, run_worker(tmp_path, concurrency=2):
        for _ in range(4):
            tasks.follow_open_orders.delay()
            tasks.expire_pending_trades.delay()
        expected = len(lapsed) + len(submitted)
        requests = receiver.wait_for(expected, timeout=60)
        wait_until(
            lambda: not WebhookDelivery.objects.exclude(status="delivered").exists(),
            what="every delivery recorded",
        )
        time.sleep(1)  # a duplicate would show up here
        assert len(receiver.requests) == expected, one.logs()
    assert sorted(r.headers["Tradeplane-Event-Type"] for r in requests) == sorted(
        ["trade.expired"] * len(lapsed) + ["order.filled"] * len(submitted)
    )
    assert len({r.headers["Tradeplane-Event-Id"] for r in requests}) == expected
    for trade in lapsed:
        assert actions_of(trade) == ["trade.created", "trade.expired"]
    for trade in submitted:
        assert actions_of(trade).count("order.filled") == 1
    assert WebhookDelivery.objects.filter(status="delivered").count() == expected


# ---- reconcile_unknown_trades --------------------------------------------------------------


def make_unknown(trade: PendingTrade, *, place: bool) -> None:
    """Test setup: the state a lost broker response leaves (optionally with the order at the
    broker under the trade's client order id)."""
    if place:
        preview = Preview(
            estimated_total=D(trade.estimate["estimated_total"]),
            commission=D(trade.estimate["commission"]),
            estimated_price=D(trade.estimate["estimated_price"]),
            preview_id=trade.broker_preview_id,
        )
        get_adapter(trade.connection).place_order(
            trade.account.broker_account_key,
            trading.request_from(trade.order),
            trade.client_order_id,
            preview,
        )
    PendingTrade.objects.filter(pk=trade.pk).update(
        status=Status.UNKNOWN,
        status_reason="timeout",
        confirmed_at=timezone.now(),
        finished_at=timezone.now(),
    )


def test_an_unknown_trade_found_by_client_order_id_becomes_submitted_once(
    committed_db: None,
) -> None:
    user, account_id = trading_user()
    trade = trading.create_order(principal_of(user), account_id, market_buy(quantity=2))
    make_unknown(trade, place=True)
    (at_broker,) = PaperOrder.objects.filter(client_order_id=trade.client_order_id)

    results = run_in_threads(3, lambda: tasks.reconcile_unknown_trades.apply().get())

    assert sum(r["changed"] for r in results) == 1, results
    trade.refresh_from_db()
    assert (trade.status, trade.broker_order_id) == (Status.SUBMITTED, at_broker.order_id)
    assert actions_of(trade) == ["trade.created", "trade.reconciled"]
    assert PaperOrder.objects.filter(client_order_id=trade.client_order_id).count() == 1
    assert tasks.reconcile_unknown_trades.apply().get()["checked"] == 0
    # From here it is an ordinary submitted order: the follow-up reports its fill.
    tasks.follow_open_orders.apply()
    assert actions_of(trade)[-1] == "order.filled"


def test_an_unknown_trade_never_placed_fails_after_the_grace_period_and_nothing_is_placed(
    db: None,
) -> None:
    user, account_id = trading_user()
    trade = trading.create_order(principal_of(user), account_id, market_buy())
    make_unknown(trade, place=False)

    assert tasks.reconcile_unknown_trades.apply().get()["changed"] == 0
    trade.refresh_from_db()
    assert trade.status == Status.UNKNOWN  # not yet: the broker may still list it
    with time_machine.travel(timezone.now() + orders.RECONCILE_GRACE + timedelta(seconds=1)):
        assert tasks.reconcile_unknown_trades.apply().get()["changed"] == 1
    trade.refresh_from_db()
    assert trade.status == Status.FAILED
    assert "no such order at the broker" in trade.status_reason
    assert actions_of(trade) == ["trade.created", "trade.failed"]
    assert AuditEvent.objects.get(action="trade.failed").outcome == "not_found_at_broker"
    assert PaperOrder.objects.count() == 0


def test_without_client_order_id_lookups_the_order_is_matched_by_its_details(
    db: None, fake_brokers: None
) -> None:
    user, account_id = trading_user(broker="paper_no_lookup")
    principal = principal_of(user)
    placed = trading.create_order(principal, account_id, market_buy("KO", 3))
    lost = trading.create_order(principal, account_id, market_buy("KO", 4))
    make_unknown(placed, place=True)
    make_unknown(lost, place=False)

    report = tasks.reconcile_unknown_trades.apply().get()

    assert (report["checked"], report["changed"]) == (2, 1)
    placed.refresh_from_db()
    lost.refresh_from_db()
    assert placed.status == Status.SUBMITTED
    assert placed.broker_order_id == PaperOrder.objects.get(quantity=3).order_id
    assert lost.status == Status.UNKNOWN


def test_two_identical_broker_orders_leave_the_trade_unknown_for_an_operator(
    db: None, fake_brokers: None
) -> None:
    user, account_id = trading_user(broker="paper_no_lookup")
    principal = principal_of(user)
    first = trading.create_order(principal, account_id, market_buy("KO", 3))
    second = trading.create_order(principal, account_id, market_buy("KO", 3))
    make_unknown(first, place=True)
    make_unknown(second, place=True)
    with time_machine.travel(timezone.now() + orders.RECONCILE_GRACE + timedelta(minutes=1)):
        assert tasks.reconcile_unknown_trades.apply().get()["changed"] == 0
    assert set(PendingTrade.objects.values_list("status", flat=True)) == {Status.UNKNOWN}


# ---- renew_broker_tokens -------------------------------------------------------------------


def oauth_connection(
    *,
    behaviour: str = "ok",
    last_used: timedelta | None = timedelta(hours=2),
    expires_in: timedelta = timedelta(hours=6),
) -> BrokerConnection:
    user, _ = trading_user(f"u{next(_names)}", broker="fake_oauth")
    connection = BrokerConnection.objects.get(end_user=user.user)
    now = timezone.now()
    connection.set_credentials({"token": "t", "behaviour": behaviour})
    connection.token_issued_at = now - timedelta(hours=3)
    connection.token_last_used_at = None if last_used is None else now - last_used
    connection.token_expires_at = now + expires_in
    connection.save()
    return connection


def test_idle_tokens_are_renewed_expired_ones_need_the_person_again(
    db: None, fake_brokers: None
) -> None:
    idle = oauth_connection()
    recently_used = oauth_connection(last_used=timedelta(minutes=20))
    expired = oauth_connection(expires_in=-timedelta(minutes=1))
    revoked_upstream = oauth_connection(behaviour="auth_expired")
    broker_down = oauth_connection(behaviour="unavailable")
    for connection in (expired, revoked_upstream):
        webhooks.set_webhook(
            connection.end_user.platform, url="http://127.0.0.1:9/", actor=OPERATOR
        )
    paper_user, _ = trading_user("paper")  # no credentials: nothing to renew

    report = tasks.renew_broker_tokens.apply().get()

    assert report == {"renewed": 1, "needs_reauth": 2, "deferred": 1, "failed": 0, "skipped": 0}
    renewals = FakeOAuthBroker.renewals
    assert renewals[str(idle.pk)] == 1
    assert renewals[str(recently_used.pk)] == 0
    assert renewals[str(expired.pk)] == 0  # past expiry no renewal can help
    idle.refresh_from_db()
    assert idle.get_credentials()["generation"] == 1  # the adapter's change was saved
    assert idle.token_renewed_at is not None
    for connection in (expired, revoked_upstream):
        connection.refresh_from_db()
        assert connection.status == BrokerConnection.Status.NEEDS_REAUTH
        assert connection.status_reason
    broker_down.refresh_from_db()
    assert broker_down.status == BrokerConnection.Status.ACTIVE
    assert sorted(
        AuditEvent.objects.filter(
            action__in=["connection.renewed", "connection.needs_reauth"]
        ).values_list("action", "target")
    ) == sorted(
        [("connection.renewed", f"connection:{idle.pk}")]
        + [("connection.needs_reauth", f"connection:{c.pk}") for c in (expired, revoked_upstream)]
    )
    assert sorted(d.data["connection_id"] for d in deliveries_of("connection.needs_reauth")) == (
        sorted([str(expired.pk), str(revoked_upstream.pk)])
    )
    assert BrokerConnection.objects.get(end_user=paper_user.user).token_renewed_at is None

    # The next cycle: only the connection whose broker was down is tried again.
    audit_rows = AuditEvent.objects.count()
    assert tasks.renew_broker_tokens.apply().get()["deferred"] == 1
    assert renewals[str(idle.pk)] == 1
    assert AuditEvent.objects.count() == audit_rows


def test_concurrent_renewal_cycles_reach_the_broker_once_per_connection(
    committed_db: None, fake_brokers: None
) -> None:
    connections = [oauth_connection() for _ in range(3)]

    results = run_in_threads(8, lambda: tasks.renew_broker_tokens.apply().get())

    assert all(isinstance(r, dict) for r in results), results
    assert sum(r["renewed"] for r in results) == 3
    for connection in connections:
        assert FakeOAuthBroker.renewals[str(connection.pk)] == 1
        connection.refresh_from_db()
        assert connection.get_credentials()["generation"] == 1
    assert AuditEvent.objects.filter(action="connection.renewed").count() == 3


def test_an_expired_token_seen_by_the_order_follow_up_marks_the_connection_once(
    db: None, fake_brokers: None
) -> None:
    user, account_id = trading_user(broker="fake_oauth")
    webhooks.set_webhook(user.platform.platform, url="http://127.0.0.1:9/", actor=OPERATOR)
    trade = submit(user, account_id, market_buy())
    connection = BrokerConnection.objects.get(pk=trade.connection_id)
    connection.set_credentials({"behaviour": "auth_expired"})  # revoked at the broker
    connection.save()

    assert tasks.follow_open_orders.apply().get()["deferred"] == 1

    connection.refresh_from_db()
    assert connection.status == BrokerConnection.Status.NEEDS_REAUTH
    assert tasks.follow_open_orders.apply().get()["checked"] == 0  # until the person is back
    assert AuditEvent.objects.filter(action="connection.needs_reauth").count() == 1
    assert len(deliveries_of("connection.needs_reauth")) == 1


# ---- The task layer itself -----------------------------------------------------------------


def test_every_scheduled_task_exists_and_expires_within_its_interval() -> None:
    registered = set(celery_app.tasks)
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in registered
        assert entry["options"]["expires"] <= entry["schedule"]
    for task in (
        tasks.renew_broker_tokens,
        tasks.expire_pending_trades,
        tasks.reconcile_unknown_trades,
        tasks.follow_open_orders,
        tasks.evaluate_paper_orders,
        tasks.send_pending_webhooks,
        tasks.deliver_webhook,
    ):
        assert task.acks_late
        assert task.reject_on_worker_lost


def test_only_transient_errors_are_retried() -> None:
    from django.db import OperationalError

    assert tasks.is_transient(BrokerError(BrokerErrorCode.UNAVAILABLE, "down"))
    assert tasks.is_transient(BrokerError(BrokerErrorCode.RATE_LIMITED, "slow down"))
    assert tasks.is_transient(OperationalError("connection refused"))
    assert not tasks.is_transient(BrokerError(BrokerErrorCode.REJECTED, "no"))
    assert not tasks.is_transient(BrokerError(BrokerErrorCode.AUTH_EXPIRED, "log in"))
    assert not tasks.is_transient(ValueError("a bug"))
