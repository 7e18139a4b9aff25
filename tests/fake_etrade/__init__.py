"""A faithful local E*TRADE for tests and demos: `python -m tests.fake_etrade --port 8765`."""

from tests.fake_etrade.server import VERIFIER_IN_PAGE, FakeETrade, Fault

__all__ = ["VERIFIER_IN_PAGE", "FakeETrade", "Fault"]
