"""Run the fake E*TRADE for a demo: `python -m tests.fake_etrade --port 8765`.

It prints the settings that point Tradeplane at it. Approving in the browser grants the
accounts of `user=` (default "trader"): add `&user=alice` to the authorize link to choose.
"""

from __future__ import annotations

import argparse
import threading

from tests.fake_etrade.server import FakeETrade


def main() -> None:
    parser = argparse.ArgumentParser(description="A local fake of E*TRADE's REST API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--consumer-key", default=None, help="default: a new random key")
    parser.add_argument("--consumer-secret", default=None, help="default: a new random secret")
    options = parser.parse_args()
    fake = FakeETrade(
        host=options.host,
        port=options.port,
        consumer_key=options.consumer_key,
        consumer_secret=options.consumer_secret,
    )
    with fake:
        print(f"Fake E*TRADE listening on {fake.base_url} (Ctrl-C stops it)")
        print(f"ETRADE_API_BASE_URL={fake.base_url}")
        print(f"ETRADE_AUTHORIZE_URL={fake.authorize_url}")
        print(f"ETRADE_CONSUMER_KEY={fake.consumer_key}")
        print(f"ETRADE_CONSUMER_SECRET={fake.consumer_secret}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping")


if __name__ == "__main__":
    main()
