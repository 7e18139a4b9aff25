"""Shared shape of the operator commands: `--json` for scripts, a sentence for people."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from controlplane.models import ALL_SCOPES


class OperatorCommand(BaseCommand):
    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def emit(self, options: dict[str, Any], data: dict[str, Any], human: str) -> None:
        self.stdout.write(json.dumps(data, indent=2, default=str) if options["json"] else human)


def parse_scope_list(value: str) -> frozenset[str]:
    from django.core.management.base import CommandError

    scopes = frozenset(part.strip() for part in value.split(",") if part.strip())
    if not scopes or not scopes <= ALL_SCOPES:
        raise CommandError(f"--scopes must be a comma-separated subset of {sorted(ALL_SCOPES)}")
    return scopes
