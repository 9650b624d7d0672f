"""The one HTTP client of the data jobs: timeouts, retries with jittered backoff and Retry-After, per-host
rate limits, a project User-Agent and conditional requests."""

from __future__ import annotations

import email.utils
import hashlib
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from datajobs.config import HttpSettings
from datajobs.errors import ConfigError, UpstreamError

log = logging.getLogger("astrobio.data.http")

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def user_agent() -> str:
    try:
        pkg = version("astrobio-train")
    except PackageNotFoundError:
        pkg = "unknown"
    return f"astrobio-train-datajobs/{pkg} (scientific data acquisition; python-requests/{requests.__version__})"


class RetryableError(Exception):
    """A failure worth retrying; `retry_after` is the archive's own wait hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class Fetched:
    """A complete response body, or `not_modified` when a conditional request found no change."""

    url: str
    content: bytes
    sha256: str
    etag: str | None
    last_modified: str | None
    not_modified: bool = False

    def validators(self) -> dict[str, str]:
        """What to store so the next run can ask the archive `has this changed?`."""
        return {k: v for k, v in (("etag", self.etag), ("last_modified", self.last_modified)) if v}


class _RateLimiter:
    """At most `rate` requests per second per host, across threads."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_at: dict[str, float] = {}
        self.lock = threading.Lock()

    def wait(self, host: str) -> None:
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next_at.get(host, now))
            self.next_at[host] = at + self.interval
        if at > now:
            time.sleep(at - now)


class HttpClient:
    """GET/POST with retries; failures after the last attempt raise UpstreamError (exit 1)."""

    def __init__(self, settings: HttpSettings, headers: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent()
        self.session.headers.update(headers or {})
        self.limiter = _RateLimiter(settings.requests_per_second)
        self.retries = 0
        self._backoff = wait_exponential_jitter(
            multiplier=settings.backoff_initial_s, max=settings.backoff_max_s, jitter=settings.backoff_initial_s
        )

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, self.settings.retry_after_max_s)
        return self._backoff(state)

    def _before_sleep(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("retrying", extra={"attempt": state.attempt_number, "error": str(exc), "wait_s": round(wait, 2)})

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        validators: Mapping[str, str] | None = None,
    ) -> Fetched:
        """One logical request; `validators` (etag, last_modified) from a previous run make it conditional."""
        s = self.settings
        hdrs = dict(headers or {})
        if validators:
            if validators.get("etag"):
                hdrs["If-None-Match"] = validators["etag"]
            if validators.get("last_modified"):
                hdrs["If-Modified-Since"] = validators["last_modified"]
        host = urlsplit(url).netloc
        retrying = Retrying(
            stop=stop_after_attempt(s.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(RetryableError),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, method, url, host, params, data, hdrs)
        except RetryableError as exc:
            raise UpstreamError(f"{method} {url} failed after {s.max_attempts} attempts: {exc}") from None

    def get(self, url: str, **kwargs: Any) -> Fetched:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Fetched:
        return self.request("POST", url, **kwargs)

    def _attempt(
        self,
        method: str,
        url: str,
        host: str,
        params: Mapping[str, Any] | None,
        data: Mapping[str, Any] | None,
        headers: dict[str, str],
    ) -> Fetched:
        self.limiter.wait(host)
        try:
            r = self.session.request(
                method, url, params=params, data=data, headers=headers, timeout=self.settings.timeout_s
            )
            body = r.content  # reads the whole body: a short or reset body raises here
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise RetryableError(f"{type(exc).__name__}: {_first_line(exc)}") from None
        except requests.exceptions.ContentDecodingError as exc:
            raise RetryableError(f"undecodable body: {_first_line(exc)}") from None
        if r.status_code == 304:
            return Fetched(r.url, b"", "", r.headers.get("ETag"), r.headers.get("Last-Modified"), not_modified=True)
        if r.status_code in RETRY_STATUS:
            raise RetryableError(f"HTTP {r.status_code}", retry_after=parse_retry_after(r.headers.get("Retry-After")))
        if r.status_code >= 500:
            raise UpstreamError(f"{method} {url} -> HTTP {r.status_code}: {_snippet(body)}")
        if r.status_code >= 400:
            raise ConfigError(
                f"{method} {url} was refused (HTTP {r.status_code}): {_snippet(body)}; check the request settings"
            )
        expected = r.headers.get("Content-Length")
        if expected is not None and "Content-Encoding" not in r.headers and int(expected) != len(body):
            raise RetryableError(f"truncated body: {len(body)} of {expected} bytes")
        return Fetched(
            r.url, body, hashlib.sha256(body).hexdigest(), r.headers.get("ETag"), r.headers.get("Last-Modified")
        )


SECRET_PARAMS = re.compile(r"((?:api_key|apikey|token|key)=)[^&\s'\"]+", re.IGNORECASE)


def _first_line(exc: Exception) -> str:
    """The first line of an error, with secrets in URLs (e.g. NCBI's api_key) masked: it is logged."""
    text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return SECRET_PARAMS.sub(r"\1***", text)


def _snippet(body: bytes) -> str:
    return " ".join(body[:200].decode("utf-8", "replace").split()) or "(empty body)"
