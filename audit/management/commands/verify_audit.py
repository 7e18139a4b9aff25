from typing import Any

from django.core.management.base import CommandError

from audit.chain import verify_chain
from controlplane.management.base import OperatorCommand


class Command(OperatorCommand):
    help = "Verify the whole audit hash chain; exits non-zero naming the first bad row."

    def handle(self, *args: Any, **options: Any) -> None:
        verdict = verify_chain()
        data = {
            "ok": verdict.ok,
            "rows": verdict.rows,
            "head_seq": verdict.head_seq,
            "head_hash": verdict.head_hash,
            "first_bad_seq": verdict.first_bad_seq,
            "problem": verdict.problem,
        }
        if verdict.ok:
            self.emit(
                options,
                data,
                f"audit chain intact: {verdict.rows} rows, head "
                f"#{verdict.head_seq} {verdict.head_hash}",
            )
            return
        self.emit(
            options,
            data,
            f"audit chain BROKEN at row #{verdict.first_bad_seq}: "
            f"{verdict.problem} ({verdict.rows} rows verified before it)",
        )
        raise CommandError(f"audit chain broken at seq {verdict.first_bad_seq}")
