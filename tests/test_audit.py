"""The audit log: append-only in the database, a hash chain that finds tampering, and one
unbroken chain under concurrent writers."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, close_old_connections, connection, transaction

from audit.chain import GENESIS_HASH, verify_chain
from audit.events import Actor, record, redact_detail
from audit.models import AuditEvent

ROOT = Path(__file__).resolve().parent.parent


def write_events(count: int, prefix: str = "test") -> list[AuditEvent]:
    return [
        record(f"{prefix}.event", actor=Actor.system("tests"), detail={"n": n})
        for n in range(count)
    ]


@contextmanager
def triggers_off() -> Iterator[None]:
    """What an attacker with superuser rights could do: bypass the triggers."""
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = DEFAULT")


def verify_output() -> tuple[bool, dict]:
    out = io.StringIO()
    try:
        call_command("verify_audit", "--json", stdout=out)
        ok = True
    except CommandError:
        ok = False
    return ok, json.loads(out.getvalue())


def test_rows_chain_from_the_genesis_hash(db: None) -> None:
    first, second = write_events(2)
    assert (first.seq, first.prev_hash) == (1, GENESIS_HASH)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert verify_chain().ok


def test_detail_is_redacted(db: None) -> None:
    detail = {
        "client_secret": "tp_cs_abc",
        "nested": {"access_token": "x"},
        "note": "Bearer eyJhbGciOi.eyJzdWIi.sig",
        "jti": "keep-me",
        "count": 3,
    }
    event = record("test.redaction", actor=Actor.system(), detail=detail)
    event.refresh_from_db()
    assert event.detail == {
        "client_secret": "[redacted]",
        "nested": {"access_token": "[redacted]"},
        "note": "[redacted]",
        "jti": "keep-me",
        "count": 3,
    }
    assert redact_detail({"list": ["tp_us_secret"]}) == {"list": ["[redacted]"]}


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_auditevent SET outcome = 'forged'",
        "DELETE FROM audit_auditevent",
        "TRUNCATE audit_auditevent",
    ],
)
def test_the_database_refuses_to_change_audit_rows(db: None, statement: str) -> None:
    write_events(1)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement)
    assert AuditEvent.objects.get().outcome == "ok"


def test_the_orm_cannot_update_or_delete_either(db: None) -> None:
    (event,) = write_events(1)
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(DatabaseError), transaction.atomic():
        event.delete()
    assert AuditEvent.objects.count() == 1


def test_verify_passes_on_an_intact_chain(db: None) -> None:
    write_events(5)
    ok, data = verify_output()
    assert ok
    assert (data["rows"], data["head_seq"]) == (5, 5)


def test_verify_names_an_edited_row(db: None) -> None:
    write_events(5)
    with triggers_off():
        AuditEvent.objects.filter(seq=3).update(outcome="forged")
    ok, data = verify_output()
    assert not ok
    assert data["first_bad_seq"] == 3
    assert "content" in data["problem"]


def test_verify_names_a_row_edited_in_its_detail(db: None) -> None:
    write_events(5)
    with triggers_off():
        AuditEvent.objects.filter(seq=2).update(detail={"n": 99})
    assert verify_output()[1]["first_bad_seq"] == 2


def test_verify_names_a_deleted_row(db: None) -> None:
    write_events(5)
    with triggers_off():
        AuditEvent.objects.filter(seq=4).delete()
    ok, data = verify_output()
    assert not ok
    assert data["first_bad_seq"] == 4
    assert "missing" in data["problem"]


def test_verify_names_reordered_rows(db: None) -> None:
    write_events(5)
    two, three = AuditEvent.objects.get(seq=2), AuditEvent.objects.get(seq=3)
    with triggers_off():
        # Swap their positions in the chain, as a reordering would.
        AuditEvent.objects.filter(pk=two.pk).update(seq=-2)
        AuditEvent.objects.filter(pk=three.pk).update(seq=2)
        AuditEvent.objects.filter(pk=two.pk).update(seq=3)
    ok, data = verify_output()
    assert not ok
    assert data["first_bad_seq"] == 2


def test_verify_detects_a_recomputed_hash_that_breaks_the_link(db: None) -> None:
    write_events(4)
    from audit.chain import compute_hash

    with triggers_off():
        forged = AuditEvent.objects.get(seq=2)
        forged.outcome = "forged"
        forged.hash = compute_hash(forged)
        AuditEvent.objects.filter(pk=forged.pk).update(outcome="forged", hash=forged.hash)
    ok, data = verify_output()
    assert not ok
    assert data["first_bad_seq"] == 3  # row 3 still points at the old hash of row 2


def test_eight_concurrent_writers_leave_one_unbroken_chain(committed_db: None) -> None:
    writers, per_writer = 8, 125
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            barrier.wait()
            for n in range(per_writer):
                record("test.concurrent", actor=Actor.system(f"w{worker}"), detail={"n": n})
        except BaseException as exc:
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    verdict = verify_chain()
    assert verdict.ok, verdict.problem
    assert verdict.rows == writers * per_writer == 1000
    hashes = AuditEvent.objects.values_list("prev_hash", flat=True)
    assert len(set(hashes)) == 1000  # no two rows claim the same predecessor: no fork


def test_sqlite_refuses_update_and_delete(tmp_path: Path) -> None:
    """The embedded database gets the same protection, installed by the same migration."""
    database = tmp_path / "embedded.sqlite3"
    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "TRADEPLANE_VAR_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)
    subprocess.run([*manage, "quickstart"], env=env, check=True, cwd=ROOT, capture_output=True)
    import sqlite3

    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM audit_auditevent").fetchone()[0] > 0
        for statement in (
            "UPDATE audit_auditevent SET outcome = 'x'",
            "DELETE FROM audit_auditevent",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(statement)
    result = subprocess.run(
        [*manage, "verify_audit"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "intact" in result.stdout
