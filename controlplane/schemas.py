"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from ninja import Schema
from pydantic import ConfigDict, Field, model_validator

from controlplane.models import USER_ID_PATTERN

ScopeName = Literal["read", "trade"]


class StrictSchema(Schema):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(Schema):
    code: str
    message: str


class ErrorOut(Schema):
    error: ErrorBody


class MintIn(StrictSchema):
    scopes: list[ScopeName] = Field(min_length=1, max_length=2, examples=[["read", "trade"]])


class TokenOut(Schema):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    scopes: list[ScopeName]


class RevokeIn(StrictSchema):
    jti: str | None = Field(default=None, max_length=64)
    token: str | None = Field(default=None, max_length=4096)

    @model_validator(mode="after")
    def exactly_one(self) -> RevokeIn:
        if (self.jti is None) == (self.token is None):
            raise ValueError("give exactly one of jti or token")
        return self


class RevokedOut(Schema):
    jti: str
    revoked: bool
    revoked_at: datetime | None


class UserIn(StrictSchema):
    user_id: str | None = Field(default=None, pattern=USER_ID_PATTERN, max_length=128)
    scopes: list[ScopeName] | None = Field(default=None, min_length=1, max_length=2)


class UserOut(Schema):
    user_id: str
    active: bool
    scopes: list[ScopeName]
    created_at: datetime


class NewUserOut(UserOut):
    user_secret: str


class ConnectionIn(StrictSchema):
    broker: str = Field(min_length=1, max_length=32)
    environment: Literal["paper", "sandbox", "production"] | None = Field(
        default=None, description="Defaults to 'paper' for the paper broker, else 'sandbox'."
    )
    trading_requested: bool = False


class ConnectionOut(Schema):
    id: UUID
    broker: str
    environment: str
    status: str
    status_reason: str
    trading_requested: bool
    trading_enabled: bool
    created_at: datetime
    authorize_url: str | None = Field(
        default=None,
        description="OAuth brokers: where the person approves access; then POST the verifier "
        "they are shown to /v1/connections/{id}/complete.",
    )
    authorization_expires_at: datetime | None = Field(
        default=None, description="The authorize_url works until then (5 minutes)."
    )


class ConnectionCompleteIn(StrictSchema):
    verifier: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9]+$", description="From the broker"
    )
