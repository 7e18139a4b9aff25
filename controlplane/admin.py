"""The operators' console. Every action goes through a service and leaves an audit row with
the operator as actor; secrets and ciphertexts are never displayed."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.db import transaction
from django.db.models import Model, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from audit.events import Actor, record
from controlplane.errors import ControlPlaneError
from controlplane.models import (
    BrokerConnection,
    EndUser,
    GlobalTradingHalt,
    IssuedToken,
    PendingTrade,
    Platform,
    RiskPolicy,
    WebhookDelivery,
    WebhookEndpoint,
)
from controlplane.services import connections, platforms, tokens, trading, users, webhooks

admin.site.site_header = "Tradeplane operations"
admin.site.site_title = "Tradeplane"
admin.site.index_title = "Platforms, users, connections and the audit log"


def operator(request: HttpRequest) -> Actor:
    return Actor.operator(request.user.get_username())


class AuditedModelAdmin[M: Model](admin.ModelAdmin[M]):
    """Plain edits in the admin are audited too, naming the fields that changed."""

    def save_model(self, request: HttpRequest, obj: M, form: ModelForm[M], change: bool) -> None:
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            record(
                f"admin.{obj._meta.model_name}_{'changed' if change else 'added'}",
                actor=operator(request),
                target=f"{obj._meta.model_name}:{obj.pk}",
                detail={"fields": sorted(form.changed_data)},
            )

    def delete_model(self, request: HttpRequest, obj: M) -> None:
        with transaction.atomic():
            record(
                f"admin.{obj._meta.model_name}_deleted",
                actor=operator(request),
                target=f"{obj._meta.model_name}:{obj.pk}",
            )
            super().delete_model(request, obj)


def _report(request: HttpRequest, changed: int, total: int, what: str) -> None:
    messages.success(request, f"{what}: {changed} changed, {total - changed} already so.")


@admin.register(Platform)
class PlatformAdmin(AuditedModelAdmin[Platform]):
    list_display = [
        "name",
        "client_id",
        "is_active",
        "allowed_scopes",
        "trading_halted",
        "created_at",
    ]
    list_filter = ["is_active", "trading_halted"]
    search_fields = ["name", "=client_id"]
    readonly_fields = [
        "client_id",
        "created_at",
        "trading_halted",
        "trading_halted_reason",
        "trading_halted_at",
        "is_active",
    ]
    fields = [
        "name",
        "client_id",
        "allowed_scopes",
        "is_active",
        "rate_limit_per_minute",
        "trade_rate_limit_per_minute",
        "trading_halted",
        "trading_halted_reason",
        "trading_halted_at",
        "created_at",
    ]
    actions = ["deactivate", "reactivate", "halt_trading", "resume_trading"]

    def has_delete_permission(self, request: HttpRequest, obj: Platform | None = None) -> bool:
        return False  # deactivate instead: history must stay attached

    def save_model(
        self, request: HttpRequest, obj: Platform, form: ModelForm[Platform], change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created = platforms.create_platform(obj.name, scopes=obj.scopes, actor=operator(request))
        obj.pk, obj.client_id = created.platform.pk, created.platform.client_id
        obj.client_secret_digest = created.platform.client_secret_digest
        obj.created_at = created.platform.created_at
        obj._state.adding = False
        obj.save()
        messages.warning(
            request,
            f"Client secret for {obj.client_id} — copy it now, it is not shown again: "
            f"{created.client_secret}",
        )

    @admin.action(description="Deactivate (refuse all its tokens and credentials)")
    def deactivate(self, request: HttpRequest, queryset: QuerySet[Platform]) -> None:
        changed = sum(
            platforms.set_platform_active(p, False, actor=operator(request)) for p in queryset
        )
        _report(request, changed, queryset.count(), "Deactivated")

    @admin.action(description="Reactivate")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Platform]) -> None:
        changed = sum(
            platforms.set_platform_active(p, True, actor=operator(request)) for p in queryset
        )
        _report(request, changed, queryset.count(), "Reactivated")

    @admin.action(description="Halt trading (kill switch)")
    def halt_trading(self, request: HttpRequest, queryset: QuerySet[Platform]) -> None:
        changed = sum(
            platforms.set_trading_halted(p, True, reason="halted in admin", actor=operator(request))
            for p in queryset
        )
        _report(request, changed, queryset.count(), "Trading halted")

    @admin.action(description="Resume trading")
    def resume_trading(self, request: HttpRequest, queryset: QuerySet[Platform]) -> None:
        changed = sum(
            platforms.set_trading_halted(
                p, False, reason="resumed in admin", actor=operator(request)
            )
            for p in queryset
        )
        _report(request, changed, queryset.count(), "Trading resumed")


@admin.register(EndUser)
class EndUserAdmin(AuditedModelAdmin[EndUser]):
    list_display = ["user_id", "platform", "is_active", "max_scopes", "created_at", "deleted_at"]
    list_filter = ["is_active", ("deleted_at", admin.EmptyFieldListFilter), "platform"]
    search_fields = ["=user_id", "=platform__client_id"]
    list_select_related = ["platform"]
    fields = ["platform", "user_id", "max_scopes", "is_active", "created_at", "deleted_at"]
    readonly_fields = ["platform", "user_id", "is_active", "created_at", "deleted_at"]
    actions = ["deactivate", "reactivate", "revoke_tokens"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # platforms register users through the API, which returns the secret

    def has_delete_permission(self, request: HttpRequest, obj: EndUser | None = None) -> bool:
        return False

    @admin.action(description="Deactivate (refuse its tokens from the next request)")
    def deactivate(self, request: HttpRequest, queryset: QuerySet[EndUser]) -> None:
        changed = sum(
            users.set_end_user_active(u, False, actor=operator(request)) for u in queryset
        )
        _report(request, changed, queryset.count(), "Deactivated")

    @admin.action(description="Reactivate")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[EndUser]) -> None:
        changed = sum(users.set_end_user_active(u, True, actor=operator(request)) for u in queryset)
        _report(request, changed, queryset.count(), "Reactivated")

    @admin.action(description="Revoke all tokens")
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[EndUser]) -> None:
        revoked = sum(
            tokens.revoke_user_tokens(u, reason="revoked in admin", actor=operator(request))
            for u in queryset.select_related("platform")
        )
        messages.success(request, f"{revoked} token(s) revoked.")


class ConnectionActionForm(ActionForm):
    verifier = forms.CharField(
        required=False,
        max_length=64,
        widget=forms.TextInput(attrs={"placeholder": "verifier (to complete)"}),
    )


@admin.register(BrokerConnection)
class BrokerConnectionAdmin(AuditedModelAdmin[BrokerConnection]):
    action_form = ConnectionActionForm
    list_display = [
        "id",
        "end_user",
        "broker",
        "environment",
        "status",
        "trading_requested",
        "trading_enabled",
        "created_at",
    ]
    list_filter = ["broker", "environment", "status", "trading_requested", "trading_enabled"]
    search_fields = ["=id", "=end_user__user_id"]
    list_select_related = ["end_user__platform"]
    readonly_fields = (
        "id",
        "end_user",
        "broker",
        "environment",
        "status",
        "status_reason",
        "trading_requested",
        "trading_enabled",
        "token_issued_at",
        "token_last_used_at",
        "token_renewed_at",
        "token_expires_at",
        "created_at",
        "updated_at",
    )
    fields = readonly_fields
    actions = [
        "grant_trading",
        "revoke_trading",
        "revoke_connection",
        "reconnect",
        "complete_authorization",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: BrokerConnection | None = None
    ) -> bool:
        return False  # use "Revoke connection": credentials wiped, history kept

    @admin.action(description="Grant trading")
    def grant_trading(self, request: HttpRequest, queryset: QuerySet[BrokerConnection]) -> None:
        changed = sum(
            connections.set_trading_enabled(c, True, actor=operator(request)) for c in queryset
        )
        _report(request, changed, queryset.count(), "Trading granted")

    @admin.action(description="Revoke trading")
    def revoke_trading(self, request: HttpRequest, queryset: QuerySet[BrokerConnection]) -> None:
        changed = sum(
            connections.set_trading_enabled(c, False, actor=operator(request)) for c in queryset
        )
        _report(request, changed, queryset.count(), "Trading revoked")

    @admin.action(description="Reconnect: start a new authorization for the same user and broker")
    def reconnect(self, request: HttpRequest, queryset: QuerySet[BrokerConnection]) -> None:
        for old in queryset.select_related("end_user"):
            try:
                started = connections.start_connection(
                    old.end_user,
                    broker=old.broker,
                    environment=old.environment,
                    trading_requested=old.trading_requested,
                    actor=operator(request),
                )
            except ControlPlaneError as exc:
                messages.error(request, f"{old.pk}: {exc.code}: {exc.message}")
                continue
            if started.authorization is None:
                messages.success(request, f"New connection {started.connection.pk} is active.")
            else:
                messages.success(
                    request,
                    f"New connection {started.connection.pk}: send the person to "
                    f"{started.authorization.authorize_url} (valid until "
                    f"{started.authorization.expires_at:%H:%M:%S} UTC), then complete it "
                    "with the verifier they are shown.",
                )

    @admin.action(description="Complete authorization with the verifier")
    def complete_authorization(
        self, request: HttpRequest, queryset: QuerySet[BrokerConnection]
    ) -> None:
        verifier = request.POST.get("verifier", "").strip()
        if not verifier or queryset.count() != 1:
            messages.error(request, "Select one connection and enter its verifier.")
            return
        try:
            done = connections.complete_connection(
                queryset.get(), verifier, actor=operator(request)
            )
        except ControlPlaneError as exc:
            messages.error(request, f"{exc.code}: {exc.message}")
            return
        messages.success(request, f"Connection {done.pk} is {done.status}.")

    @admin.action(description="Revoke connection (wipes its credentials)")
    def revoke_connection(self, request: HttpRequest, queryset: QuerySet[BrokerConnection]) -> None:
        changed = sum(connections.revoke_connection(c, actor=operator(request)) for c in queryset)
        _report(request, changed, queryset.count(), "Revoked")


@admin.register(RiskPolicy)
class RiskPolicyAdmin(AuditedModelAdmin[RiskPolicy]):
    list_display = [
        "__str__",
        "platform",
        "end_user",
        "connection",
        "max_order_value",
        "max_orders_per_day",
        "approval_threshold_value",
        "updated_at",
    ]
    list_filter = ["platform"]
    raw_id_fields = ["end_user", "connection"]


@admin.register(IssuedToken)
class IssuedTokenAdmin(admin.ModelAdmin[IssuedToken]):
    list_display = [
        "jti",
        "platform",
        "end_user",
        "scopes",
        "key_id",
        "issued_at",
        "expires_at",
        "revoked_at",
    ]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "scopes", "platform"]
    search_fields = ["=jti", "=end_user__user_id"]
    list_select_related = ["platform", "end_user"]
    show_full_result_count = False
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Revoke (effective on the token's next request)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[IssuedToken]) -> None:
        count = 0
        for issued in queryset.filter(revoked_at__isnull=True):
            tokens.revoke_token_by_jti(
                issued.jti, reason="revoked in admin", actor=operator(request)
            )
            count += 1
        messages.success(request, f"{count} token(s) revoked.")


class TradeActionForm(ActionForm):
    reason = forms.CharField(
        required=False,
        max_length=500,
        widget=forms.TextInput(attrs={"placeholder": "reason (to reject)"}),
    )


class AwaitingApprovalFilter(admin.SimpleListFilter):
    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("approval", "Awaiting approval"), ("open", "Open (pending or awaiting)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "approval":
            return queryset.filter(status=PendingTrade.Status.AWAITING_APPROVAL)
        if self.value() == "open":
            return queryset.filter(status__in=PendingTrade.OPEN_STATUSES)
        return queryset


@admin.register(PendingTrade)
class PendingTradeAdmin(admin.ModelAdmin[PendingTrade]):
    """The pending-trades queue: operators approve or reject trades above the threshold."""

    list_display = [
        "created_at",
        "summary",
        "status",
        "end_user",
        "notional",
        "expires_at",
        "broker_order_id",
    ]
    list_filter = [AwaitingApprovalFilter, "status", "kind"]
    search_fields = [
        "=confirmation_id",
        "=client_order_id",
        "=broker_order_id",
        "=end_user__user_id",
    ]
    list_select_related = ["end_user"]
    show_full_result_count = False
    action_form = TradeActionForm
    actions = ["approve", "reject"]
    readonly_fields = [f.name for f in PendingTrade._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Approve (the person may then confirm)")
    def approve(self, request: HttpRequest, queryset: QuerySet[PendingTrade]) -> None:
        self._each(
            request,
            queryset,
            lambda t: trading.approve_trade(t.confirmation_id, actor=operator(request)),
            "approved",
        )

    @admin.action(description="Reject (give a reason)")
    def reject(self, request: HttpRequest, queryset: QuerySet[PendingTrade]) -> None:
        reason = request.POST.get("reason", "").strip()
        if not reason:
            messages.error(request, "Give a reason to reject.")
            return
        self._each(
            request,
            queryset,
            lambda t: trading.reject_trade(
                t.confirmation_id, reason=reason, actor=operator(request)
            ),
            "rejected",
        )

    def _each(
        self, request: HttpRequest, queryset: QuerySet[PendingTrade], act: Any, what: str
    ) -> None:
        done = 0
        for trade in queryset:
            try:
                act(trade)
                done += 1
            except ControlPlaneError as exc:
                messages.warning(request, f"{trade.confirmation_id}: {exc.message}")
        messages.success(request, f"{done} trade(s) {what}.")


@admin.register(GlobalTradingHalt)
class GlobalTradingHaltAdmin(admin.ModelAdmin[GlobalTradingHalt]):
    """The kill switch for every platform. Changes go through the audited service."""

    list_display = ["__str__", "reason", "updated_at"]
    fields = ["halted", "reason", "updated_at"]
    readonly_fields = ["updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not GlobalTradingHalt.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(
        self,
        request: HttpRequest,
        obj: GlobalTradingHalt,
        form: ModelForm[GlobalTradingHalt],
        change: bool,
    ) -> None:
        platforms.set_global_halt(obj.halted, reason=obj.reason or "admin", actor=operator(request))
        obj.pk = 1


class WebhookEndpointForm(forms.ModelForm[WebhookEndpoint]):
    class Meta:
        model = WebhookEndpoint
        fields = ["platform", "url"]

    def clean_url(self) -> str:
        try:
            return webhooks.check_url(self.cleaned_data["url"])
        except ControlPlaneError as exc:
            raise forms.ValidationError(exc.message) from exc


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin[WebhookEndpoint]):
    """A platform's webhook URL. Registering one shows its signing secret once; every change
    goes through the audited webhook service."""

    list_display = ["platform", "url", "created_at", "updated_at"]
    search_fields = ["=platform__client_id", "url"]
    list_select_related = ["platform"]
    form = WebhookEndpointForm
    fields = ["platform", "url", "created_at", "updated_at"]
    readonly_fields = ["created_at", "updated_at"]
    actions = ["rotate_secret"]

    def get_readonly_fields(
        self, request: HttpRequest, obj: WebhookEndpoint | None = None
    ) -> list[str]:
        return [*self.readonly_fields, "platform"] if obj is not None else self.readonly_fields

    def save_model(
        self,
        request: HttpRequest,
        obj: WebhookEndpoint,
        form: ModelForm[WebhookEndpoint],
        change: bool,
    ) -> None:
        registration = webhooks.set_webhook(obj.platform, url=obj.url, actor=operator(request))
        obj.pk = registration.endpoint.pk
        obj.secret_ciphertext = registration.endpoint.secret_ciphertext
        obj.created_at = registration.endpoint.created_at
        obj.updated_at = registration.endpoint.updated_at
        obj._state.adding = False
        if registration.signing_secret:
            _show_secret_once(request, obj, registration.signing_secret)

    def delete_model(self, request: HttpRequest, obj: WebhookEndpoint) -> None:
        webhooks.delete_webhook(obj.platform, actor=operator(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset.select_related("platform"):
            webhooks.delete_webhook(endpoint.platform, actor=operator(request))

    @admin.action(description="Rotate the signing secret (shown once)")
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset.select_related("platform"):
            try:
                secret = webhooks.rotate_signing_secret(endpoint, actor=operator(request))
            except ControlPlaneError as exc:
                messages.error(request, f"{endpoint.platform.client_id}: {exc.message}")
                continue
            _show_secret_once(request, endpoint, secret)


def _show_secret_once(request: HttpRequest, endpoint: WebhookEndpoint, secret: str) -> None:
    messages.warning(
        request,
        f"Signing secret for the webhook of {endpoint.platform.client_id} — copy it now, it "
        f"is not shown again: {secret}",
    )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin[WebhookDelivery]):
    """The delivery log: read-only. Operators may send a failed event once more."""

    list_display = [
        "created_at",
        "event_type",
        "platform",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "delivered_at",
    ]
    list_filter = ["status", "event_type", "platform"]
    search_fields = ["=event_id", "=platform__client_id"]
    list_select_related = ["platform"]
    show_full_result_count = False
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    actions = ["retry"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Send again (failed deliveries, one more attempt)")
    def retry(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        changed = sum(
            webhooks.retry_delivery(d, actor=operator(request))
            for d in queryset.select_related("platform")
        )
        _report(request, changed, queryset.count(), "Sent again")
