"""Typed domain errors. Each carries a stable machine code and an HTTP status; the REST
API renders them in one place (controlplane.api) as {"error": {"code", "message"}}."""

from __future__ import annotations

from http import HTTPStatus

from brokers.base import BrokerError


class ControlPlaneError(Exception):
    code = "error"
    status = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        return {}


class InvalidCredentials(ControlPlaneError):
    """Always the same message, whichever credential was wrong."""

    code = "invalid_credentials"
    status = HTTPStatus.UNAUTHORIZED

    def __init__(self) -> None:
        super().__init__("The credentials are not valid.")

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Tradeplane realm="platform"'}


class ForbiddenScope(ControlPlaneError):
    code = "forbidden_scope"
    status = HTTPStatus.FORBIDDEN


class NotFound(ControlPlaneError):
    code = "not_found"
    status = HTTPStatus.NOT_FOUND


class Conflict(ControlPlaneError):
    code = "conflict"
    status = HTTPStatus.CONFLICT


class InvalidArgument(ControlPlaneError):
    code = "invalid_argument"
    status = HTTPStatus.UNPROCESSABLE_ENTITY


class Throttled(ControlPlaneError):
    code = "rate_limited"
    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, int(-(-retry_after // 1)))
        super().__init__(f"Too many failed attempts; retry after {self.retry_after} seconds.")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServiceUnavailable(ControlPlaneError):
    code = "unavailable"
    status = HTTPStatus.SERVICE_UNAVAILABLE


class BrokerFailure(ControlPlaneError):
    """A broker refused or failed; the message keeps the broker's own reason."""

    code = "broker_error"
    status = HTTPStatus.BAD_GATEWAY

    def __init__(self, error: BrokerError) -> None:
        super().__init__(f"{error.code}: {error.broker_message}")
        self.error = error
        if error.transient:
            self.code, self.status = "broker_unavailable", HTTPStatus.SERVICE_UNAVAILABLE


class TradingDisabled(ControlPlaneError):
    code = "trading_disabled"
    status = HTTPStatus.FORBIDDEN


class TradingHalted(ControlPlaneError):
    code = "trading_halted"
    status = HTTPStatus.FORBIDDEN


class RiskRejected(ControlPlaneError):
    code = "risk_rejected"
    status = HTTPStatus.UNPROCESSABLE_ENTITY


class ConfirmationExpired(ControlPlaneError):
    code = "confirmation_expired"
    status = HTTPStatus.GONE


class ConfirmationUsed(ControlPlaneError):
    code = "confirmation_used"
    status = HTTPStatus.CONFLICT


class ElicitationRequired(ControlPlaneError):
    """The policy wants the person to confirm in their MCP client's own dialog."""

    code = "elicitation_required"
    status = HTTPStatus.FORBIDDEN


class AwaitingApproval(ControlPlaneError):
    code = "awaiting_approval"
    status = HTTPStatus.CONFLICT
