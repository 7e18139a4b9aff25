"""The Celery application: background sweeps on a beat schedule, and webhook delivery.

Production: Redis is the broker; a worker pool and exactly one beat run as their own
processes (docs/deploy.md). Embedded mode (no REDIS_URL): kombu's filesystem transport
under var/ is the broker, and `make run` starts one worker with an embedded beat next to
the web server, so the same tasks run on the same schedule with no Redis. Settings are the
CELERY_* names in controlplane.settings.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("tradeplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
