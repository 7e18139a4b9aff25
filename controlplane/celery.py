"""The Celery application. Redis is its broker in production; in embedded mode (no
REDIS_URL) tasks run eagerly in the calling process."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("tradeplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
