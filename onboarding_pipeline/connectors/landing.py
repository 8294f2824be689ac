"""The landing folder: fetched days as JSON Lines files, a cursor, and the users derived from them.

Layout under `<landing_dir>`:
- `events/<YYYY-MM-DD>.jsonl`: every event fetched for that day, in contract columns (a line
  that did not parse as JSON is kept as it came, so ingestion quarantines it as malformed);
- `users/<YYYY-MM-DD>.jsonl`: per user of that day, first event, first signup event and the
  latest user/person properties;
- `users.jsonl`: one row per user, merged from `users/`;
- `cursor.json`: the last day landed completely.

Every file is written to a temporary name and renamed, so a reader never sees half a file, and a
re-fetched day replaces its file instead of adding to it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

# A fetched event in contract columns (plus `user_properties` and `user_created_at`, the
# tool's own creation time of the user, for the users table), or a raw line.
Record = dict[str, Any] | str

EVENT_KEYS = ("event_id", "user_id", "event_name", "timestamp", "session_id", "properties")
# Names ingestion adds itself; a user property of that name would clash.
_RESERVED = {"user_id", "signup_at", "source", "row_number", "attributes"}


def write_atomically(path: Path, lines: Iterable[str]) -> None:
    """Write `lines` to `path` so that it is either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for line in lines:
                out.write(line)
                out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def parse_instant(text: Any) -> datetime | None:
    """An ISO-8601 instant as UTC (naive read as UTC), or None if it does not parse."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Landing:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def events_dir(self) -> Path:
        return self.root / "events"

    @property
    def users_path(self) -> Path:
        return self.root / "users.jsonl"

    def cursor(self) -> date | None:
        path = self.root / "cursor.json"
        if not path.is_file():
            return None
        return date.fromisoformat(json.loads(path.read_text())["last_complete_day"])

    def save_cursor(self, day: date) -> None:
        state = {"last_complete_day": day.isoformat(), "saved_at": datetime.now(UTC).isoformat()}
        write_atomically(self.root / "cursor.json", [json.dumps(state)])

    def event_files(self) -> list[Path]:
        return sorted(self.events_dir.glob("*.jsonl"))

    def land_day(self, day: date, records: list[Record], signup_event: str | None) -> int:
        """Replace the day's events and user summary; returns the events landed."""
        summaries: dict[str, dict[str, Any]] = {}
        lines = []
        for record in records:
            if isinstance(record, str):
                lines.append(record)
                continue
            _summarize(summaries, record, signup_event)
            lines.append(
                json.dumps({key: record.get(key) for key in EVENT_KEYS}, separators=(",", ":"))
            )
        write_atomically(self.events_dir / f"{day.isoformat()}.jsonl", lines)
        write_atomically(
            self.root / "users" / f"{day.isoformat()}.jsonl",
            (json.dumps(summary, default=str) for summary in summaries.values()),
        )
        return len(lines)

    def rebuild_users(self, signup_event: str | None) -> int:
        """Merge the daily user summaries into `users.jsonl`; returns the users written.

        The signup is the first `signup_event`; without one, the tool's creation time of the
        user (Amplitude `user_creation_time`, PostHog person `created_at`), else the user's
        first event. The attributes are the latest user/person properties seen.
        """
        users: dict[str, dict[str, Any]] = {}
        for summary in _read_lines(sorted((self.root / "users").glob("*.jsonl"))):
            merged = users.setdefault(summary["user_id"], {"user_id": summary["user_id"]})
            for key in ("first_seen", "signup_at", "created_at"):
                if summary.get(key) and (not merged.get(key) or summary[key] < merged[key]):
                    merged[key] = summary[key]
            if summary.get("properties_at") and (
                not merged.get("properties_at")
                or summary["properties_at"] >= merged["properties_at"]
            ):
                merged["properties_at"] = summary["properties_at"]
                merged["properties"] = summary["properties"]
        rows = []
        for user in users.values():
            signup_at = (
                user.get("signup_at")
                if signup_event
                else user.get("created_at") or user.get("first_seen")
            )
            if not signup_at:
                continue
            row: dict[str, Any] = {"user_id": user["user_id"], "signup_at": signup_at}
            for key, value in (user.get("properties") or {}).items():
                if key not in _RESERVED:
                    row[key] = value
            rows.append(json.dumps(row, default=str, separators=(",", ":")))
        write_atomically(self.users_path, rows)
        return len(rows)


def _summarize(
    summaries: dict[str, dict[str, Any]], record: dict[str, Any], signup: str | None
) -> None:
    user_id, moment = record.get("user_id"), parse_instant(record.get("timestamp"))
    if not user_id or moment is None:
        return  # ingestion quarantines the event; it cannot make a user
    stamp = moment.isoformat(timespec="microseconds")  # one format: text order is time order
    summary = summaries.setdefault(user_id, {"user_id": user_id, "first_seen": stamp})
    summary["first_seen"] = min(summary["first_seen"], stamp)
    if signup is not None and record.get("event_name") == signup:
        summary["signup_at"] = min(summary.get("signup_at") or stamp, stamp)
    created = parse_instant(record.get("user_created_at"))
    if created is not None:
        created_text = created.isoformat(timespec="microseconds")
        summary["created_at"] = min(summary.get("created_at") or created_text, created_text)
    properties = record.get("user_properties")
    if isinstance(properties, dict) and properties and stamp >= summary.get("properties_at", ""):
        summary["properties_at"] = stamp
        summary["properties"] = properties


def _read_lines(paths: list[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)
