"""Mistakes a first-time user makes with frameworks and clients the examples do not use:
each is refused or said before it can mislead."""

from __future__ import annotations

import re

import pytest

from pytest_concurrency._errors import ConfigError
from pytest_concurrency._simio.upstream import Upstream


@pytest.mark.parametrize(
    ("url", "segment", "prefix"),
    [
        ("http://prices.invalid/price/{sku}", "{sku}", "http://prices.invalid/price"),
        ("http://prices.invalid/v1/<int:sku>/stock", "<int:sku>", "http://prices.invalid/v1"),
        ("https://llm.invalid/v1/*", "*", "https://llm.invalid/v1"),
        ("http://llm.invalid/{model}:generate", "{model}:generate", "http://llm.invalid"),
    ],
)
def test_a_route_written_as_a_template_is_refused_with_the_prefix_to_use(
    url: str, segment: str, prefix: str
) -> None:
    # A route matches a literal path prefix; '{sku}' never matches '/price/abc', so the
    # storm would only fail every request with an undeclared-route warning at its end.
    with pytest.raises(ConfigError) as caught:
        Upstream().route(url, json={"price": 1})
    message = str(caught.value)
    assert f"upstream.route({url!r})" in message
    assert f"path segment {segment!r}" in message
    assert re.search(rf"declare {re.escape(repr(prefix))}", message)


@pytest.mark.parametrize(
    "url",
    [
        "http://prices.invalid/price",
        "http://prices.invalid/price/",
        "http://llm.invalid/v1/models/gemini:generateContent",
        "http://prices.invalid/a%7Bb%7D",
        "http://prices.invalid",
    ],
)
def test_literal_prefixes_stay_accepted(url: str) -> None:
    Upstream().route(url, json={"price": 1})
