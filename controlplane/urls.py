from django.contrib import admin
from django.urls import path

from controlplane import health
from controlplane.api import api

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path(".well-known/oauth-protected-resource", health.protected_resource_metadata),
    path(".well-known/oauth-protected-resource/mcp", health.protected_resource_metadata),
    path("admin/", admin.site.urls),
    path("", api.urls),
]
