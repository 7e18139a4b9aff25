"""The `fake_etrade` fixture: a fake E*TRADE on a free port, with settings pointing at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import override_settings

from tests.fake_etrade.server import FakeETrade

# Long enough for a loaded test machine, short enough that a hang fails fast.
TEST_TIMEOUT_SECONDS = 5


@pytest.fixture
def fake_etrade() -> Iterator[FakeETrade]:
    with (
        FakeETrade() as fake,
        override_settings(
            # The sandbox pair is left empty so every test also covers the fallback to
            # the main pair.
            ETRADE_CONSUMER_KEY=fake.consumer_key,
            ETRADE_CONSUMER_SECRET=fake.consumer_secret,
            ETRADE_SANDBOX_CONSUMER_KEY="",
            ETRADE_SANDBOX_CONSUMER_SECRET="",
            ETRADE_API_BASE_URL=fake.base_url,
            ETRADE_OAUTH_BASE_URL="",
            ETRADE_AUTHORIZE_URL=fake.authorize_url,
            ETRADE_TIMEOUT_SECONDS=TEST_TIMEOUT_SECONDS,
        ),
    ):
        yield fake
