"""Maps a connection's broker key to its adapter class, imported on first use."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from brokers.base import BrokerAdapter
    from controlplane.models import BrokerConnection

# broker key -> (label, dotted path of the adapter class)
BROKERS: dict[str, tuple[str, str]] = {
    "paper": ("Paper trading (simulated)", "brokers.paper.adapter.PaperBroker"),
    "etrade": ("E*TRADE", "brokers.etrade.adapter.ETradeBroker"),
}


def available_brokers() -> list[str]:
    return sorted(BROKERS)


def is_known_broker(key: str) -> bool:
    return key in BROKERS


@cache
def adapter_class(key: str) -> type[BrokerAdapter]:
    cls: type[BrokerAdapter] = import_string(BROKERS[key][1])
    return cls


def get_adapter(connection: BrokerConnection) -> BrokerAdapter:
    return adapter_class(connection.broker)(connection)
