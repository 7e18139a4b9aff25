from typing import Any

from django.conf import settings
from django.db import transaction

from audit.events import Actor
from controlplane.management.base import OperatorCommand
from controlplane.models import ALL_SCOPES, EndUser, Platform
from controlplane.services.platforms import create_platform
from controlplane.services.tokens import issue_token
from controlplane.services.users import create_end_user

DEMO_CLIENT_ID = "tp_ci_demo"
DEMO_USER_ID = "demo-user"


class Command(OperatorCommand):
    help = "Create the demo platform and end user if missing (idempotent) and mint a token."

    def handle(self, *args: Any, **options: Any) -> None:
        actor = Actor.operator("cli:seed_demo")
        with transaction.atomic():
            platform = Platform.objects.select_for_update().filter(client_id=DEMO_CLIENT_ID).first()
            if platform is None:
                platform = create_platform(
                    "Demo platform", scopes=ALL_SCOPES, actor=actor, client_id=DEMO_CLIENT_ID
                ).platform
            user = EndUser.objects.live().filter(platform=platform, user_id=DEMO_USER_ID).first()
            if user is None:
                user = create_end_user(platform, user_id=DEMO_USER_ID, actor=actor).end_user
        minted = issue_token(platform, user, ALL_SCOPES, actor=actor)
        data = {
            "client_id": platform.client_id,
            "user_id": user.user_id,
            "mcp_url": settings.TRADEPLANE_MCP_URL,
            "access_token": minted.access_token,
        }
        self.emit(
            options,
            data,
            (
                f"Demo platform {platform.client_id}, end user {user.user_id}\n"
                f"MCP endpoint: {settings.TRADEPLANE_MCP_URL}\n"
                f"Access token (read trade, 1 hour):\n{minted.access_token}\n"
            ),
        )
