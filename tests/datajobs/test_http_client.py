"""The shared HTTP client against the replay server: Retry-After forms, refusals, conditional requests."""

from __future__ import annotations

import email.utils
import time

import pytest

from datajobs.config import HttpSettings
from datajobs.errors import ConfigError
from datajobs.http import HttpClient, parse_retry_after

FAST = HttpSettings(timeout_s=1, max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05, requests_per_second=100)


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("7") == 7.0
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= parse_retry_after(in_ten) <= 10
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_client_error_is_config_error_without_retry(replay):
    client = HttpClient(FAST)
    with pytest.raises(ConfigError, match="HTTP 404"):
        client.get(replay.url("/no/such/path"))
    assert replay.count("/no/such/path") == 1 and client.retries == 0


def test_etag_round_trip_gives_not_modified(replay):
    client = HttpClient(FAST)
    first = client.get(replay.url("/oec.csv"))
    assert first.etag and not first.not_modified and len(first.content) > 1000
    again = client.get(replay.url("/oec.csv"), validators=first.validators())
    assert again.not_modified and again.content == b""
