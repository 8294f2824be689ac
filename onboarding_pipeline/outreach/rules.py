"""What may go out today: the email suppression list, quiet hours in the user's time zone,
and the daily limit of each channel."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from onboarding_pipeline.config.engagement import QuietHours

# Keys of raw_users.attributes (the input's extra columns) that may hold an IANA zone.
TIMEZONE_ATTRIBUTES = ("timezone", "time_zone", "tz")


@dataclass
class Suppression:
    """Who gets no email: addresses and user ids of the suppression file, and users with an
    unsubscribe event. Values are compared case-insensitively."""

    addresses: set[str] = field(default_factory=set)
    user_ids: set[str] = field(default_factory=set)
    unsubscribed: dict[str, str] = field(default_factory=dict)  # user id -> event name

    def reason(self, user_id: str, address: str | None) -> str | None:
        if user_id in self.unsubscribed:
            return f"unsubscribe event {self.unsubscribed[user_id]}"
        if user_id.lower() in self.user_ids:
            return "user id on the suppression list"
        if address and address.strip().lower() in self.addresses:
            return "address on the suppression list"
        return None


def read_suppression_file(path: Path | None) -> tuple[set[str], set[str]]:
    """(addresses, user ids) of the file: one a line, `#` starts a comment; a value with `@`
    is an address, anything else a user id. A missing file is an error (a typo in the path
    must not turn suppression off)."""
    if path is None:
        return set(), set()
    addresses: set[str] = set()
    user_ids: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        value = line.split("#", 1)[0].strip().lower()
        if value:
            (addresses if "@" in value else user_ids).add(value)
    return addresses, user_ids


def user_timezone(attributes: str | None, default: str | None) -> ZoneInfo | None:
    """The user's zone from their attributes, else `default` (None: unknown, rule skipped)."""
    if attributes:
        try:
            values = json.loads(attributes)
        except ValueError:
            values = {}
        for key in TIMEZONE_ATTRIBUTES:
            name = values.get(key) if isinstance(values, dict) else None
            if isinstance(name, str) and name:
                try:
                    return ZoneInfo(name)
                except (ZoneInfoNotFoundError, ValueError):
                    break  # not a zone: fall back to the default
    return ZoneInfo(default) if default else None


def in_quiet_hours(now: datetime, zone: ZoneInfo | None, quiet: QuietHours) -> str | None:
    """Why `now` is inside the user's quiet hours (their local time), or None."""
    if zone is None:
        return None
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    start, end = quiet.start, quiet.end
    inside = (start <= clock < end) if start <= end else (clock >= start or clock < end)
    if not inside:
        return None
    return f"quiet hours: {_hhmm(clock)} in {zone.key} ({_hhmm(start)}-{_hhmm(end)})"


def _hhmm(value: time) -> str:
    return value.strftime("%H:%M")
