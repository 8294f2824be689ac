"""The plain helpers every connector shares: day planning, Retry-After, gzip integrity."""

from __future__ import annotations

import gzip
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime

import pytest

from onboarding_pipeline.connectors.base import days_to_fetch
from onboarding_pipeline.connectors.http import (
    FetchStats,
    RetryPolicy,
    SourceError,
    TransientError,
    gunzip_if_needed,
    retry_after_seconds,
    with_retries,
)


def test_first_sync_starts_at_the_start_date() -> None:
    assert days_to_fetch(date(2026, 1, 1), date(2026, 1, 3), None, 5) == [
        date(2026, 1, 1),
        date(2026, 1, 2),
        date(2026, 1, 3),
    ]


def test_later_syncs_start_overlap_days_before_the_cursor_never_before_the_start() -> None:
    assert days_to_fetch(date(2026, 1, 1), date(2026, 1, 12), date(2026, 1, 10), 2) == [
        date(2026, 1, 8) + timedelta(days=n) for n in range(5)
    ]
    # Without overlap the cursor's day is still fetched again: it may have been partial.
    assert days_to_fetch(date(2026, 1, 1), date(2026, 1, 10), date(2026, 1, 10), 0) == [
        date(2026, 1, 10)
    ]
    assert days_to_fetch(date(2026, 1, 9), date(2026, 1, 10), date(2026, 1, 10), 30)[0] == date(
        2026, 1, 9
    )


def test_retry_after_as_seconds_or_http_date() -> None:
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    assert 80 <= (retry_after_seconds(later) or 0) <= 90


def test_gzip_must_reach_its_end_marker() -> None:
    body = gzip.compress(b'{"a": 1}\n' * 1000)
    assert gunzip_if_needed(body, "gzip") == b'{"a": 1}\n' * 1000
    assert gunzip_if_needed(b"plain\n", None) == b"plain\n"
    with pytest.raises(TransientError, match="truncated gzip"):
        gunzip_if_needed(body[: len(body) // 2], "gzip")


def test_retries_wait_with_backoff_and_then_give_up_naming_the_settings() -> None:
    waits: list[float] = []
    stats = FetchStats()
    policy = RetryPolicy(max_attempts=3, backoff_seconds=1.5, sleep=waits.append)

    def always_503() -> None:
        raise TransientError("HTTP 503")

    with pytest.raises(SourceError, match=r"source\.max_attempts"):
        with_retries(always_503, policy, stats, "test fetch", lambda _: None)
    assert waits == [1.5, 3.0]  # doubling, none after the last attempt
    assert (stats.requests, stats.retries) == (3, 2)

    # A long Retry-After is honoured up to the cap.
    waits.clear()
    calls = iter([TransientError("HTTP 429", retry_after=5000.0), None])

    def throttled_once() -> str:
        error = next(calls)
        if error is not None:
            raise error
        return "ok"

    assert with_retries(throttled_once, policy, FetchStats(), "x", lambda _: None) == "ok"
    assert waits == [policy.max_wait_seconds]
