"""Hashing and verification of the audit chain."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from audit.models import AuditEvent

GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def compute_hash(event: AuditEvent) -> str:
    return hashlib.sha256(canonical_json(event.canonical_fields()).encode()).hexdigest()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str = ""


def verify_events(events: Iterable[AuditEvent]) -> Verdict:
    """Walk the chain in `seq` order; name the first row that does not fit.

    Sequence numbers must run 1, 2, 3, ... without gaps (a deleted row leaves one), each
    row's `prev_hash` must be the previous row's `hash`, and each `hash` must match the
    row's content (an edited or swapped row breaks that).
    """
    expected_seq, prev_hash, rows = 1, GENESIS_HASH, 0
    for event in events:
        if event.seq != expected_seq:
            problem = f"row {expected_seq} is missing (next row is {event.seq})"
            return Verdict(False, rows, expected_seq - 1, prev_hash, expected_seq, problem)
        if event.prev_hash != prev_hash:
            problem = "prev_hash does not match the hash of the row before"
            return Verdict(False, rows, expected_seq - 1, prev_hash, event.seq, problem)
        if compute_hash(event) != event.hash:
            problem = "content does not match its hash (edited or moved)"
            return Verdict(False, rows, expected_seq - 1, prev_hash, event.seq, problem)
        rows += 1
        prev_hash = event.hash
        expected_seq += 1
    return Verdict(True, rows, expected_seq - 1, prev_hash)


def verify_chain(chunk_size: int = 5000) -> Verdict:
    return verify_events(AuditEvent.objects.order_by("seq").iterator(chunk_size=chunk_size))
