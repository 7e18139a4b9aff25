from typing import Any

from audit.events import Actor
from controlplane.management.base import OperatorCommand
from controlplane.services.demo import client_configs, set_up_demo

WHERE = {
    "claude_code": "Claude Code (run in a shell)",
    "cursor": "Cursor (~/.cursor/mcp.json)",
    "windsurf": "Windsurf (~/.codeium/windsurf/mcp_config.json)",
    "vscode": "VS Code (.vscode/mcp.json)",
    "codex_cli": "Codex CLI through mcp-remote (~/.codex/config.toml)",
}


class Command(OperatorCommand):
    help = (
        "Set up the demo (platform, user, paper account that may trade; idempotent) and print "
        "a fresh token and MCP client configs. Regenerates the demo secrets each time."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        demo = set_up_demo(actor=Actor.operator("cli:quickstart"))
        configs = client_configs(demo.mcp_url, demo.access_token)
        data = {
            "mcp_url": demo.mcp_url,
            "access_token": demo.access_token,
            "user_id": demo.user_id,
            "user_secret": demo.user_secret,
            "client_id": demo.client_id,
            "client_secret": demo.client_secret,
            "connection_id": demo.connection_id,
            "configs": configs,
        }
        lines = [
            "",
            "Tradeplane demo is ready (paper broker, trading granted).",
            f"  MCP endpoint : {demo.mcp_url}",
            f"  platform     : client-id {demo.client_id}  client-secret {demo.client_secret}",
            f"  end user     : user-id {demo.user_id}  user-secret {demo.user_secret}",
            "",
            "Access token (scopes: read trade; valid 1 hour):",
            demo.access_token,
            "",
        ]
        for key, text in configs.items():
            lines += [f"--- {WHERE[key]} ---", text, ""]
        self.emit(options, data, "\n".join(lines))
