"""Platform webhooks: registration over REST and in the admin, signed deliveries checked by
a real HTTP receiver, retries with backoff, at-most-one sender per attempt, and delivery
that survives a Celery broker that is down (the request still answers within the bound,
and the sweep sends the event later)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
import time_machine
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection as db_connection
from django.test import Client, override_settings
from django.utils import timezone

from audit.models import AuditEvent
from controlplane import encryption, tasks
from controlplane.models import Platform, WebhookDelivery, WebhookEndpoint
from controlplane.services import webhooks
from tests.conftest import OPERATOR, PlatformCreds
from tests.mcp_harness import run_server
from tests.test_tasks import Receiver, receiving, run_in_threads, run_worker, wait_until

Status = WebhookDelivery.Status


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as server:
        yield server


def put_webhook(client: Client, creds: PlatformCreds, body: dict[str, object]) -> Any:
    return client.put("/v1/webhook", body, content_type="application/json", headers=creds.headers())


def register(platform: Platform, url: str) -> str:
    secret = webhooks.set_webhook(platform, url=url, actor=OPERATOR).signing_secret
    assert secret is not None
    return secret


def new_event(platform: Platform) -> WebhookDelivery:
    """A `webhook.test` event, recorded as any event is."""
    return webhooks.send_test_event(platform)


# ---- Registration --------------------------------------------------------------------------


def test_a_platform_registers_its_webhook_and_sees_the_secret_only_once(
    client: Client, acme: PlatformCreds
) -> None:
    created = put_webhook(client, acme, {"url": "https://hooks.example.com/tp?key=abc"})
    assert created.status_code == HTTPStatus.CREATED
    body = created.json()
    secret = body["signing_secret"]
    assert secret.startswith("whsec_")
    assert len(secret) > 40
    assert "order.filled" in body["events"]
    assert "connection.needs_reauth" in body["events"]

    shown = client.get("/v1/webhook", headers=acme.headers()).json()
    assert shown["url"] == "https://hooks.example.com/tp?key=abc"
    assert shown["signing_secret"] is None
    same = put_webhook(client, acme, {"url": "https://hooks.example.com/tp?key=abc"})
    assert same.status_code == HTTPStatus.OK
    assert same.json()["signing_secret"] is None
    moved = put_webhook(client, acme, {"url": "https://other.example.com/in"})
    assert moved.json()["signing_secret"] is None
    rotated = put_webhook(
        client, acme, {"url": "https://other.example.com/in", "rotate_secret": True}
    ).json()["signing_secret"]
    assert rotated.startswith("whsec_")
    assert rotated != secret

    endpoint = WebhookEndpoint.objects.get(platform=acme.platform)
    assert endpoint.get_signing_secret() == rotated
    assert rotated not in endpoint.secret_ciphertext
    events = AuditEvent.objects.filter(target=f"webhook:{endpoint.pk}").order_by("seq")
    assert list(events.values_list("action", "actor_id")) == [
        ("webhook.registered", acme.client_id),
        ("webhook.changed", acme.client_id),
        ("webhook.secret_rotated", acme.client_id),
    ]
    recorded = json.dumps(list(events.values_list("detail", flat=True)))
    assert "key=abc" not in recorded  # the host only: paths and queries may hold secrets
    assert secret not in recorded
    assert rotated not in recorded

    assert client.delete("/v1/webhook", headers=acme.headers()).status_code == HTTPStatus.NO_CONTENT
    assert client.get("/v1/webhook", headers=acme.headers()).status_code == HTTPStatus.NOT_FOUND
    assert client.delete("/v1/webhook", headers=acme.headers()).json()["error"]["code"] == (
        "not_found"
    )
    assert client.post("/v1/webhook/test", headers=acme.headers()).status_code == (
        HTTPStatus.NOT_FOUND
    )


def test_another_platform_neither_sees_nor_removes_the_webhook(
    client: Client, acme: PlatformCreds, globex: PlatformCreds
) -> None:
    put_webhook(client, acme, {"url": "https://hooks.example.com/tp"})
    assert client.get("/v1/webhook", headers=globex.headers()).status_code == HTTPStatus.NOT_FOUND
    assert client.delete("/v1/webhook", headers=globex.headers()).status_code == (
        HTTPStatus.NOT_FOUND
    )
    assert WebhookEndpoint.objects.filter(platform=acme.platform).exists()
    response = client.get("/v1/webhook", headers={"client-id": acme.client_id})
    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert response.json()["error"]["code"] == "invalid_credentials"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://hooks.example.com/tp", "http:// or https://"),
        ("hooks.example.com/tp", "http:// or https://"),
        ("https://user:pw@hooks.example.com/tp", "user name or password"),
        ("https://hooks.example.com/tp#frag", "no fragment"),
        ("https://hooks.example.com/" + "a" * 2000, "at most 2000"),
    ],
)
def test_urls_that_are_not_plain_http_s_are_refused(
    client: Client, acme: PlatformCreds, url: str, why: str
) -> None:
    response = put_webhook(client, acme, {"url": url})
    assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert response.json()["error"]["code"] == "invalid_argument"
    assert why in response.json()["error"]["message"]
    assert not WebhookEndpoint.objects.exists()


def test_production_requires_https_and_public_addresses(
    client: Client, acme: PlatformCreds
) -> None:
    with override_settings(PRODUCTION=True, TRADEPLANE_WEBHOOK_ALLOW_PRIVATE_NETWORKS=False):
        plain = put_webhook(client, acme, {"url": "http://hooks.example.com/tp"})
        assert "https" in plain.json()["error"]["message"]
        for inside in ("https://127.0.0.1/tp", "https://localhost:8443/", "https://10.1.2.3/"):
            refused = put_webhook(client, acme, {"url": inside})
            assert refused.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, inside
            assert "non-public address" in refused.json()["error"]["message"]
    assert not WebhookEndpoint.objects.exists()


def test_a_host_that_turns_private_after_registration_gets_no_request(
    db: None, acme: PlatformCreds, receiver: Receiver
) -> None:
    register(acme.platform, receiver.url)
    delivery = new_event(acme.platform)
    with override_settings(TRADEPLANE_WEBHOOK_ALLOW_PRIVATE_NETWORKS=False):
        assert tasks.deliver_webhook.apply(args=(delivery.pk, 0)).get() == Status.PENDING
    delivery.refresh_from_db()
    assert "non-public address" in delivery.last_error
    assert receiver.requests == []


# ---- Signed delivery -----------------------------------------------------------------------


def test_a_delivery_is_signed_so_the_receiver_can_verify_it_and_refuse_replays(
    db: None, acme: PlatformCreds, receiver: Receiver
) -> None:
    secret = register(acme.platform, receiver.url)
    delivery = new_event(acme.platform)

    assert tasks.deliver_webhook.apply(args=(delivery.pk, 0)).get() == Status.DELIVERED

    (request,) = receiver.wait_for(1)
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["tradeplane-event-id"] == delivery.event_id
    assert headers["tradeplane-event-type"] == "webhook.test"
    # Verified here independently of the service's own helper: the documented recipe.
    fields = dict(item.split("=", 1) for item in headers["tradeplane-signature"].split(","))
    timestamp = int(fields["t"])
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    assert abs(time.time() - timestamp) < 60
    event = json.loads(request.body)
    assert event["id"] == delivery.event_id
    assert event["type"] == "webhook.test"
    assert event["created"].endswith("Z")
    assert event["data"]["client_id"] == acme.client_id

    signature = headers["tradeplane-signature"]
    assert webhooks.verify_signature(secret, signature, request.body)
    assert not webhooks.verify_signature(secret, signature, request.body + b" ")
    assert not webhooks.verify_signature("whsec_wrong", signature, request.body)
    assert not webhooks.verify_signature(secret, signature, request.body, now=timestamp + 301)
    assert webhooks.verify_signature(secret, signature, request.body, now=timestamp + 299)
    assert webhooks.verify_signature(
        secret, f"t={timestamp},v1={'0' * 64},v1={fields['v1']}", request.body
    )
    assert not webhooks.verify_signature(secret, f"v1={fields['v1']}", request.body)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (
        Status.DELIVERED,
        1,
        200,
    )


def test_failures_are_retried_with_backoff_until_the_receiver_takes_the_event(
    db: None, acme: PlatformCreds, receiver: Receiver
) -> None:
    secret = register(acme.platform, receiver.url)
    receiver.statuses = [500, 503]
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        delivery = new_event(acme.platform)
        assert tasks.deliver_webhook.apply(args=(delivery.pk, 0)).get() == Status.PENDING
        delivery.refresh_from_db()
        assert (delivery.attempts, delivery.last_status_code) == (1, 500)
        assert delivery.next_attempt_at == start + timedelta(seconds=30)
        assert tasks.send_pending_webhooks.apply().get() == 0  # not due yet
        # A late duplicate message for the attempt already made sends nothing.
        assert tasks.deliver_webhook.apply(args=(delivery.pk, 0)).get() == "skipped"

    with time_machine.travel(start + timedelta(seconds=31), tick=False):
        assert tasks.send_pending_webhooks.apply().get() == 1
        assert tasks.send_pending_webhooks.apply().get() == 0  # queued once, not twice
        assert tasks.deliver_webhook.apply(args=(delivery.pk, 1)).get() == Status.PENDING
        delivery.refresh_from_db()
        assert (delivery.attempts, delivery.last_status_code) == (2, 503)
        assert delivery.next_attempt_at == start + timedelta(seconds=31 + 60)

    with time_machine.travel(start + timedelta(seconds=92), tick=False):
        assert tasks.send_pending_webhooks.apply().get() == 1
        assert tasks.deliver_webhook.apply(args=(delivery.pk, 2)).get() == Status.DELIVERED
        requests = receiver.wait_for(3)
        for request in requests:
            assert webhooks.verify_signature(
                secret, request.headers["Tradeplane-Signature"], request.body
            )
    assert len({r.headers["Tradeplane-Event-Id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1  # the same event, re-signed each time
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (Status.DELIVERED, 3)


@override_settings(TRADEPLANE_WEBHOOK_MAX_ATTEMPTS=2, TRADEPLANE_WEBHOOK_TIMEOUT_SECONDS=1)
def test_after_the_last_attempt_the_event_fails_and_an_operator_can_send_it_again(
    db: None, acme: PlatformCreds, receiver: Receiver
) -> None:
    register(acme.platform, receiver.url)
    delivery = new_event(acme.platform)
    receiver.delay = 1.5  # longer than the timeout: the first attempt times out
    assert tasks.deliver_webhook.apply(args=(delivery.pk, 0)).get() == Status.PENDING
    delivery.refresh_from_db()
    assert "Timeout" in delivery.last_error
    assert delivery.last_status_code is None
    receiver.delay = 0
    receiver.statuses = [502]
    assert tasks.deliver_webhook.apply(args=(delivery.pk, 1)).get() == Status.FAILED
    with time_machine.travel(timezone.now() + timedelta(days=1)):
        assert tasks.send_pending_webhooks.apply().get() == 0

    operator = Client()
    User.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    operator.login(username="ops", password="correct horse battery")
    response = operator.post(
        "/admin/controlplane/webhookdelivery/",
        {"action": "retry", "_selected_action": [str(delivery.pk)]},
    )
    assert response.status_code == HTTPStatus.FOUND
    delivery.refresh_from_db()
    assert delivery.status == Status.PENDING
    assert tasks.deliver_webhook.apply(args=(delivery.pk, 2)).get() == Status.DELIVERED
    assert AuditEvent.objects.filter(action="webhook.delivery_retried", actor_id="ops").count() == 1


def test_senders_at_once_make_one_request_per_attempt(
    committed_db: None, acme: PlatformCreds, receiver: Receiver
) -> None:
    register(acme.platform, receiver.url)
    delivery = new_event(acme.platform)

    outcomes = run_in_threads(4, lambda: webhooks.deliver(delivery.pk, 0))

    assert sorted(outcomes) == ["delivered", "skipped", "skipped", "skipped"]
    time.sleep(0.3)  # a second request would have arrived by now
    assert len(receiver.requests) == 1


def test_sweeps_at_once_queue_each_due_delivery_once(
    committed_db: None, acme: PlatformCreds
) -> None:
    register(acme.platform, "http://127.0.0.1:9/")
    due = [new_event(acme.platform) for _ in range(5)]
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))

    queued = run_in_threads(4, webhooks.dispatch_due_deliveries)

    assert sum(queued) == len(due), queued


def test_removing_the_endpoint_cancels_what_was_not_delivered(
    db: None, acme: PlatformCreds, receiver: Receiver
) -> None:
    register(acme.platform, receiver.url)
    delivery = new_event(acme.platform)
    webhooks.delete_webhook(acme.platform, actor=OPERATOR)
    delivery.refresh_from_db()
    assert delivery.status == Status.CANCELLED
    assert tasks.deliver_webhook.apply(args=(delivery.pk, 0)).get() == "skipped"
    assert receiver.requests == []


def test_signing_secrets_move_to_a_new_encryption_key(db: None, acme: PlatformCreds) -> None:
    secret = register(acme.platform, "https://hooks.example.com/tp")
    keys = [("enc-new", b"\x07" * 32), *settings.TRADEPLANE_ENCRYPTION_KEYS]
    try:
        with override_settings(TRADEPLANE_ENCRYPTION_KEYS=keys):
            encryption.reset_cache()
            assert webhooks.reencrypt_signing_secrets() == (1, 1)
            assert webhooks.reencrypt_signing_secrets() == (1, 0)
            endpoint = WebhookEndpoint.objects.get()
            assert encryption.key_id_of(endpoint.secret_ciphertext) == "enc-new"
            assert endpoint.get_signing_secret() == secret
            # A ciphertext copied into another platform's row does not decrypt.
            other = WebhookEndpoint(platform=Platform.objects.create(name="X", client_id="x"))
            other.secret_ciphertext = endpoint.secret_ciphertext
            with pytest.raises(encryption.DecryptionError):
                other.get_signing_secret()
    finally:
        encryption.reset_cache()


# ---- Through real processes ----------------------------------------------------------------


def test_a_worker_delivers_after_commit_and_retries_a_500(
    committed_db: None, acme: PlatformCreds, receiver: Receiver, tmp_path: Path
) -> None:
    secret = register(acme.platform, receiver.url)
    receiver.statuses = [500]
    client = Client()
    with run_worker(tmp_path, env={"TRADEPLANE_WEBHOOK_RETRY_SECONDS": "1"}):
        response = client.post("/v1/webhook/test", headers=acme.headers())
        assert response.status_code == HTTPStatus.ACCEPTED
        event_id = response.json()["event_id"]
        receiver.wait_for(1)
        wait_until(
            lambda: WebhookDelivery.objects.filter(event_id=event_id, attempts=1).exists(),
            what="the first attempt recorded",
        )
        time.sleep(1.1)  # the retry's backoff in this worker
        tasks.send_pending_webhooks.delay()
        requests = receiver.wait_for(2)
        wait_until(
            lambda: WebhookDelivery.objects.filter(event_id=event_id, status="delivered").exists(),
            what="the delivery recorded",
        )
    for request in requests:
        assert request.headers["Tradeplane-Event-Id"] == event_id
        assert webhooks.verify_signature(
            secret, request.headers["Tradeplane-Signature"], request.body
        )
    assert WebhookDelivery.objects.get(event_id=event_id).attempts == 2


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A "Redis" that accepts connections and never answers: a hung or overloaded server."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    listener.close()


@pytest.mark.parametrize("broker_down", ["refused", "silent"])
def test_with_the_celery_broker_down_a_request_answers_in_time_and_the_sweep_sends_later(
    committed_db: None,
    acme: PlatformCreds,
    receiver: Receiver,
    tmp_path: Path,
    silent_redis: str,
    broker_down: str,
) -> None:
    secret = register(acme.platform, receiver.url)
    dead_broker = "redis://127.0.0.1:1/0" if broker_down == "refused" else silent_redis
    with run_server(tmp_path, env={"CELERY_BROKER_URL": dead_broker}) as server:
        timings = []
        for _ in range(3):
            started = time.monotonic()
            response = httpx.post(f"{server.base_url}/v1/webhook/test", headers=acme.headers())
            timings.append(time.monotonic() - started)
            assert response.status_code == HTTPStatus.ACCEPTED, server.logs()
    # The bound: one connect and one command of TRADEPLANE_REDIS_TIMEOUT (0.5 s) each.
    print(f"publish with the broker {broker_down}: {[round(t, 3) for t in timings]} s")
    assert max(timings) < 1.5, timings
    pending = WebhookDelivery.objects.filter(status=Status.PENDING, attempts=0)
    assert pending.count() == 3
    assert all(d.next_attempt_at <= timezone.now() for d in pending)  # due for the sweep
    assert receiver.requests == []

    with run_worker(tmp_path):
        tasks.send_pending_webhooks.delay()
        requests = receiver.wait_for(3)
    assert {r.headers["Tradeplane-Event-Id"] for r in requests} == set(
        WebhookDelivery.objects.values_list("event_id", flat=True)
    )
    for request in requests:
        assert webhooks.verify_signature(
            secret, request.headers["Tradeplane-Signature"], request.body
        )
    db_connection.close()


# ---- The admin -----------------------------------------------------------------------------


@pytest.fixture
def operator_client(db: None) -> Client:
    User.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    client = Client()
    client.login(username="ops", password="correct horse battery")
    return client


def test_operators_register_a_webhook_in_the_admin_and_see_the_secret_once(
    operator_client: Client, acme: PlatformCreds
) -> None:
    response = operator_client.post(
        "/admin/controlplane/webhookendpoint/add/",
        {"platform": acme.platform.pk, "url": "https://hooks.example.com/admin"},
        follow=True,
    )
    assert response.status_code == HTTPStatus.OK
    endpoint = WebhookEndpoint.objects.get(platform=acme.platform)
    shown = [str(m) for m in response.context["messages"] if "whsec_" in str(m)]
    assert len(shown) == 1
    assert endpoint.get_signing_secret() in shown[0]
    assert AuditEvent.objects.filter(action="webhook.registered", actor_id="ops").count() == 1
    first_secret = endpoint.get_signing_secret()
    rotated = operator_client.post(
        "/admin/controlplane/webhookendpoint/",
        {"action": "rotate_secret", "_selected_action": [str(endpoint.pk)]},
        follow=True,
    )
    endpoint.refresh_from_db()
    assert endpoint.get_signing_secret() != first_secret
    assert any(endpoint.get_signing_secret() in str(m) for m in rotated.context["messages"])

    refused = operator_client.post(
        "/admin/controlplane/webhookendpoint/add/",
        {"platform": acme.platform.pk, "url": "ftp://hooks.example.com/"},
    )
    assert refused.status_code == HTTPStatus.OK  # the form again, with the error
    assert "http:// or https://" in refused.content.decode()

    delivery = new_event(acme.platform)
    for page in (
        "/admin/controlplane/webhookendpoint/",
        f"/admin/controlplane/webhookendpoint/{endpoint.pk}/change/",
        "/admin/controlplane/webhookdelivery/",
        f"/admin/controlplane/webhookdelivery/{delivery.pk}/change/",
    ):
        page_response = operator_client.get(page)
        assert page_response.status_code == HTTPStatus.OK, page
        html = page_response.content.decode()
        assert endpoint.secret_ciphertext not in html
        assert endpoint.get_signing_secret() not in html
    assert operator_client.get("/admin/controlplane/webhookdelivery/add/").status_code == (
        HTTPStatus.FORBIDDEN
    )
    assert (
        operator_client.post(
            f"/admin/controlplane/webhookdelivery/{delivery.pk}/delete/", {"post": "yes"}
        ).status_code
        == HTTPStatus.FORBIDDEN
    )
    assert WebhookDelivery.objects.filter(pk=delivery.pk).exists()
