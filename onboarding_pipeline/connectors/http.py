"""HTTP with retries: what is worth retrying, how long to wait, and errors that say what to fix."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import requests
import urllib3.exceptions

T = TypeVar("T")
# Not worth a retry: the configured address itself is wrong.
_BAD_URL = (
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
)
Log = Callable[[str], None]


class SourceError(RuntimeError):
    """A fetch that failed for good; the message names the setting to fix."""


class TransientError(Exception):
    """Worth another attempt: 429, 5xx, timeouts, truncated or undecodable bodies."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    backoff_seconds: float = 2.0
    # A long Retry-After (Mixpanel's hourly quota) is honoured up to this.
    max_wait_seconds: float = 900.0
    sleep: Callable[[float], None] = time.sleep


@dataclass
class FetchStats:
    """What a sync cost, for the asset metadata."""

    requests: int = 0
    retries: int = 0
    pages: int = 0
    waits: list[float] = field(default_factory=list)


def with_retries(
    attempt: Callable[[], T], policy: RetryPolicy, stats: FetchStats, what: str, log: Log
) -> T:
    """Run `attempt` (one request and its parsing) until it succeeds or fails for good.

    Only a complete, parsed response leaves here, so a partial page is never landed.
    """
    for number in range(1, policy.max_attempts + 1):
        stats.requests += 1
        try:
            return attempt()
        except _BAD_URL as error:
            raise SourceError(
                f"{what}: invalid URL ({error}): check source.base_url (or source.host) in "
                "onboarding.yaml"
            ) from error
        except (TransientError, requests.RequestException, urllib3.exceptions.HTTPError) as error:
            if number == policy.max_attempts:
                raise SourceError(
                    f"{what}: still failing after {number} attempts ({_describe(error)}); "
                    "the service may be down or rate limiting: try again later, raise "
                    "source.max_attempts / source.timeout_seconds in onboarding.yaml, or check "
                    "source.base_url / region / host"
                ) from error
            retry_after = error.retry_after if isinstance(error, TransientError) else None
            wait = (
                retry_after
                if retry_after is not None
                else policy.backoff_seconds * 2 ** (number - 1)
            )
            wait = min(wait, policy.max_wait_seconds)
            stats.retries += 1
            stats.waits.append(wait)
            log(f"{what}: {_describe(error)}; attempt {number + 1} in {wait:.1f} s")
            policy.sleep(wait)
    raise AssertionError("unreachable")


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def check_status(response: requests.Response, what: str, permanent: dict[int, str]) -> None:
    """Raise `TransientError` for 429/5xx, `SourceError` (with the fix) for other failures."""
    status = response.status_code
    if status < 400:
        return
    if status == 429 or status >= 500:
        raise TransientError(
            f"HTTP {status}", retry_after=retry_after_seconds(response.headers.get("Retry-After"))
        )
    hint = permanent.get(status)
    # The body helps (e.g. "invalid date range"); services do not echo credentials back.
    detail = response.text[:300].strip()
    raise SourceError(
        f"{what}: HTTP {status}"
        + (f": {hint}" if hint else "")
        + (f" ({detail})" if detail else "")
    )


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def read_body(response: requests.Response) -> bytes:
    """The whole body as sent; a connection cut short raises (and is retried)."""
    return b"".join(response.raw.stream(1 << 16, decode_content=False))


def gunzip_if_needed(body: bytes, encoding: str | None) -> bytes:
    """Decompress a gzip body and insist on its end marker: a truncated stream is retried
    instead of silently yielding the lines that happened to arrive."""
    if not body.startswith(b"\x1f\x8b") and (encoding or "").lower() != "gzip":
        return body
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(body)
    except zlib.error as error:
        raise TransientError(f"corrupt gzip body: {error}") from error
    if not decompressor.eof:
        raise TransientError("truncated gzip body (no end-of-stream marker)")
    return data
