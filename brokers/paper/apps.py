from django.apps import AppConfig


class PaperConfig(AppConfig):
    name = "brokers.paper"
    label = "paper"
    verbose_name = "Paper broker"
