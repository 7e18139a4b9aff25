from django.conf import settings
from django.http import HttpRequest


def deployment(request: HttpRequest) -> dict[str, str]:
    return {"tradeplane_public_url": settings.TRADEPLANE_PUBLIC_URL}
