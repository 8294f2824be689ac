"""What every connector shares: incremental sync into the landing folder, and reading it back.

A connector fetches one UTC day at a time (every request and page of that day complete and
parsed), lands the day as a file, and only then moves its cursor. Each sync starts
`overlap_days` before the cursor, so late-arriving events are picked up; the re-fetched day
replaces its file, and ingestion's dedupe by event id makes any repeat across days harmless.
Ingestion then reads the landing folder like a data directory, so everything downstream is
the same as for files.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import requests

from onboarding_pipeline.connectors.http import FetchStats, Log, RetryPolicy, with_retries
from onboarding_pipeline.connectors.landing import Landing, Record
from onboarding_pipeline.ingestion.readers import InputError, StagedFile, read_file
from onboarding_pipeline.ingestion.sources import EVENTS_REQUIRED, USERS_REQUIRED, SourceResource

T = TypeVar("T")


@dataclass
class SyncReport:
    """One sync, for the asset metadata (never credentials)."""

    source: str
    landing_dir: str
    cursor_before: date | None = None
    cursor_after: date | None = None
    days: list[date] = field(default_factory=list)
    rows_fetched: int = 0
    rows_by_day: dict[str, int] = field(default_factory=dict)
    users_landed: int = 0
    stats: FetchStats = field(default_factory=FetchStats)


def days_to_fetch(start: date, end: date, cursor: date | None, overlap_days: int) -> list[date]:
    """The cursor's own day is always fetched again: it may have been landed part-way through."""
    first = start if cursor is None else max(start, cursor - timedelta(days=overlap_days))
    return [first + timedelta(days=n) for n in range((end - first).days + 1)]


class ConnectorSource(SourceResource):
    """An analytics tool's events, fetched incrementally into a landing folder.

    Subclasses implement `fetch_day`; secrets are fields set from `dagster.EnvVar`.
    """

    landing_dir: str
    start_date: str
    end_date: str | None = None
    overlap_days: int = 3
    signup_event: str | None = None
    users_file: str | None = None
    base_url: str
    timeout_seconds: float = 120.0
    max_attempts: int = 6
    backoff_seconds: float = 2.0

    @property
    @abstractmethod
    def kind(self) -> str: ...

    # -- fetching -----------------------------------------------------------------------------

    @abstractmethod
    def session(self) -> requests.Session:
        """A session that authenticates every request."""

    @abstractmethod
    def fetch_day(
        self, session: requests.Session, day: date, now: datetime, fetch: Fetch
    ) -> list[Record]:
        """Every event of the UTC `day` (up to `now`), normalized to contract columns."""

    def last_day(self, now: datetime) -> date:
        """The latest day the API can export at `now`."""
        return now.astimezone(UTC).date()

    def sync(
        self,
        *,
        now: datetime | None = None,
        log: Log = lambda _: None,
        sleep: Callable[[float], None] | None = None,
    ) -> SyncReport:
        """Fetch the days from the cursor (minus the overlap) to the end date into the landing
        folder; a failure keeps every day landed before it and leaves the cursor there."""
        now = now or datetime.now(UTC)
        landing = Landing(Path(self.landing_dir))
        report = SyncReport(self.kind, self.landing_dir, cursor_before=landing.cursor())
        today = self.last_day(now)
        end = min(date.fromisoformat(self.end_date), today) if self.end_date else today
        days = days_to_fetch(
            date.fromisoformat(self.start_date), end, report.cursor_before, self.overlap_days
        )
        policy = RetryPolicy(self.max_attempts, self.backoff_seconds)
        if sleep is not None:
            policy.sleep = sleep
        fetch = Fetch(policy, report.stats, log, self.timeout_seconds)
        cursor = report.cursor_before
        try:
            with self.session() as session:
                for day in days:
                    records = self.fetch_day(session, day, now, fetch)
                    landed = landing.land_day(day, records, self.signup_event)
                    # Only now is the day complete on disk: the cursor may move past it.
                    cursor = day if cursor is None else max(cursor, day)
                    landing.save_cursor(cursor)
                    report.days.append(day)
                    report.rows_by_day[day.isoformat()] = landed
                    report.rows_fetched += landed
                    log(f"{self.kind}: landed {landed} events of {day}")
        finally:
            # Also after a failure: the users of the days that did land must match them.
            if self.users_file is None and report.days:
                report.users_landed = landing.rebuild_users(self.signup_event)
        report.cursor_after = cursor
        return report

    # -- reading (what ingestion calls) -------------------------------------------------------

    def read_users(self, mapping: dict[str, str]) -> list[StagedFile]:
        if self.users_file is not None:
            path = Path(self.users_file)
            if not path.is_file():
                raise InputError(f"{path}: users file not found (source.users_file)")
            return [read_file(path, mapping, USERS_REQUIRED, source=path.name)]
        landing = self._synced()
        if landing.users_path.stat().st_size == 0:
            return []
        return [
            read_file(
                landing.users_path, mapping, USERS_REQUIRED, source=f"{self.kind}/users.jsonl"
            )
        ]

    def read_events(self, mapping: dict[str, str]) -> list[StagedFile]:
        landing = self._synced()
        return [
            read_file(path, mapping, EVENTS_REQUIRED, source=f"{self.kind}/events/{path.name}")
            for path in landing.event_files()
            # An empty file is a day fetched with no events.
            if path.stat().st_size > 0
        ]

    def _synced(self) -> Landing:
        landing = Landing(Path(self.landing_dir))
        if landing.cursor() is None:
            raise InputError(
                f"{self.landing_dir}: nothing landed from {self.kind} yet; materialize "
                "`source_sync` first"
            )
        return landing


@dataclass
class Fetch:
    """Requests with the sync's retry policy and bookkeeping."""

    policy: RetryPolicy
    stats: FetchStats
    log: Log
    timeout_seconds: float

    def __call__(self, attempt: Callable[[], T], what: str) -> T:
        return with_retries(attempt, self.policy, self.stats, what, self.log)
