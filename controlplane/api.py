"""The REST API for platforms (django-ninja). Endpoints only parse, authenticate and call
a service; every error leaves through `render_error` in one JSON shape."""

from __future__ import annotations

from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any
from uuid import UUID

from django.http import HttpRequest, HttpResponse
from ninja import Header, NinjaAPI, Router, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import APIKeyHeader
from pydantic import Field

from audit.events import Actor
from controlplane.accesstokens import jwks
from controlplane.authn import authenticate_platform
from controlplane.errors import ControlPlaneError, InvalidArgument, InvalidCredentials, NotFound
from controlplane.models import BrokerConnection, EndUser, Platform, WebhookEndpoint
from controlplane.schemas import (
    ConnectionCompleteIn,
    ConnectionIn,
    ConnectionOut,
    ErrorOut,
    MintIn,
    NewUserOut,
    RevokedOut,
    RevokeIn,
    StrictSchema,
    TokenOut,
    UserIn,
    UserOut,
)
from controlplane.services import connections, tokens, users, webhooks

api = NinjaAPI(
    title="Tradeplane API",
    version="1",
    description=(
        "Platform API: register end users, connect their brokerage accounts and mint "
        "short-lived MCP access tokens. Authenticate with the `client-id` and "
        "`client-secret` headers."
    ),
    docs_url="/api/docs",
    openapi_url="/api/openapi.json",
    urls_namespace="api",
)


def render_error(request: HttpRequest, error: ControlPlaneError) -> HttpResponse:
    response = api.create_response(
        request, {"error": {"code": error.code, "message": error.message}}, status=error.status
    )
    for name, value in error.headers().items():
        response[name] = value
    return response


@api.exception_handler(ControlPlaneError)
def on_domain_error(request: HttpRequest, exc: ControlPlaneError) -> HttpResponse:
    return render_error(request, exc)


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ())[1:]) or 'body'}: {err.get('msg', '')}"
        for err in exc.errors
    )
    return render_error(request, InvalidArgument(problems or "invalid request"))


@api.exception_handler(AuthenticationError)
def on_auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return render_error(request, InvalidCredentials())


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    # django-ninja raises 400 for a body that is not JSON: a malformed body, like any other.
    if exc.status_code == HTTPStatus.BAD_REQUEST:
        return render_error(request, InvalidArgument(f"body: {exc}"))
    error = ControlPlaneError(str(exc))
    error.code, error.status = "error", HTTPStatus(exc.status_code)
    return render_error(request, error)


class PlatformCredentials(APIKeyHeader):
    """`client-id` and `client-secret` headers -> the authenticated Platform.

    A missing header is a bad credential like any other: the same 401."""

    param_name = "client-secret"

    def __call__(self, request: HttpRequest) -> Platform:
        return self.authenticate(request, request.headers.get("client-secret"))

    def authenticate(self, request: HttpRequest, key: str | None) -> Platform:
        return authenticate_platform(request.headers.get("client-id", ""), key or "")


def _platform(request: HttpRequest) -> Platform:
    platform: Platform = request.auth  # type: ignore[attr-defined]
    return platform


ERRORS: dict[int, Any] = {
    401: ErrorOut,
    403: ErrorOut,
    404: ErrorOut,
    409: ErrorOut,
    422: ErrorOut,
    429: ErrorOut,
    502: ErrorOut,
    503: ErrorOut,
}

auth_router = Router(tags=["tokens"])
platform_router = Router(tags=["users and connections"], auth=PlatformCredentials())
webhook_router = Router(tags=["webhook"], auth=PlatformCredentials())


@auth_router.post("/tokens/user", response={200: TokenOut, **ERRORS})
def mint_user_token(
    request: HttpRequest,
    body: MintIn,
    client_id: Annotated[str, Header(alias="client-id")] = "",
    client_secret: Annotated[str, Header(alias="client-secret")] = "",
    user_id: Annotated[str, Header(alias="user-id")] = "",
    user_secret: Annotated[str, Header(alias="user-secret")] = "",
) -> TokenOut:
    """Mint a 1-hour access token for one end user, for exactly the scopes asked for."""
    minted = tokens.mint_user_token(
        client_id=client_id,
        client_secret=client_secret,
        user_id=user_id,
        user_secret=user_secret,
        scopes=frozenset(body.scopes),
    )
    return TokenOut(
        access_token=minted.access_token,
        expires_in=minted.expires_in,
        scopes=sorted(minted.scopes),  # type: ignore[arg-type]
    )


@auth_router.post(
    "/tokens/revoke", response={200: RevokedOut, **ERRORS}, auth=PlatformCredentials()
)
def revoke_token(request: HttpRequest, body: RevokeIn) -> RevokedOut:
    """Revoke one of the platform's tokens by `jti` or by the token itself. Takes effect on
    the token's next request."""
    platform = _platform(request)
    issued = tokens.revoke_token(
        platform, jti=body.jti, token=body.token, actor=Actor.platform(platform.client_id)
    )
    return RevokedOut(jti=issued.jti, revoked=issued.is_revoked, revoked_at=issued.revoked_at)


def _user_out(user: EndUser) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "active": user.is_active,
        "scopes": sorted(user.scopes),
        "created_at": user.created_at,
    }


def _live_user(platform: Platform, user_id: str) -> EndUser:
    user = EndUser.objects.live().filter(platform=platform, user_id=user_id).first()
    if user is None:
        raise NotFound(f"no user {user_id!r}")
    return user


@platform_router.post("/users", response={201: NewUserOut, **ERRORS})
def create_user(request: HttpRequest, body: UserIn) -> Status[dict[str, Any]]:
    """Register an end user. The `user_secret` is returned here once and never again."""
    platform = _platform(request)
    created = users.create_end_user(
        platform,
        user_id=body.user_id,
        scopes=frozenset(body.scopes) if body.scopes is not None else None,
        actor=Actor.platform(platform.client_id),
    )
    return Status(201, {**_user_out(created.end_user), "user_secret": created.user_secret})


@platform_router.get("/users/{user_id}", response={200: UserOut, **ERRORS})
def get_user(request: HttpRequest, user_id: str) -> dict[str, Any]:
    return _user_out(_live_user(_platform(request), user_id))


@platform_router.delete("/users/{user_id}", response={204: None, **ERRORS})
def delete_user(request: HttpRequest, user_id: str) -> Status[None]:
    """Delete an end user: its tokens and broker connections are revoked at once."""
    platform = _platform(request)
    users.delete_end_user(_live_user(platform, user_id), actor=Actor.platform(platform.client_id))
    return Status(204, None)


@platform_router.post("/users/{user_id}/connections", response={201: ConnectionOut, **ERRORS})
def create_connection(
    request: HttpRequest, user_id: str, body: ConnectionIn
) -> Status[ConnectionOut]:
    """Connect a brokerage account. The paper broker is active at once; OAuth brokers
    (E*TRADE) answer with an `authorize_url` for the person, valid 5 minutes, and wait in
    `pending_authorization` for the verifier. Trading stays off until an operator grants it."""
    platform = _platform(request)
    started = connections.start_connection(
        _live_user(platform, user_id),
        broker=body.broker,
        environment=body.environment,
        trading_requested=body.trading_requested,
        actor=Actor.platform(platform.client_id),
    )
    out = ConnectionOut.from_orm(started.connection)
    if started.authorization is not None:
        out.authorize_url = started.authorization.authorize_url
        out.authorization_expires_at = started.authorization.expires_at
    return Status(201, out)


@platform_router.post(
    "/connections/{connection_id}/complete", response={200: ConnectionOut, **ERRORS}
)
def complete_connection(
    request: HttpRequest, connection_id: UUID, body: ConnectionCompleteIn
) -> BrokerConnection:
    """Finish connecting an OAuth broker with the verifier the person was shown after
    approving: the connection becomes active and its accounts are discovered."""
    platform = _platform(request)
    return connections.complete_connection(
        _platform_connection(platform, connection_id),
        body.verifier,
        actor=Actor.platform(platform.client_id),
    )


@platform_router.get("/users/{user_id}/connections", response={200: list[ConnectionOut], **ERRORS})
def list_connections(request: HttpRequest, user_id: str) -> list[BrokerConnection]:
    user = _live_user(_platform(request), user_id)
    return list(user.connections.exclude(status=BrokerConnection.Status.REVOKED))


@platform_router.delete("/connections/{connection_id}", response={204: None, **ERRORS})
def delete_connection(request: HttpRequest, connection_id: UUID) -> Status[None]:
    """Disconnect: the broker's token is revoked and the stored credentials wiped."""
    platform = _platform(request)
    connection = _platform_connection(platform, connection_id)
    connections.revoke_connection(connection, actor=Actor.platform(platform.client_id))
    return Status(204, None)


def _platform_connection(platform: Platform, connection_id: UUID) -> BrokerConnection:
    """One of the platform's live connections; another platform's looks like a missing one."""
    connection = (
        BrokerConnection.objects.select_related("end_user__platform")
        .filter(pk=connection_id, end_user__platform=platform, end_user__deleted_at__isnull=True)
        .exclude(status=BrokerConnection.Status.REVOKED)
        .first()
    )
    if connection is None:
        raise NotFound("no such connection")
    return connection


# ---- Webhook ----------------------------------------------------------------------------
# The schemas of these routes live here with them (schemas.py holds the older ones).


class WebhookIn(StrictSchema):
    url: str = Field(min_length=1, max_length=2000, examples=["https://example.com/hooks/tp"])
    rotate_secret: bool = Field(
        default=False, description="Replace the signing secret; the new one is returned once."
    )


class WebhookOut(Schema):
    url: str
    created_at: datetime
    updated_at: datetime
    signing_secret: str | None = Field(
        default=None, description="Only when the endpoint is new or its secret was rotated."
    )
    events: list[str]


class WebhookTestOut(Schema):
    event_id: str
    event_type: str
    status: str


WEBHOOK_EVENTS = sorted(
    value
    for name, value in vars(webhooks.EventType).items()
    if name.isupper() and value != webhooks.EventType.WEBHOOK_TEST
)


def _webhook_out(endpoint: WebhookEndpoint, signing_secret: str | None = None) -> WebhookOut:
    return WebhookOut(
        url=endpoint.url,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
        signing_secret=signing_secret,
        events=WEBHOOK_EVENTS,
    )


@webhook_router.put("/webhook", response={200: WebhookOut, 201: WebhookOut, **ERRORS})
def set_webhook(request: HttpRequest, body: WebhookIn) -> Status[WebhookOut]:
    """Register the URL that receives this platform's signed events, or change it. A new
    endpoint (201) gets a `signing_secret`, returned here once and never again."""
    platform = _platform(request)
    registration = webhooks.set_webhook(
        platform,
        url=body.url,
        rotate_secret=body.rotate_secret,
        actor=Actor.platform(platform.client_id),
    )
    return Status(
        201 if registration.created else 200,
        _webhook_out(registration.endpoint, registration.signing_secret),
    )


@webhook_router.get("/webhook", response={200: WebhookOut, **ERRORS})
def get_webhook(request: HttpRequest) -> WebhookOut:
    return _webhook_out(webhooks.get_webhook(_platform(request)))


@webhook_router.delete("/webhook", response={204: None, **ERRORS})
def delete_webhook(request: HttpRequest) -> Status[None]:
    """Stop sending events. Events not delivered yet are cancelled."""
    platform = _platform(request)
    if not webhooks.delete_webhook(platform, actor=Actor.platform(platform.client_id)):
        raise NotFound("no webhook is registered")
    return Status(204, None)


@webhook_router.post("/webhook/test", response={202: WebhookTestOut, **ERRORS})
def test_webhook(request: HttpRequest) -> Status[WebhookTestOut]:
    """Send a `webhook.test` event to the registered URL (asynchronously)."""
    delivery = webhooks.send_test_event(_platform(request))
    return Status(
        202,
        WebhookTestOut(
            event_id=delivery.event_id, event_type=delivery.event_type, status=delivery.status
        ),
    )


@api.get("/.well-known/jwks.json", tags=["tokens"], include_in_schema=True)
def jwks_document(request: HttpRequest) -> dict[str, Any]:
    """Public keys that verify access tokens (signing key first)."""
    return jwks()


api.add_router("/auth", auth_router)
api.add_router("/v1", platform_router)
api.add_router("/v1", webhook_router)
