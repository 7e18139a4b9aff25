from controlplane.management.commands.halt_trading import Command as HaltTrading


class Command(HaltTrading):
    help = "Resume trading for one platform (--platform) or lift the global halt."
    halted = False
