"""The append-only, hash-chained audit log.

Rows are never updated or deleted: database triggers refuse it (see the migrations). Each
row carries the hash of the row before it, so an edit, a deletion or a reordering is found
by `manage.py verify_audit`.
"""

from __future__ import annotations

from typing import Any

from django.db import models


class ActorKind(models.TextChoices):
    PLATFORM = "platform"
    END_USER = "end_user"
    OPERATOR = "operator"
    SYSTEM = "system"
    ANONYMOUS = "anonymous"


class AuditEvent(models.Model):
    """One security-relevant event.

    Subjects are stored as strings (client id, user id, token jti, target reference), never
    as foreign keys, so the record outlives the rows it speaks of.
    """

    seq = models.BigIntegerField(unique=True, editable=False)
    created_at = models.DateTimeField(db_index=True, editable=False)
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices, editable=False)
    actor_id = models.CharField(max_length=200, blank=True, editable=False)
    platform = models.CharField(max_length=64, blank=True, db_index=True, editable=False)
    end_user = models.CharField(max_length=128, blank=True, db_index=True, editable=False)
    jti = models.CharField(max_length=64, blank=True, db_index=True, editable=False)
    action = models.CharField(max_length=64, db_index=True, editable=False)
    target = models.CharField(max_length=200, blank=True, editable=False)
    request_id = models.CharField(max_length=128, blank=True, editable=False)
    outcome = models.CharField(max_length=64, default="ok", db_index=True, editable=False)
    latency_ms = models.FloatField(null=True, blank=True, editable=False)
    detail = models.JSONField(default=dict, editable=False)
    prev_hash = models.CharField(max_length=64, editable=False)
    hash = models.CharField(max_length=64, unique=True, editable=False)

    class Meta:
        ordering = ["-seq"]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} ({self.outcome})"

    def canonical_fields(self) -> dict[str, Any]:
        """Everything the hash covers, in a form that survives a database round trip."""
        return {
            "seq": self.seq,
            "created_at": self.created_at.isoformat(timespec="microseconds"),
            "actor_kind": self.actor_kind,
            "actor_id": self.actor_id,
            "platform": self.platform,
            "end_user": self.end_user,
            "jti": self.jti,
            "action": self.action,
            "target": self.target,
            "request_id": self.request_id,
            "outcome": self.outcome,
            "latency_ms": self.latency_ms,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
        }
