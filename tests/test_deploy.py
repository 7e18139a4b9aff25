"""The two ways Tradeplane runs: `make run` (embedded: SQLite, no Redis, and still the
scheduled tasks, through a worker child process with the queue in files under var/), and
the production settings of the task system that `make serve` and docs/deploy.md rely on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.services import webhooks
from tests.mcp_harness import free_port
from tests.test_settings import PRODUCTION_ENV, load_settings
from tests.test_tasks import child_env, receiving, wait_until

ROOT = Path(__file__).resolve().parent.parent

# Run inside the embedded deployment (its SQLite database, its var/): a platform with a
# webhook, and one of its users with a confirmation that lapsed a second ago.
SETUP_SCRIPT = """
import json, sys
from datetime import timedelta
from decimal import Decimal

import django

django.setup()
from django.utils import timezone

from audit.events import Actor
from brokers.base import OrderRequest, OrderType, Side
from controlplane.accesstokens import Principal
from controlplane.models import ALL_SCOPES, PendingTrade
from controlplane.services import portfolio, trading, webhooks
from controlplane.services.connections import create_connection, set_trading_enabled
from controlplane.services.platforms import create_platform
from controlplane.services.users import create_end_user

actor = Actor.operator("test")
made = create_platform("Embedded test", scopes=ALL_SCOPES, actor=actor)
secret = webhooks.set_webhook(made.platform, url=sys.argv[1], actor=actor).signing_secret
user = create_end_user(made.platform, user_id="erin", scopes=None, actor=actor).end_user
connection = create_connection(
    user, broker="paper", environment=None, trading_requested=True, actor=actor
)
set_trading_enabled(connection, True, actor=actor)
principal = Principal(
    end_user_pk=user.pk, user_id=user.user_id, platform_pk=made.platform.pk,
    client_id=made.platform.client_id, scopes=ALL_SCOPES, jti="embedded-test",
    expires_at=timezone.now() + timedelta(hours=1),
)
(account, _), *_ = portfolio.list_accounts(principal)
request = OrderRequest(
    symbol="AAPL", side=Side.BUY, quantity=Decimal(1), order_type=OrderType.MARKET
)
trade = trading.create_order(principal, account.id, request)
PendingTrade.objects.filter(pk=trade.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
print(json.dumps({
    "client_id": made.platform.client_id, "client_secret": made.client_secret,
    "signing_secret": secret, "confirmation_id": trade.confirmation_id,
}))
"""


def embedded_env(var_dir: Path, port: int) -> dict[str, str]:
    """The environment of a fresh checkout: no database or Redis configured."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRADEPLANE_", "DATABASE_URL", "REDIS_URL", "CELERY_", "SECRET_KEY"))
    }
    return {**env, "TRADEPLANE_VAR_DIR": str(var_dir), "PORT": str(port)}


@contextmanager
def make_run(var_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`make run` as a person starts it (minus the dependency install), in its own process
    group, stopped with the Ctrl-C a terminal would send."""
    port = free_port()
    log = var_dir / "make-run.log"
    var_dir.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "-o", "install", "run"],
            cwd=ROOT,
            env=embedded_env(var_dir, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"make run stopped:\n{log.read_text(errors='replace')}")
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=120, what="make run to serve")
        yield base_url, process, log
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_make_run_runs_the_scheduled_tasks_and_webhooks_without_redis(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    with receiving() as receiver, make_run(var_dir) as (base_url, process, log):
        setup = subprocess.run(
            [sys.executable, "-c", SETUP_SCRIPT, receiver.url],
            cwd=ROOT,
            env={
                **embedded_env(var_dir, 0),
                "DJANGO_SETTINGS_MODULE": "controlplane.settings",
                "LOG_LEVEL": "WARNING",
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        made = json.loads(setup.stdout.strip().splitlines()[-1])
        headers = {"client-id": made["client_id"], "client-secret": made["client_secret"]}

        # A request of the web server queues the event; the worker child sends it.
        started = time.monotonic()
        sent = httpx.post(f"{base_url}/v1/webhook/test", headers=headers, timeout=10)
        assert sent.status_code == 202, sent.text
        assert time.monotonic() - started < 1
        # The beat inside the worker runs expire_pending_trades every 15 s.
        requests = receiver.wait_for(2, timeout=45)
        pgid = process.pid
        worker_log = log.read_text(errors="replace")

    by_type = {r.headers["Tradeplane-Event-Type"]: r for r in requests}
    assert set(by_type) == {"webhook.test", "trade.expired"}, worker_log
    expired = json.loads(by_type["trade.expired"].body)
    assert expired["data"]["confirmation_id"] == made["confirmation_id"]
    for request in requests:
        assert webhooks.verify_signature(
            made["signing_secret"], request.headers["Tradeplane-Signature"], request.body
        )
    assert list((var_dir / "celery" / "queue").iterdir()) == []  # everything was consumed
    # Ctrl-C stopped the server and, with it, the worker: nothing of the group is left.
    wait_until(lambda: not group_alive(pgid), timeout=30, what="make run's processes to end")


def test_the_embedded_broker_is_files_under_var_and_production_uses_redis(
    tmp_path: Path,
) -> None:
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='controlplane.settings';"
        "django.setup(); from django.conf import settings;"
        "print(settings.CELERY_BROKER_URL, settings.CELERY_BROKER_TRANSPORT_OPTIONS)"
    )
    embedded = subprocess.run(
        [sys.executable, "-c", code],
        env=embedded_env(tmp_path, 8000),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert embedded.startswith("filesystem://")
    assert str(tmp_path / "celery" / "queue") in embedded
    assert (tmp_path / "celery" / "queue").is_dir()

    production = load_settings(PRODUCTION_ENV, tmp_path)
    assert production.returncode == 0, production.stderr
    separate = load_settings(
        {**PRODUCTION_ENV, "CELERY_BROKER_URL": "redis://queue.internal:6379/0"}, tmp_path
    )
    assert separate.returncode == 0, separate.stderr
    refused = load_settings({**PRODUCTION_ENV, "CELERY_BROKER_URL": "amqp://x"}, tmp_path)
    assert refused.returncode != 0
    assert "CELERY_BROKER_URL" in refused.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "needs DATABASE_URL"),
        (
            {"DATABASE_URL": "postgres://x/y", "REDIS_URL": "redis://x", "TRADEPLANE_WORKERS": "2"},
            "TRADEPLANE_MCP_STATELESS=true",
        ),
    ],
)
def test_make_serve_refuses_a_setup_that_cannot_work(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", "install", "serve"],
        cwd=ROOT,
        env={
            **embedded_env(tmp_path, 8000),
            "TRADEPLANE_MCP_STATELESS": "false",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_the_deployment_guide_names_every_setting_of_the_task_system() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    settings_source = (ROOT / "controlplane" / "settings.py").read_text()
    makefile = (ROOT / "Makefile").read_text()
    names = set(re.findall(r'"((?:TRADEPLANE_WEBHOOK|CELERY)_[A-Z_]+)"', settings_source))
    names |= set(re.findall(r"^(TRADEPLANE_[A-Z_]+) \?=", makefile, re.MULTILINE))
    assert names >= {"CELERY_BROKER_URL", "TRADEPLANE_WORKERS", "TRADEPLANE_BEAT"}
    missing = sorted(name for name in names if name not in guide)
    assert not missing, f"docs/deploy.md does not mention {missing}"
    for command in ("rotate_signing_key", "rotate_encryption_key", "migrate", "celery"):
        assert command in guide


def test_the_verification_code_in_the_guide_accepts_our_signatures_and_refuses_replays() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", guide, re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102  (our own documentation)
    verify = namespace["verify"]
    body = b'{"id":"evt_1","type":"webhook.test"}'
    now = int(time.time())
    header = webhooks.signature_header("whsec_k", now, body)
    assert verify("whsec_k", header, body)
    assert not verify("whsec_k", header, body + b" ")
    assert not verify("whsec_other", header, body)
    assert not verify("whsec_k", webhooks.signature_header("whsec_k", now - 301, body), body)


def processes_of(pgid: int) -> list[tuple[int, str]]:
    listing = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "-g", str(pgid)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [
        (int(pid), args)
        for pid, _, args in (line.strip().partition(" ") for line in listing.splitlines())
    ]


def test_make_serve_runs_web_worker_and_one_beat_and_stops_them_all_together(
    db: None, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "make-serve.log"
    env = child_env(
        {
            "TRADEPLANE_VAR_DIR": str(tmp_path / "var"),
            "PORT": str(port),
            "TRADEPLANE_WORKERS": "2",
            "TRADEPLANE_TASK_CONCURRENCY": "1",
            "TRADEPLANE_MIGRATE": "0",  # the test database is migrated already
        }
    )
    env.pop("TRADEPLANE_MCP_STATELESS", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "-o", "install", "serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            except httpx.HTTPError:
                return False
            return response.status_code == 200 and "Sending due task" in log.read_text()

        wait_until(ready, timeout=120, what="make serve to serve and schedule")
        running = processes_of(process.pid)
        beats = [
            pid for pid, args in running if re.match(r"\S*python\S* -m celery .*\bbeat\b", args)
        ]
        assert len(beats) == 1, running
        assert any("celery -A controlplane worker --pool=prefork" in args for _, args in running)
        assert any("uvicorn" in args and "--workers 2" in args for _, args in running)

        # Any process ending stops the others, so a process manager restarts the whole set
        # instead of leaving a deployment without its beat.
        os.kill(beats[0], signal.SIGKILL)
        wait_until(
            lambda: process.poll() is not None and not group_alive(process.pid),
            timeout=60,
            what="every process of make serve to stop",
        )
        assert process.returncode != 0
        assert f"error: process {beats[0]} of make serve ended" in log.read_text()
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
