"""The paper brokerage's books: accounts, positions, orders with their fills, the cash
ledger and order previews. Only brokers.paper.services (and the execution it drives) writes
them, always holding the account row's lock, so an account's rows change one writer at a
time.
"""

from __future__ import annotations

import secrets
import string
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from django.db import models
from django.utils import timezone

from brokers.base import OrderStatus, OrderType, Side, TimeInForce, TransactionType
from controlplane.models import BrokerConnection

ACCOUNT_KEY_ALPHABET = string.ascii_uppercase + string.digits
PREVIEW_LIFETIME = timedelta(minutes=10)
OPEN_STATUSES = (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED)


def new_account_key() -> str:
    """Opaque and unguessable: the account id the interface hands out."""
    return "PA" + "".join(secrets.choice(ACCOUNT_KEY_ALPHABET) for _ in range(10))


def new_preview_id() -> str:
    return secrets.token_urlsafe(18)


def choices_of(enum: type[StrEnum]) -> list[tuple[str, str]]:
    return [(member.value, member.value) for member in enum]


class PaperAccount(models.Model):
    """One simulated margin account of a paper connection. `slot` numbers the connection's
    accounts (1, and 2 with PAPER_SECOND_ACCOUNT), which makes opening them idempotent."""

    connection = models.ForeignKey(
        BrokerConnection, on_delete=models.CASCADE, related_name="paper_accounts"
    )
    slot = models.PositiveSmallIntegerField()
    account_key = models.CharField(
        max_length=16, unique=True, default=new_account_key, editable=False
    )
    name = models.CharField(max_length=100)
    cash = models.DecimalField(max_digits=20, decimal_places=4, default=Decimal(0))
    allow_short_selling = models.BooleanField(default=True)
    # Counters behind the sequential-looking order, fill and transaction ids.
    orders_placed = models.PositiveIntegerField(default=0)
    entries_made = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["connection", "slot"]
        constraints = [
            models.UniqueConstraint(fields=["connection", "slot"], name="paper_account_slot"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.account_key})"

    # Both counters change only under the account's row lock, which makes the ids unique;
    # the caller saves the account.

    def take_order_id(self) -> str:
        self.orders_placed += 1
        return str(1000 + self.orders_placed)

    def take_entry_number(self) -> int:
        """Numbers a fill and its ledger entry alike (F1002 and T1002)."""
        self.entries_made += 1
        return 1000 + self.entries_made


class PaperPosition(models.Model):
    """Shares held in one symbol; negative for a short. The row outlives a closed position
    so its realized P&L is kept."""

    account = models.ForeignKey(PaperAccount, on_delete=models.CASCADE, related_name="positions")
    symbol = models.CharField(max_length=10)
    quantity = models.DecimalField(max_digits=20, decimal_places=4, default=Decimal(0))
    average_cost = models.DecimalField(max_digits=20, decimal_places=6, default=Decimal(0))
    realized_pnl = models.DecimalField(max_digits=20, decimal_places=4, default=Decimal(0))
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["account", "symbol"]
        constraints = [
            models.UniqueConstraint(fields=["account", "symbol"], name="paper_position_symbol"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} {self.symbol}"


class PaperOrder(models.Model):
    account = models.ForeignKey(PaperAccount, on_delete=models.CASCADE, related_name="orders")
    order_id = models.CharField(max_length=20)
    client_order_id = models.CharField(max_length=20)
    symbol = models.CharField(max_length=10)
    side = models.CharField(max_length=16, choices=choices_of(Side))
    quantity = models.DecimalField(max_digits=20, decimal_places=4)
    order_type = models.CharField(max_length=16, choices=choices_of(OrderType))
    limit_price = models.DecimalField(max_digits=20, decimal_places=4, null=True, blank=True)
    stop_price = models.DecimalField(max_digits=20, decimal_places=4, null=True, blank=True)
    time_in_force = models.CharField(max_length=8, choices=choices_of(TimeInForce))
    extended_hours = models.BooleanField(default=False)
    status = models.CharField(
        max_length=20, choices=choices_of(OrderStatus), default=OrderStatus.OPEN
    )
    filled_quantity = models.DecimalField(max_digits=20, decimal_places=4, default=Decimal(0))
    average_fill_price = models.DecimalField(max_digits=20, decimal_places=6, null=True, blank=True)
    stop_triggered = models.BooleanField(default=False)
    # The minute (Unix time // 60) whose displayed depth this order last took: a limit order
    # takes the touch's depth at most once a minute, however often it is evaluated.
    depth_minute = models.BigIntegerField(null=True, blank=True)
    # Set for DAY orders when they are placed, by the market-hours rule then in force.
    expires_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["account", "order_id"], name="paper_order_id"),
            models.UniqueConstraint(
                fields=["account", "client_order_id"], name="paper_order_client_order_id"
            ),
        ]
        indexes = [models.Index(fields=["account", "status"])]

    def __str__(self) -> str:
        return f"{self.order_id} {self.side} {self.quantity} {self.symbol} ({self.status})"

    @property
    def remaining_quantity(self) -> Decimal:
        return self.quantity - self.filled_quantity

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def is_limit_priced(self) -> bool:
        return self.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)

    @property
    def is_stop(self) -> bool:
        return self.order_type in (OrderType.STOP, OrderType.STOP_LIMIT)

    @property
    def trade_side(self) -> Side:
        return Side(self.side)


class PaperFill(models.Model):
    """One execution. Commission is always zero on the paper broker, but has its column so
    the books read like a real broker's."""

    order = models.ForeignKey(PaperOrder, on_delete=models.CASCADE, related_name="fills")
    fill_id = models.CharField(max_length=20)
    quantity = models.DecimalField(max_digits=20, decimal_places=4)
    price = models.DecimalField(max_digits=20, decimal_places=4)
    commission = models.DecimalField(max_digits=20, decimal_places=4, default=Decimal(0))
    time = models.DateTimeField()

    class Meta:
        ordering = ["time", "pk"]

    def __str__(self) -> str:
        return f"{self.fill_id}: {self.quantity} @ {self.price}"


class PaperTransaction(models.Model):
    """The cash ledger: every deposit and execution, with its signed effect on cash."""

    account = models.ForeignKey(PaperAccount, on_delete=models.CASCADE, related_name="transactions")
    transaction_id = models.CharField(max_length=20)
    type = models.CharField(max_length=16, choices=choices_of(TransactionType))
    time = models.DateTimeField()
    amount = models.DecimalField(max_digits=20, decimal_places=4)
    description = models.CharField(max_length=300)
    symbol = models.CharField(max_length=10, blank=True)
    quantity = models.DecimalField(max_digits=20, decimal_places=4, null=True, blank=True)
    price = models.DecimalField(max_digits=20, decimal_places=4, null=True, blank=True)
    order_id = models.CharField(max_length=20, blank=True)

    class Meta:
        ordering = ["-time", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "transaction_id"], name="paper_transaction_id"
            ),
        ]
        indexes = [models.Index(fields=["account", "time"])]

    def __str__(self) -> str:
        return f"{self.transaction_id} {self.type} {self.amount}"


class PaperPreview(models.Model):
    """A priced order request. Placing needs one: unexpired, of the same account, and made
    for exactly the request placed (compared by `request_hash`)."""

    account = models.ForeignKey(PaperAccount, on_delete=models.CASCADE, related_name="previews")
    preview_id = models.CharField(
        max_length=32, unique=True, default=new_preview_id, editable=False
    )
    request_hash = models.CharField(max_length=64)
    estimated_price = models.DecimalField(max_digits=20, decimal_places=4)
    estimated_total = models.DecimalField(max_digits=20, decimal_places=4)
    commission = models.DecimalField(max_digits=20, decimal_places=4, default=Decimal(0))
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.preview_id

    def is_expired(self, now: datetime) -> bool:
        return now >= self.created_at + PREVIEW_LIFETIME
