"""Maps a connection's broker key to its adapter, imported on first use."""

from __future__ import annotations

# broker key -> (label, dotted path of the adapter class). Filled as adapters land.
BROKERS: dict[str, tuple[str, str]] = {}


def available_brokers() -> list[str]:
    return sorted(BROKERS)


def is_known_broker(key: str) -> bool:
    return key in BROKERS
