"""The E*TRADE adapter against the fake E*TRADE, over real HTTP: the OAuth lifecycle, the
fake's own OAuth checks, paging, error mapping, retries, timeouts and lost answers.

The broker contract suite (test_broker_contract.py) runs the same adapter and fake through
the common interface; these tests cover what is particular to E*TRADE.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.test import override_settings
from django.utils import timezone
from requests_oauthlib import OAuth1

from brokers.base import (
    BrokerError,
    BrokerErrorCode,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
    TransactionType,
)
from brokers.etrade import wire
from brokers.etrade.adapter import ETradeBroker, next_eastern_midnight
from brokers.etrade.config import ETradeConfig
from brokers.etrade.errors import Operation, parse_json, refusal
from brokers.registry import get_adapter
from controlplane.models import BrokerConnection
from controlplane.services.connections import create_connection
from tests.conftest import OPERATOR, UserCreds
from tests.fake_etrade import VERIFIER_IN_PAGE, FakeETrade, Fault
from tests.fake_etrade.brokerage import SECURITIES, deterministic_price

SHORT_TIMEOUT = 0.3  # seconds; a slow answer waits SLOW_DELAY
SLOW_DELAY = 1.5


@dataclass
class Connected:
    broker: ETradeBroker
    connection: BrokerConnection
    fake: FakeETrade
    account_id: str  # the first account: funded, no positions or orders at first

    def place(
        self,
        quantity: int = 1,
        *,
        side: Side = Side.BUY,
        limit_price: Decimal | None = None,
        client_order_id: str = "",
        symbol: str = "AAPL",
    ) -> str:
        request = order_request(quantity, side=side, limit_price=limit_price, symbol=symbol)
        account_id = self.account_id
        preview = self.broker.preview_order(account_id, request)
        placed = self.broker.place_order(account_id, request, client_order_id or new_id(), preview)
        return placed.order_id


def order_request(
    quantity: int = 1,
    *,
    side: Side = Side.BUY,
    limit_price: Decimal | None = None,
    symbol: str = "AAPL",
) -> OrderRequest:
    return OrderRequest(
        symbol=symbol,
        side=side,
        quantity=Decimal(quantity),
        order_type=OrderType.MARKET if limit_price is None else OrderType.LIMIT,
        limit_price=limit_price,
        time_in_force=TimeInForce.DAY if limit_price is None else TimeInForce.GTC,
    )


_ids = iter(range(1, 1_000_000))


def new_id() -> str:
    return f"T{time.time_ns() % 10**12}N{next(_ids)}"


def connect(user: UserCreds, fake: FakeETrade) -> Connected:
    """As a person would: create the connection, open the authorize link in a browser,
    accept, and paste the code back."""
    connection = create_connection(
        user.user, broker="etrade", environment="sandbox", trading_requested=True, actor=OPERATOR
    )
    broker = get_adapter(connection)
    assert isinstance(broker, ETradeBroker)
    authorization = broker.start_authorization()
    page = requests.get(f"{authorization.authorize_url}&user={user.user_id}", timeout=5)
    found = VERIFIER_IN_PAGE.search(page.text)
    assert found, page.text
    broker.complete_authorization(found.group(1))
    connection.status = BrokerConnection.Status.ACTIVE
    connection.save()
    return Connected(broker, connection, fake, broker.list_accounts()[0].account_id)


@pytest.fixture
def alice_etrade(alice: UserCreds, fake_etrade: FakeETrade) -> Connected:
    return connect(alice, fake_etrade)


def signer(connected: Connected, **overrides: str) -> OAuth1:
    """What the adapter signs with, for calls made around it."""
    credentials = connected.connection.get_credentials()
    return OAuth1(
        overrides.pop("client_key", connected.fake.consumer_key),
        client_secret=overrides.pop("client_secret", connected.fake.consumer_secret),
        resource_owner_key=credentials["access_token"],
        resource_owner_secret=credentials["access_token_secret"],
        **overrides,
    )


def refused(call: Callable[[], object]) -> BrokerError:
    with pytest.raises(BrokerError) as caught:
        call()
    return caught.value


# ---- OAuth through the adapter -------------------------------------------------------------


def test_the_oauth_dance_connects_and_lists_accounts(
    alice: UserCreds, fake_etrade: FakeETrade
) -> None:
    connection = create_connection(
        alice.user, broker="etrade", environment="sandbox", trading_requested=True, actor=OPERATOR
    )
    assert connection.status == BrokerConnection.Status.PENDING_AUTHORIZATION
    broker = get_adapter(connection)
    before = timezone.now()
    authorization = broker.start_authorization()
    assert authorization is not None
    assert before + timedelta(minutes=4) < authorization.expires_at
    assert authorization.expires_at <= timezone.now() + timedelta(minutes=5)
    url = urlsplit(authorization.authorize_url)
    assert authorization.authorize_url.startswith(f"{fake_etrade.authorize_url}?")
    query = parse_qs(url.query)
    assert query["key"] == [fake_etrade.consumer_key]
    pending = connection.get_credentials()
    # The token arrives percent-encoded (it holds '/', '+' or '='), is kept decoded and is
    # encoded again in the link.
    assert query["token"] == [pending["request_token"]]
    assert set(pending) == {"request_token", "request_token_secret"}

    page = requests.get(f"{authorization.authorize_url}&user=alice", timeout=5)
    verifier = VERIFIER_IN_PAGE.search(page.text)
    assert page.status_code == 200
    assert verifier
    broker.complete_authorization(verifier.group(1))

    credentials = connection.get_credentials()
    assert set(credentials) == {"access_token", "access_token_secret"}
    assert connection.token_issued_at is not None
    assert connection.token_issued_at == connection.token_renewed_at
    assert connection.token_last_used_at == connection.token_issued_at
    assert connection.token_expires_at == next_eastern_midnight(connection.token_issued_at)
    accounts = broker.list_accounts()
    assert [a.account_id for a in accounts] == [a.key for a in fake_etrade.accounts("alice")]
    assert {a.account_type for a in accounts} == {"CASH", "MARGIN"}
    assert all(a.number_masked.startswith("****") for a in accounts)
    assert connection.token_last_used_at > connection.token_issued_at

    # The adapter changed the connection in memory only: the control plane saves and audits.
    stored = BrokerConnection.objects.get(pk=connection.pk)
    assert "access_token" not in stored.get_credentials()
    assert stored.token_issued_at is None


def test_next_eastern_midnight_is_the_end_of_the_new_york_day() -> None:
    summer_evening = datetime(2026, 7, 1, 3, 30, tzinfo=UTC)  # 23:30 EDT on June 30
    assert next_eastern_midnight(summer_evening) == datetime(2026, 7, 1, 4, 0, tzinfo=UTC)
    winter_noon = datetime(2026, 1, 15, 17, 0, tzinfo=UTC)  # 12:00 EST
    assert next_eastern_midnight(winter_noon) == datetime(2026, 1, 16, 5, 0, tzinfo=UTC)


def test_a_wrong_verifier_or_an_unapproved_request_is_refused(
    alice: UserCreds, fake_etrade: FakeETrade
) -> None:
    connection = create_connection(
        alice.user, broker="etrade", environment="sandbox", trading_requested=True, actor=OPERATOR
    )
    broker = get_adapter(connection)
    broker.start_authorization()
    # Not approved on the authorize page yet.
    assert refused(lambda: broker.complete_authorization("ABCDE")).code == (
        BrokerErrorCode.AUTH_EXPIRED
    )
    fake_etrade.approve(connection.get_credentials()["request_token"], user="alice")
    assert refused(lambda: broker.complete_authorization("WRONG")).code == (
        BrokerErrorCode.AUTH_EXPIRED
    )
    assert fake_etrade.oauth_problems == ["permission_denied", "token_rejected"]


def test_a_request_token_lasts_five_minutes(alice: UserCreds, fake_etrade: FakeETrade) -> None:
    connection = create_connection(
        alice.user, broker="etrade", environment="sandbox", trading_requested=True, actor=OPERATOR
    )
    broker = get_adapter(connection)
    broker.start_authorization()
    verifier = fake_etrade.approve(connection.get_credentials()["request_token"], user="alice")
    fake_etrade.advance(5 * 60 + 1)
    error = refused(lambda: broker.complete_authorization(verifier))
    assert error.code == BrokerErrorCode.AUTH_EXPIRED
    assert "token_expired" in error.broker_message


def test_an_idle_token_needs_a_renew(alice_etrade: Connected) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    broker.list_accounts()
    fake.advance(hours=2, seconds=1)
    error = refused(broker.list_accounts)
    assert error.code == BrokerErrorCode.AUTH_EXPIRED
    assert error.transient is False
    assert "token_rejected" in error.broker_message

    renewed_before = alice_etrade.connection.token_renewed_at
    broker.renew()
    assert alice_etrade.connection.token_renewed_at is not None
    assert renewed_before is not None
    assert alice_etrade.connection.token_renewed_at > renewed_before
    assert broker.list_accounts()
    assert fake.calls["oauth.renew_access_token"] == 1


def test_requests_keep_a_token_active(alice_etrade: Connected) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    for _ in range(3):
        fake.advance(hours=1, seconds=50 * 60)
        assert broker.list_accounts()


def test_a_token_dies_at_midnight_eastern_and_renew_cannot_revive_it(
    alice_etrade: Connected,
) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    expires = alice_etrade.connection.token_expires_at
    assert expires is not None
    fake.advance((expires - fake.now()).total_seconds() + 1)
    error = refused(broker.list_accounts)
    assert error.code == BrokerErrorCode.AUTH_EXPIRED
    assert "token_expired" in error.broker_message
    assert refused(broker.renew).code == BrokerErrorCode.AUTH_EXPIRED


def test_revoke_ends_the_token(alice_etrade: Connected) -> None:
    broker, connection = alice_etrade.broker, alice_etrade.connection
    credentials = connection.get_credentials()
    broker.revoke()
    assert connection.get_credentials() == {}
    assert alice_etrade.fake.calls["oauth.revoke_access_token"] == 1
    assert refused(broker.list_accounts).code == BrokerErrorCode.AUTH_EXPIRED  # no token
    connection.set_credentials(credentials)  # the old token, kept by someone
    error = refused(broker.list_accounts)
    assert error.code == BrokerErrorCode.AUTH_EXPIRED
    assert "token_expired" in error.broker_message
    # Revoking a dead token again is not an error.
    broker.revoke()


def test_an_unconfigured_consumer_key_is_named(alice: UserCreds, fake_etrade: FakeETrade) -> None:
    connection = BrokerConnection(end_user=alice.user, broker="etrade", environment="sandbox")
    broker = get_adapter(connection)
    with override_settings(ETRADE_CONSUMER_KEY="", ETRADE_SANDBOX_CONSUMER_KEY=""):
        error = refused(broker.start_authorization)
    assert error.code == BrokerErrorCode.UNAVAILABLE
    assert "ETRADE_SANDBOX_CONSUMER_KEY" in error.broker_message
    production = BrokerConnection(end_user=alice.user, broker="etrade", environment="production")
    with override_settings(ETRADE_CONSUMER_SECRET=""):
        error = refused(get_adapter(production).start_authorization)
    assert "ETRADE_CONSUMER_SECRET" in error.broker_message
    assert fake_etrade.calls["oauth.request_token"] == 0


def test_sandbox_keys_come_first_and_hosts_follow_the_environment(alice: UserCreds) -> None:
    sandbox = BrokerConnection(end_user=alice.user, broker="etrade", environment="sandbox")
    production = BrokerConnection(end_user=alice.user, broker="etrade", environment="production")
    with override_settings(
        ETRADE_CONSUMER_KEY="live-key",
        ETRADE_CONSUMER_SECRET="live-secret",
        ETRADE_SANDBOX_CONSUMER_KEY="sandbox-key",
        ETRADE_SANDBOX_CONSUMER_SECRET="sandbox-secret",
        ETRADE_API_BASE_URL="",
        ETRADE_OAUTH_BASE_URL="",
    ):
        in_sandbox = ETradeConfig.for_connection(sandbox)
        in_production = ETradeConfig.for_connection(production)
    assert (in_sandbox.consumer_key, in_sandbox.consumer_secret) == (
        "sandbox-key",
        "sandbox-secret",
    )
    assert in_sandbox.api_base_url == "https://apisb.etrade.com"
    assert in_production.consumer_key == "live-key"
    assert in_production.api_base_url == "https://api.etrade.com"
    assert (
        in_sandbox.oauth_base_url
        == in_production.oauth_base_url
        == ("https://api.etrade.com/oauth")
    )


# ---- The fake checks OAuth itself ------------------------------------------------------------


def test_the_fake_refuses_a_wrong_consumer_secret(alice_etrade: Connected) -> None:
    fake = alice_etrade.fake
    url = f"{fake.base_url}/v1/accounts/list.json"
    answer = requests.get(url, auth=signer(alice_etrade, client_secret="not-it"), timeout=5)
    assert answer.status_code == 401
    assert answer.json() == {"Error": {"code": 9400, "message": "oauth_problem=signature_invalid"}}
    assert requests.get(url, auth=signer(alice_etrade), timeout=5).status_code == 200

    # Through the adapter: a bad secret is our configuration, not the person's login.
    with override_settings(ETRADE_CONSUMER_SECRET="not-it"):
        error = refused(alice_etrade.broker.list_accounts)
    assert error.code == BrokerErrorCode.UNAVAILABLE
    assert error.transient is False
    assert "signature_invalid" in error.broker_message


def test_the_fake_refuses_stale_timestamps_reused_nonces_and_unsigned_calls(
    alice_etrade: Connected,
) -> None:
    url = f"{alice_etrade.fake.base_url}/v1/accounts/list.json"
    stale = str(int(time.time()) - 3600)
    answer = requests.get(url, auth=signer(alice_etrade, timestamp=stale), timeout=5)
    assert answer.status_code == 401
    assert "oauth_problem=timestamp_refused" in answer.text

    fixed = signer(alice_etrade, nonce="fixednonce12345", timestamp=str(int(time.time())))
    assert requests.get(url, auth=fixed, timeout=5).status_code == 200
    again = requests.get(url, auth=fixed, timeout=5)
    assert again.status_code == 401
    assert "oauth_problem=nonce_used" in again.text

    assert requests.get(url, timeout=5).status_code == 401
    other_key = signer(alice_etrade, client_key="someone-else")
    assert "consumer_key_rejected" in requests.get(url, auth=other_key, timeout=5).text


def test_the_fake_signs_oauth_endpoints_too(fake_etrade: FakeETrade) -> None:
    url = f"{fake_etrade.base_url}/oauth/request_token"
    wrong = OAuth1(fake_etrade.consumer_key, client_secret="not-it", callback_uri="oob")
    answer = requests.get(url, auth=wrong, timeout=5)
    assert answer.status_code == 401
    assert "text/html" in answer.headers["Content-Type"]
    assert "oauth_problem=signature_invalid" in answer.text
    with_callback = OAuth1(
        fake_etrade.consumer_key,
        client_secret=fake_etrade.consumer_secret,
        callback_uri="https://example.com/back",
    )
    answer = requests.post(url, auth=with_callback, timeout=5)
    assert "callback_rejected,oauth_acceptable_callback=oob" in answer.text
    right = OAuth1(
        fake_etrade.consumer_key, client_secret=fake_etrade.consumer_secret, callback_uri="oob"
    )
    answer = requests.post(url, auth=right, timeout=5)  # POST, as requests-oauthlib sends
    assert answer.status_code == 200
    assert parse_qs(answer.text)["oauth_callback_confirmed"] == ["true"]


def test_the_fake_answers_json_by_suffix_or_accept_header(alice_etrade: Connected) -> None:
    base = f"{alice_etrade.fake.base_url}/v1/accounts/list"
    by_header = requests.get(
        base, auth=signer(alice_etrade), headers={"Accept": "application/json"}, timeout=5
    )
    assert by_header.status_code == 200
    assert "AccountListResponse" in by_header.json()
    assert requests.get(base, auth=signer(alice_etrade), timeout=5).status_code == 406


# ---- Paging and empty answers ----------------------------------------------------------------


def test_list_orders_follows_markers(alice_etrade: Connected) -> None:
    fake = alice_etrade.fake
    placed = [alice_etrade.place(limit_price=Decimal("1.00")) for _ in range(12)]
    fake.brokerage.orders_page_cap = 5
    fake.calls.clear()
    account_id = alice_etrade.account_id
    orders = alice_etrade.broker.list_orders(account_id)
    assert [o.order_id for o in orders] == list(reversed(placed))
    assert fake.calls["orders.list"] == 3
    assert all(o.status == OrderStatus.OPEN for o in orders)

    fake.calls.clear()
    assert len(alice_etrade.broker.list_orders(account_id, limit=7)) == 7
    assert fake.calls["orders.list"] == 2


def test_portfolio_pages_are_all_read(alice_etrade: Connected) -> None:
    fake = alice_etrade.fake
    account_id = alice_etrade.account_id
    symbols = sorted(SECURITIES)[:7]
    for quantity, symbol in enumerate(symbols, start=1):
        fake.brokerage.give_position(account_id, symbol, quantity * 10, Decimal("12.50"))
    fake.brokerage.portfolio_page_cap = 3
    positions = alice_etrade.broker.get_positions(account_id)
    assert fake.calls["accounts.portfolio"] == 3
    assert [p.symbol for p in positions] == symbols
    first = positions[0]
    last = deterministic_price(symbols[0]).last
    assert first.quantity == 10
    assert first.market_price == last
    assert first.market_value == 10 * last
    assert first.cost_basis == Decimal("125.00")
    assert first.unrealized_pnl == 10 * last - Decimal("125.00")


def test_more_than_25_quotes_are_fetched_in_batches(alice_etrade: Connected) -> None:
    fake, broker = alice_etrade.fake, alice_etrade.broker
    asked = sorted(SECURITIES, reverse=True)[:30]
    quotes = broker.quote_symbols(asked)
    assert [q.symbol for q in quotes] == asked
    assert fake.calls["market.quote"] == 2
    assert quotes[0].last == deterministic_price(asked[0]).last
    # The interface itself takes at most 25, refused before any call.
    assert refused(lambda: broker.get_quotes(asked)).code == BrokerErrorCode.INVALID_ORDER
    assert fake.calls["market.quote"] == 2


def test_a_dotted_symbol_is_quoted(alice_etrade: Connected) -> None:
    [quote] = alice_etrade.broker.get_quotes(["brk.b"])
    assert quote.symbol == "BRK.B"
    assert quote.name == SECURITIES["BRK.B"]


def test_no_records_is_204_and_an_empty_list(alice_etrade: Connected) -> None:
    fake, broker = alice_etrade.fake, alice_etrade.broker
    account_id = alice_etrade.account_id
    for path in ("orders.json", "portfolio.json"):
        answer = requests.get(
            f"{fake.base_url}/v1/accounts/{account_id}/{path}",
            auth=signer(alice_etrade),
            timeout=5,
        )
        assert (answer.status_code, answer.content) == (204, b"")
    assert broker.list_orders(account_id) == []
    assert broker.get_positions(account_id) == []
    long_ago = timezone.now() - timedelta(days=400)
    assert broker.list_transactions(account_id, end=long_ago) == []


def test_transactions_page_and_link_to_their_orders(alice_etrade: Connected) -> None:
    fake, broker = alice_etrade.fake, alice_etrade.broker
    account_id = alice_etrade.account_id
    bought = [alice_etrade.place(quantity) for quantity in (1, 2, 3)]
    fake.brokerage.transactions_page_cap = 2
    entries = broker.list_transactions(account_id)
    assert fake.calls["accounts.transactions"] == 2
    assert [e.transaction_type for e in entries] == [TransactionType.BUY] * 3 + [
        TransactionType.DEPOSIT
    ]
    assert [e.order_id for e in entries[:3]] == list(reversed(bought))
    assert [e.quantity for e in entries[:3]] == [3, 2, 1]
    assert all(e.amount < 0 and e.symbol == "AAPL" for e in entries[:3])
    assert entries[3].amount == Decimal("100000")
    assert len(broker.list_transactions(account_id, limit=2)) == 2


# ---- Orders and error mapping ----------------------------------------------------------------


def test_a_preview_prices_the_order_as_etrade_does(alice_etrade: Connected) -> None:
    broker, account_id = alice_etrade.broker, alice_etrade.account_id
    price = deterministic_price("AAPL")
    preview = broker.preview_order(account_id, order_request(4))
    assert preview.preview_id.isdigit()
    assert (preview.estimated_price, preview.estimated_total) == (price.ask, 4 * price.ask)
    assert preview.commission == 0
    alice_etrade.place(4)
    sell = broker.preview_order(account_id, order_request(4, side=Side.SELL))
    # E*TRADE writes a sell's value as negative; a preview reports what changes hands.
    assert (sell.estimated_price, sell.estimated_total) == (price.bid, 4 * price.bid)


def test_refusals_map_to_our_codes_and_keep_etrades_words(alice_etrade: Connected) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    account_id = alice_etrade.account_id

    error = refused(lambda: broker.preview_order(account_id, order_request(10_000)))
    assert error.code == BrokerErrorCode.INSUFFICIENT_FUNDS
    assert "exceeds your available buying power" in error.broker_message

    error = refused(lambda: broker.preview_order(account_id, order_request(symbol="ZZZZQ")))
    assert error.code == BrokerErrorCode.INVALID_SYMBOL
    assert "Invalid symbol: ZZZZQ" in error.broker_message

    error = refused(lambda: broker.preview_order(account_id, order_request(side=Side.SELL)))
    assert error.code == BrokerErrorCode.REJECTED
    assert "enough available shares" in error.broker_message
    assert "[E*TRADE 1037]" in error.broker_message

    with fake.closed_market():
        error = refused(lambda: broker.preview_order(account_id, order_request()))
    assert error.code == BrokerErrorCode.MARKET_CLOSED

    bobs = alice_etrade.fake.accounts("bob")[0].key
    error = refused(lambda: broker.get_balance(bobs))
    assert (error.code, error.broker_message) == (
        BrokerErrorCode.ACCOUNT_NOT_FOUND,
        "Account key does not belong to user. [E*TRADE 100]",
    )
    error = refused(lambda: broker.get_balance("NoSuchKey"))
    assert "[E*TRADE 102]" in error.broker_message
    assert error.code == BrokerErrorCode.ACCOUNT_NOT_FOUND

    error = refused(lambda: broker.get_order(account_id, "424242"))
    assert error.code == BrokerErrorCode.ORDER_NOT_FOUND
    order_id = alice_etrade.place()
    error = refused(lambda: broker.cancel_order(account_id, order_id))
    assert error.code == BrokerErrorCode.ORDER_NOT_CANCELLABLE


@pytest.mark.parametrize(
    ("status", "body", "operation", "expected"),
    [
        (
            400,
            '{"Error":{"code":101,"message":"For your protection..."}}',
            "order_entry",
            "rejected",
        ),
        (
            400,
            '{"Error":{"code":5001,"message":"cannot be cancelled"}}',
            "order_lookup",
            "order_not_cancellable",
        ),
        (
            400,
            '{"Error":{"code":167,"message":"We did not find enough available shares"}}',
            "order_entry",
            "rejected",
        ),
        (400, '{"Error":{"message":"Insufficient funds"}}', "order_entry", "insufficient_funds"),
        (
            400,
            "<html>Number of requests exceeded the rate limit set</html>",
            "accounts",
            "rate_limited",
        ),
        (429, "", "market", "rate_limited"),
        (401, '{"Error":{"message":"Invalid access token used"}}', "accounts", "auth_expired"),
        (401, "<html>oauth_problem=token_rejected</html>", "oauth", "auth_expired"),
        (401, "<html>oauth_problem=consumer_key_rejected</html>", "oauth", "unavailable"),
        (404, "", "order_lookup", "order_not_found"),
        (
            400,
            '{"Error":{"code":7001,"message":"Invalid account"}}',
            "accounts",
            "account_not_found",
        ),
        (400, '{"Error":{"code":1,"message":"Something else"}}', "accounts", "rejected"),
    ],
)
def test_error_bodies_map_by_documented_code_then_by_words(
    status: int, body: str, operation: str, expected: str
) -> None:
    response = requests.Response()
    response.status_code = status
    response._content = body.encode()
    error = refusal(response, Operation(operation))
    assert error.code == BrokerErrorCode(expected)
    assert error.broker_message


def test_placing_twice_with_one_client_order_id_places_once(alice_etrade: Connected) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    account_id = alice_etrade.account_id
    request = order_request(2)
    client_order_id = new_id()
    first = broker.place_order(
        account_id, request, client_order_id, broker.preview_order(account_id, request)
    )
    again = broker.place_order(
        account_id, request, client_order_id, broker.preview_order(account_id, request)
    )
    assert again == first
    assert first.status == OrderStatus.FILLED
    assert fake.calls["orders.place"] == 1
    found = broker.find_order_by_client_order_id(account_id, client_order_id)
    assert found is not None
    assert found.order_id == first.order_id


def test_place_sends_the_preview_it_just_made(alice_etrade: Connected) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    account_id = alice_etrade.account_id
    request = order_request(limit_price=Decimal("1.00"))
    shown = broker.preview_order(account_id, request)
    client_order_id = new_id()
    placed = broker.place_order(account_id, request, client_order_id, shown)
    assert placed.status == OrderStatus.OPEN
    # One preview shown to the person, one under the client order id that place uses.
    assert fake.calls["orders.preview"] == 2
    [used] = [r for r in fake.brokerage.previews.values() if r.used]
    assert used.client_order_id == client_order_id
    order = broker.get_order(account_id, placed.order_id)
    assert order.limit_price == Decimal("1.00")
    assert order.time_in_force == TimeInForce.GTC


def test_without_client_order_ids_in_the_list_lookup_is_unsupported(
    alice_etrade: Connected,
) -> None:
    # As in the only real List Orders capture: no clientOrderId on the orders.
    alice_etrade.fake.brokerage.echo_client_order_id = False
    alice_etrade.place()
    error = refused(
        lambda: alice_etrade.broker.find_order_by_client_order_id(alice_etrade.account_id, "X1")
    )
    assert error.code == BrokerErrorCode.UNSUPPORTED


# ---- Retries, timeouts and lost answers ------------------------------------------------------


def test_reads_are_retried_on_server_errors_and_rate_limits(alice_etrade: Connected) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    fake.calls.clear()
    fake.fail("accounts.list", Fault.SERVER_ERROR, times=2)
    assert broker.list_accounts()
    assert fake.calls["accounts.list"] == 3

    fake.fail("market.quote", Fault.RATE_LIMIT, times=1)
    assert broker.get_quotes(["AAPL"])
    assert fake.calls["market.quote"] == 2

    fake.fail("accounts.list", Fault.SERVER_ERROR, times=None)
    error = refused(broker.list_accounts)
    assert (error.code, error.transient) == (BrokerErrorCode.UNAVAILABLE, True)
    assert fake.calls["accounts.list"] == 6

    fake.clear_faults()
    fake.fail("market.quote", Fault.RATE_LIMIT, times=None)
    error = refused(lambda: broker.get_quotes(["AAPL"]))
    assert (error.code, error.transient) == (BrokerErrorCode.RATE_LIMITED, True)


def test_a_dropped_read_is_retried(alice_etrade: Connected) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    fake.calls.clear()
    fake.fail("accounts.list", Fault.DROP)
    assert broker.list_accounts()
    assert fake.calls["accounts.list"] == 2


def test_a_place_is_never_retried(alice_etrade: Connected) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    account_id = alice_etrade.account_id
    fake.fail("orders.place", Fault.SERVER_ERROR)
    client_order_id = new_id()
    request = order_request()
    error = refused(
        lambda: broker.place_order(
            account_id, request, client_order_id, broker.preview_order(account_id, request)
        )
    )
    # A 5xx may come after the order was taken: only a lookup can tell.
    assert error.code == BrokerErrorCode.OUTCOME_UNKNOWN
    assert fake.calls["orders.place"] == 1
    assert broker.find_order_by_client_order_id(account_id, client_order_id) is None

    fake.fail("orders.place", Fault.RATE_LIMIT)
    error = refused(
        lambda: broker.place_order(
            account_id, request, new_id(), broker.preview_order(account_id, request)
        )
    )
    assert error.code == BrokerErrorCode.RATE_LIMITED  # refused at the door: nothing placed
    assert fake.calls["orders.place"] == 2
    assert broker.list_orders(account_id) == []


def test_a_slow_read_times_out_as_unavailable(alice_etrade: Connected) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    account_id = alice_etrade.account_id
    fake.fail("accounts.balance", Fault.SLOW, delay=SLOW_DELAY)
    started = time.monotonic()
    with override_settings(ETRADE_TIMEOUT_SECONDS=SHORT_TIMEOUT):
        error = refused(lambda: broker.get_balance(account_id))
    assert time.monotonic() - started < SLOW_DELAY
    assert (error.code, error.transient) == (BrokerErrorCode.UNAVAILABLE, True)
    # A read timeout is not repeated: the caller already waited the whole timeout.
    assert fake.calls["accounts.balance"] == 1
    assert broker.get_balance(account_id).cash == Decimal("100000")


def test_a_slow_place_is_outcome_unknown_and_found_afterwards(alice_etrade: Connected) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    account_id = alice_etrade.account_id
    request = order_request(3)
    preview = broker.preview_order(account_id, request)
    client_order_id = new_id()
    fake.fail("orders.place", Fault.SLOW, delay=SLOW_DELAY)
    with override_settings(ETRADE_TIMEOUT_SECONDS=SHORT_TIMEOUT):
        error = refused(lambda: broker.place_order(account_id, request, client_order_id, preview))
    assert error.code == BrokerErrorCode.OUTCOME_UNKNOWN
    assert fake.calls["orders.place"] == 1
    found = broker.find_order_by_client_order_id(account_id, client_order_id)
    assert found is not None
    assert found.status == OrderStatus.FILLED
    assert found.filled_quantity == 3


def test_a_slow_preview_is_unavailable_not_unknown(alice_etrade: Connected) -> None:
    alice_etrade.fake.fail("orders.preview", Fault.SLOW, delay=SLOW_DELAY)
    account_id = alice_etrade.account_id
    with override_settings(ETRADE_TIMEOUT_SECONDS=SHORT_TIMEOUT):
        error = refused(lambda: alice_etrade.broker.preview_order(account_id, order_request()))
    assert error.code == BrokerErrorCode.UNAVAILABLE


def test_an_accepted_then_lost_place_is_outcome_unknown_and_found_once(
    alice_etrade: Connected,
) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    account_id = alice_etrade.account_id
    request = order_request(2)
    preview = broker.preview_order(account_id, request)
    client_order_id = new_id()
    fake.fail("orders.place", Fault.DROP)
    error = refused(lambda: broker.place_order(account_id, request, client_order_id, preview))
    assert error.code == BrokerErrorCode.OUTCOME_UNKNOWN
    assert "may or may not" in error.broker_message
    assert fake.calls["orders.place"] == 1

    found = broker.find_order_by_client_order_id(account_id, client_order_id)
    assert found is not None
    assert found.client_order_id == client_order_id
    matching = [o for o in broker.list_orders(account_id) if o.client_order_id == client_order_id]
    assert matching == [found]
    # Placing again under the same id returns that order instead of a second one.
    again = broker.place_order(account_id, request, client_order_id, preview)
    assert again.order_id == found.order_id
    assert fake.calls["orders.place"] == 1
    assert broker.get_positions(account_id)[0].quantity == 2


def test_a_lost_cancel_is_outcome_unknown(alice_etrade: Connected) -> None:
    broker, fake = alice_etrade.broker, alice_etrade.fake
    account_id = alice_etrade.account_id
    order_id = alice_etrade.place(limit_price=Decimal("1.00"))
    fake.fail("orders.cancel", Fault.DROP)
    assert refused(lambda: broker.cancel_order(account_id, order_id)).code == (
        BrokerErrorCode.OUTCOME_UNKNOWN
    )
    assert fake.calls["orders.cancel"] == 1
    assert broker.get_order(account_id, order_id).status == OrderStatus.CANCELLED


def test_an_unreachable_etrade_is_unavailable_even_for_a_place(
    alice_etrade: Connected, fake_etrade: FakeETrade
) -> None:
    broker = alice_etrade.broker
    account_id = alice_etrade.account_id
    request = order_request()
    preview = broker.preview_order(account_id, request)
    fake_etrade.stop()
    # Nothing can have been sent, so the outcome is known: no order.
    error = refused(lambda: broker.place_order(account_id, request, new_id(), preview))
    assert error.code == BrokerErrorCode.UNAVAILABLE


# ---- Running it for a demo -------------------------------------------------------------------


@pytest.fixture
def fake_process() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_etrade", "--port", "0"],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_fake_runs_standalone(fake_process: subprocess.Popen[str]) -> None:
    assert fake_process.stdout is not None
    lines = dict(
        line.strip().split("=", 1)
        for line in (fake_process.stdout.readline() for _ in range(5))
        if "=" in line
    )
    assert set(lines) == {
        "ETRADE_API_BASE_URL",
        "ETRADE_AUTHORIZE_URL",
        "ETRADE_CONSUMER_KEY",
        "ETRADE_CONSUMER_SECRET",
    }
    token = requests.get(
        f"{lines['ETRADE_API_BASE_URL']}/oauth/request_token",
        auth=OAuth1(
            lines["ETRADE_CONSUMER_KEY"],
            client_secret=lines["ETRADE_CONSUMER_SECRET"],
            callback_uri="oob",
        ),
        timeout=5,
    )
    assert token.status_code == 200


# ---- Reading shapes the sources disagree on --------------------------------------------------


def test_wire_reads_objects_for_lists_text_for_numbers_and_either_spelling() -> None:
    order = wire.order(
        parse_json(
            """{"orderId": 42, "OrderDetail": {"placedTime": 1718893800000, "status": "WEIRD",
                "orderTerm": "GOOD_TILL_DATE", "priceType": "TRAILING_STOP_CNST",
                "stopPrice": "1.25", "marketSession": "EXTENDED",
                "Instrument": {"orderAction": "SELL_CLOSE", "orderedQuantity": "10",
                               "filledQuantity": 0, "Product": {"symbol": "AAPL"}}}}"""
        )
    )
    assert (order.order_id, order.side, order.quantity) == ("42", Side.SELL, Decimal(10))
    assert (order.order_type, order.stop_price) == (OrderType.STOP, Decimal("1.25"))
    assert order.status == OrderStatus.OPEN  # unknown: still watched
    assert order.reason == "E*TRADE status WEIRD"
    assert order.extended_hours
    assert order.client_order_id == ""

    sold = wire.transaction(
        parse_json(
            """{"transactionId": 9, "transactionDate": 1718841600000, "amount": 52.5,
                "transactionType": "Sold", "Brokerage": {"Product": [{"symbol": "MSFT"}],
                "quantity": -5, "price": "10.50", "orderNo": "77"}}"""
        )
    )
    assert (sold.transaction_type, sold.symbol, sold.quantity) == (
        TransactionType.SELL,
        "MSFT",
        Decimal(5),
    )
    assert (sold.price, sold.amount, sold.order_id) == (Decimal("10.50"), Decimal("52.5"), "77")
    assert isinstance(sold.amount, Decimal)

    assert wire.moment(1718893800000) == wire.moment(1718893800)
    with pytest.raises(ValueError, match="NaN"):
        parse_json('{"lastTrade": NaN}')
