from controlplane.management.commands.grant_trading import Command as GrantTrading


class Command(GrantTrading):
    help = "Stop trading on a broker connection; the very next create or confirm is refused."
    enabled = False
