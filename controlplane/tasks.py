"""Celery tasks: the scheduled sweeps and webhook delivery. Each one only calls a service.

Every task is idempotent and safe to run twice at once, or again after its worker was
killed (acks_late with reject_on_worker_lost redelivers it): the services record each
change with a conditional UPDATE on the state it came from. The sweeps take no arguments
and the others take ids. A task is retried, with backoff, only for errors that may pass by
themselves (a broker or database connection); anything else fails the run, and the next
scheduled run starts afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task
from django.db import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from brokers.base import BrokerError
from brokers.paper.services import evaluate_open_orders
from controlplane.celery import app
from controlplane.services import broker_tokens, orders, trading, webhooks

RETRY_BASE_SECONDS = 5
RETRY_MAX_SECONDS = 300  # below the broker's visibility timeout, or retries would repeat


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, BrokerError):
        return exc.transient
    return isinstance(
        exc, OperationalError | InterfaceError | RedisConnectionError | RedisTimeoutError
    )


class BackgroundTask(Task):  # type: ignore[misc]
    acks_late = True
    reject_on_worker_lost = True
    max_retries = 5

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = min(RETRY_BASE_SECONDS * 2**self.request.retries, RETRY_MAX_SECONDS)
            raise self.retry(exc=exc, countdown=delay) from exc


def background_task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """`app.task` with the base above (typed here: Celery ships no type hints)."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(base=BackgroundTask, **options)
    return decorator


@background_task()
def renew_broker_tokens() -> dict[str, int]:
    return vars(broker_tokens.renew_broker_tokens())


@background_task()
def expire_pending_trades() -> int:
    return trading.expire_pending_trades()


@background_task()
def reconcile_unknown_trades() -> dict[str, int]:
    return vars(orders.reconcile_unknown_trades())


@background_task()
def follow_open_orders() -> dict[str, int]:
    return vars(orders.follow_open_orders())


@background_task()
def evaluate_paper_orders() -> int:
    """Resting paper limit and stop orders meet the market even when nobody reads them."""
    return evaluate_open_orders()


@background_task()
def send_pending_webhooks() -> int:
    return webhooks.dispatch_due_deliveries()


# Its own limits, below webhooks.CLAIM_LEASE: an attempt ends before its claim lapses.
@background_task(soft_time_limit=30, time_limit=45)
def deliver_webhook(delivery_id: int, attempt: int) -> str:
    return webhooks.deliver(delivery_id, attempt)
