"""The ASGI application served by uvicorn: Django for everything; the MCP endpoint at /mcp
joins it (with the lifespan the MCP session manager needs) when the MCP bridge lands."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

application = get_asgi_application()
