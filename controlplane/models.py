"""The core domain: platforms, their end users, broker connections, risk policies and the
access tokens minted for users. Services in controlplane.services own every change to them.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from controlplane import encryption


class Scope(models.TextChoices):
    READ = "read", "Read accounts and market data"
    TRADE = "trade", "Propose and confirm trades"


ALL_SCOPES = frozenset(Scope.values)


def parse_scopes(value: str) -> frozenset[str]:
    return frozenset(value.split())


def format_scopes(scopes: frozenset[str] | set[str] | list[str]) -> str:
    """Canonical order (read before trade) so stored and signed values compare equal."""
    return " ".join(scope for scope in Scope.values if scope in scopes)


def validate_scopes(value: str) -> None:
    unknown = parse_scopes(value) - ALL_SCOPES
    if unknown:
        raise ValidationError(f"unknown scope(s): {', '.join(sorted(unknown))}")


USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$"
validate_user_id = RegexValidator(
    re.compile(USER_ID_PATTERN),
    "1-128 characters: letters, digits and . _ @ : - (starting with a letter or digit).",
)


class PlatformQuerySet(models.QuerySet["Platform"]):
    def active(self) -> PlatformQuerySet:
        return self.filter(is_active=True)


class Platform(models.Model):
    """A tenant: a company whose AI product acts for its end users."""

    name = models.CharField(max_length=200)
    client_id = models.CharField(max_length=64, unique=True, editable=False)
    client_secret_digest = models.CharField(max_length=64, editable=False)
    is_active = models.BooleanField(default=True)
    allowed_scopes = models.CharField(
        max_length=64,
        default="read trade",
        validators=[validate_scopes],
        help_text="Space-separated scopes this platform's tokens may carry.",
    )
    # Per-platform overrides of the MCP tool-call rate limits (calls per minute).
    rate_limit_per_minute = models.PositiveIntegerField(null=True, blank=True)
    trade_rate_limit_per_minute = models.PositiveIntegerField(null=True, blank=True)
    # The kill switch: no order or cancel reaches a broker while this is set.
    trading_halted = models.BooleanField(default=False)
    trading_halted_reason = models.CharField(max_length=500, blank=True)
    trading_halted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = PlatformQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.client_id})"

    @property
    def scopes(self) -> frozenset[str]:
        return parse_scopes(self.allowed_scopes)


class EndUserQuerySet(models.QuerySet["EndUser"]):
    def live(self) -> EndUserQuerySet:
        """Not deleted. Deleted users are kept so trade and audit history stays whole."""
        return self.filter(deleted_at__isnull=True)


class EndUser(models.Model):
    """A person of a platform, known to it by its own `user_id`."""

    platform = models.ForeignKey(Platform, on_delete=models.PROTECT, related_name="end_users")
    user_id = models.CharField(max_length=128, validators=[validate_user_id])
    user_secret_digest = models.CharField(max_length=64, editable=False)
    is_active = models.BooleanField(default=True)
    max_scopes = models.CharField(
        max_length=64,
        default="read trade",
        validators=[validate_scopes],
        help_text="Space-separated scopes this user's tokens may carry.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = EndUserQuerySet.as_manager()

    class Meta:
        ordering = ["platform", "user_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["platform", "user_id"],
                condition=Q(deleted_at__isnull=True),
                name="end_user_unique_live_user_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} @ {self.platform.name}"

    @property
    def scopes(self) -> frozenset[str]:
        return parse_scopes(self.max_scopes)


class BrokerConnection(models.Model):
    """An end user's link to one broker, with its OAuth credentials encrypted at rest."""

    class Environment(models.TextChoices):
        PAPER = "paper"
        SANDBOX = "sandbox"
        PRODUCTION = "production"

    class Status(models.TextChoices):
        PENDING_AUTHORIZATION = "pending_authorization"
        ACTIVE = "active"
        NEEDS_REAUTH = "needs_reauth"
        REVOKED = "revoked"
        ERROR = "error"

    # A UUID known before the first save, so credentials can be bound to the row at once.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    end_user = models.ForeignKey(EndUser, on_delete=models.PROTECT, related_name="connections")
    broker = models.CharField(max_length=32)
    environment = models.CharField(max_length=16, choices=Environment.choices)
    status = models.CharField(
        max_length=32, choices=Status.choices, default=Status.PENDING_AUTHORIZATION
    )
    status_reason = models.CharField(max_length=500, blank=True)
    trading_requested = models.BooleanField(default=False)
    # Requested by the platform, granted only by an operator.
    trading_enabled = models.BooleanField(default=False)
    credentials_ciphertext = models.TextField(blank=True, editable=False)
    token_issued_at = models.DateTimeField(null=True, blank=True)
    token_last_used_at = models.DateTimeField(null=True, blank=True)
    token_renewed_at = models.DateTimeField(null=True, blank=True)
    token_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "broker"])]

    def __str__(self) -> str:
        return f"{self.broker}/{self.environment} for {self.end_user.user_id} ({self.status})"

    def _credentials_context(self) -> str:
        return f"broker_connection:{self.pk}:credentials"

    def set_credentials(self, credentials: dict[str, Any]) -> None:
        payload = json.dumps(credentials, sort_keys=True).encode()
        self.credentials_ciphertext = encryption.encrypt(
            payload, context=self._credentials_context()
        )

    def get_credentials(self) -> dict[str, Any]:
        """The decrypted credentials; DecryptionError if the ciphertext is not this row's."""
        if not self.credentials_ciphertext:
            return {}
        plaintext = encryption.decrypt(
            self.credentials_ciphertext, context=self._credentials_context()
        )
        credentials: dict[str, Any] = json.loads(plaintext)
        return credentials

    def clear_credentials(self) -> None:
        self.credentials_ciphertext = ""


def limit_field() -> models.DecimalField[Any, Any]:
    """An optional non-negative amount; empty means "inherit from the level above"."""
    return models.DecimalField(
        max_digits=18, decimal_places=4, null=True, blank=True, validators=[MinValueValidator(0)]
    )


class RiskPolicy(models.Model):
    """Limits applied to orders. A platform-wide default, overridable per end user and per
    connection; an empty field inherits from the level above."""

    platform = models.ForeignKey(Platform, on_delete=models.CASCADE, related_name="risk_policies")
    end_user = models.ForeignKey(
        EndUser, on_delete=models.CASCADE, null=True, blank=True, related_name="risk_policies"
    )
    connection = models.ForeignKey(
        BrokerConnection,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="risk_policies",
    )
    max_order_value = limit_field()
    max_quantity = limit_field()
    price_collar_pct = limit_field()
    max_orders_per_day = models.PositiveIntegerField(null=True, blank=True)
    max_notional_per_day = limit_field()
    allowed_order_types = models.JSONField(null=True, blank=True)
    allow_short_selling = models.BooleanField(null=True, blank=True)
    allow_extended_hours = models.BooleanField(null=True, blank=True)
    symbol_allowlist = models.JSONField(null=True, blank=True)
    symbol_denylist = models.JSONField(null=True, blank=True)
    max_position_concentration_pct = limit_field()
    approval_threshold_value = limit_field()
    duplicate_window_seconds = models.PositiveIntegerField(null=True, blank=True)
    approval_extends_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="How long the person has to confirm after an operator approves.",
    )
    require_elicitation = models.BooleanField(
        null=True,
        blank=True,
        help_text=(
            "Orders are only submitted after the person accepts a confirm dialog shown by "
            "their MCP client (elicitation); confirm_trade alone is refused."
        ),
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "risk policies"
        constraints = [
            models.UniqueConstraint(
                fields=["platform"],
                condition=Q(end_user__isnull=True, connection__isnull=True),
                name="risk_policy_one_platform_default",
            ),
            models.UniqueConstraint(
                fields=["end_user"],
                condition=Q(connection__isnull=True, end_user__isnull=False),
                name="risk_policy_one_per_end_user",
            ),
            models.UniqueConstraint(
                fields=["connection"],
                condition=Q(connection__isnull=False),
                name="risk_policy_one_per_connection",
            ),
        ]

    def __str__(self) -> str:
        if self.connection_id:
            return f"Risk policy for connection {self.connection_id}"
        if self.end_user_id:
            return f"Risk policy for user {self.end_user_id}"
        return f"Default risk policy of platform {self.platform_id}"


class IssuedTokenQuerySet(models.QuerySet["IssuedToken"]):
    def unexpired(self) -> IssuedTokenQuerySet:
        return self.filter(expires_at__gt=timezone.now())


class IssuedToken(models.Model):
    """One row per minted access token: the source of truth for revocation."""

    jti = models.CharField(max_length=64, unique=True, editable=False)
    platform = models.ForeignKey(Platform, on_delete=models.PROTECT, related_name="+")
    end_user = models.ForeignKey(EndUser, on_delete=models.PROTECT, related_name="tokens")
    scopes = models.CharField(max_length=64)
    key_id = models.CharField(max_length=64)
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=200, blank=True)

    objects = IssuedTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-issued_at"]

    def __str__(self) -> str:
        return self.jti

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class BrokerAccount(models.Model):
    """One brokerage account of one connection, under Tradeplane's own stable id, so one
    agent can address accounts across brokers without ever seeing broker account keys."""

    id = models.CharField(primary_key=True, max_length=32, editable=False)
    connection = models.ForeignKey(
        BrokerConnection, on_delete=models.PROTECT, related_name="accounts"
    )
    broker_account_key = models.CharField(max_length=128)
    name = models.CharField(max_length=200)
    account_type = models.CharField(max_length=64, blank=True)
    currency = models.CharField(max_length=8, default="USD")
    number_masked = models.CharField(max_length=32, blank=True)
    discovered_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["connection", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "broker_account_key"], name="broker_account_unique_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


class Watchlist(models.Model):
    """A named list of symbols an end user follows (market://watchlist/{name})."""

    end_user = models.ForeignKey(EndUser, on_delete=models.CASCADE, related_name="watchlists")
    name = models.CharField(max_length=64)
    symbols = models.JSONField(default=list)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["end_user", "name"]
        constraints = [
            models.UniqueConstraint(fields=["end_user", "name"], name="watchlist_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({len(self.symbols)} symbols)"


class PendingTrade(models.Model):
    """A proposed order or cancel that only `confirm_trade` (or an accepted elicitation) can
    send to the broker, once, before `expires_at`.

    The confirmation is bound to its end user and to a hash of the exact normalized order
    and account; `client_order_id` is derived from the confirmation so that a retry can
    never make a second order at the broker.
    """

    class Kind(models.TextChoices):
        ORDER = "order"
        CANCEL = "cancel"

    class Status(models.TextChoices):
        PENDING = "pending"
        AWAITING_APPROVAL = "awaiting_approval"
        SUBMITTING = "submitting"
        SUBMITTED = "submitted"
        REJECTED = "rejected"
        FAILED = "failed"
        EXPIRED = "expired"
        UNKNOWN = "unknown"

    OPEN_STATUSES = (Status.PENDING, Status.AWAITING_APPROVAL)
    # Trades that count against daily limits before any fill: the broker may act on them.
    EXPOSED_STATUSES = (
        Status.PENDING,
        Status.AWAITING_APPROVAL,
        Status.SUBMITTING,
        Status.SUBMITTED,
        Status.UNKNOWN,
    )

    confirmation_id = models.CharField(max_length=64, unique=True, editable=False)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.ORDER)
    end_user = models.ForeignKey(EndUser, on_delete=models.PROTECT, related_name="trades")
    connection = models.ForeignKey(
        BrokerConnection, on_delete=models.PROTECT, related_name="trades"
    )
    account = models.ForeignKey(BrokerAccount, on_delete=models.PROTECT, related_name="trades")
    order = models.JSONField(help_text="The normalized order (or the order id to cancel).")
    order_hash = models.CharField(max_length=64, db_index=True, editable=False)
    notional = models.DecimalField(max_digits=20, decimal_places=4, default=0)
    summary = models.CharField(max_length=500)
    risk = models.JSONField(default=dict)
    estimate = models.JSONField(default=dict)
    broker_preview_id = models.CharField(max_length=128, blank=True)
    client_order_id = models.CharField(max_length=20, unique=True, editable=False)
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    status_reason = models.CharField(max_length=500, blank=True)
    broker_order_id = models.CharField(max_length=128, blank=True)
    created_by_jti = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(db_index=True)
    approved_by = models.CharField(max_length=150, blank=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # What the broker last said about the submitted order, kept by the order follow-up.
    order_status = models.CharField(max_length=20, blank=True, db_index=True)
    filled_quantity = models.DecimalField(max_digits=20, decimal_places=6, default=0)
    average_fill_price = models.DecimalField(max_digits=20, decimal_places=6, null=True, blank=True)
    order_checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["end_user", "status", "created_at"])]

    def __str__(self) -> str:
        return f"{self.summary} [{self.status}]"


class GlobalTradingHalt(models.Model):
    """The kill switch for every platform at once: a single row (pk 1)."""

    halted = models.BooleanField(default=False)
    reason = models.CharField(max_length=500, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "global trading halt"

    def __str__(self) -> str:
        return "Trading halted everywhere" if self.halted else "Trading allowed"

    @classmethod
    def is_halted(cls) -> bool:
        return cls.objects.filter(pk=1, halted=True).exists()


class WebhookEndpoint(models.Model):
    """Where one platform receives signed event notifications (one URL per platform).

    The signing secret has to be read back to sign every delivery, so it is encrypted at
    rest like broker credentials, with the row's id as associated data: a ciphertext copied
    into another platform's row does not decrypt.
    """

    # A UUID known before the first save, so the secret can be bound to the row at once.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    platform = models.OneToOneField(
        Platform, on_delete=models.PROTECT, related_name="webhook_endpoint"
    )
    url = models.URLField(max_length=2000)
    secret_ciphertext = models.TextField(editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["platform"]

    def __str__(self) -> str:
        return f"{self.url} ({self.platform_id})"

    def _secret_context(self) -> str:
        return f"webhook_endpoint:{self.pk}:signing_secret"

    def set_signing_secret(self, secret: str) -> None:
        self.secret_ciphertext = encryption.encrypt(secret.encode(), context=self._secret_context())

    def get_signing_secret(self) -> str:
        """DecryptionError if the ciphertext is not this row's."""
        return encryption.decrypt(self.secret_ciphertext, context=self._secret_context()).decode()


class WebhookDelivery(models.Model):
    """One event for one platform and the record of sending it: the source of truth for
    what was sent and what still has to be. The row is written in the transaction of the
    change it reports; a periodic sweep sends whatever is due, so an event outlives a
    Celery broker outage or a killed worker.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"  # every attempt failed
        CANCELLED = "cancelled"  # the endpoint was removed before the event got through

    event_id = models.CharField(max_length=40, unique=True, editable=False)
    event_type = models.CharField(max_length=64, db_index=True)
    platform = models.ForeignKey(
        Platform, on_delete=models.PROTECT, related_name="webhook_deliveries"
    )
    endpoint = models.ForeignKey(
        WebhookEndpoint,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="deliveries",
    )
    data = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # Attempts made so far; a send claims the row for exactly this count (see the service).
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    # Held while one worker sends, so no other sends the same attempt meanwhile.
    locked_until = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    url = models.URLField(max_length=2000, blank=True, help_text="Where the last attempt went.")
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="webhook_delivery_due",
            ),
            models.Index(fields=["platform", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} [{self.status}]"
