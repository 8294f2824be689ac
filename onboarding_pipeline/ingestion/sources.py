"""Event sources. `FileSource` reads a data directory; connectors land the same shape."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Protocol

from dagster import ConfigurableResource

from onboarding_pipeline.config.product import EVENT_COLUMNS, USER_COLUMNS
from onboarding_pipeline.ingestion.readers import (
    SUPPORTED_SUFFIXES,
    InputError,
    StagedFile,
    read_file,
)

USERS_REQUIRED = ("user_id", "signup_at")
EVENTS_REQUIRED = ("user_id", "event_name", "timestamp")


class EventSource(Protocol):
    """What ingestion needs of a source: users and events as text tables with row numbers."""

    def read_users(self, mapping: dict[str, str]) -> list[StagedFile]: ...

    def read_events(self, mapping: dict[str, str]) -> list[StagedFile]: ...


class SourceResource(ConfigurableResource):
    """Common type of the `source` resource: a data directory or a connector's landing folder."""

    @abstractmethod
    def read_users(self, mapping: dict[str, str]) -> list[StagedFile]: ...

    @abstractmethod
    def read_events(self, mapping: dict[str, str]) -> list[StagedFile]: ...


class FileSource(SourceResource):
    """A data directory: `users.<csv|parquet|jsonl>` and `events*.<csv|parquet|jsonl>`.

    More event files may sit in an `events/` folder; every file is read on each run and the
    event ids make re-reading harmless, so adding a file adds only its new rows.
    """

    data_dir: str

    @property
    def root(self) -> Path:
        return Path(self.data_dir)

    def users_files(self) -> list[Path]:
        """The users file(s); none (signups then come from first events) only when there are
        events files to derive them from."""
        found = self._users_present()
        if not found and not self._events_candidates():
            raise InputError(
                f"{self.root}: no users file (expected users.csv, users.parquet or users.jsonl) "
                "and no events file; set ONBOARDING_DATA_DIR to the directory that holds your "
                "export"
            )
        return found

    def _users_present(self) -> list[Path]:
        found = [self.root / f"users{suffix}" for suffix in SUPPORTED_SUFFIXES]
        return [path for path in found if path.is_file()]

    def _events_candidates(self) -> list[Path]:
        return sorted(
            path for path in self._events_like() if path.suffix.lower() in SUPPORTED_SUFFIXES
        )

    def _events_like(self) -> list[Path]:
        candidates = [*self.root.glob("events*"), *(self.root / "events").glob("**/*")]
        return [path for path in candidates if path.is_file()]

    def unread_files(self) -> list[str]:
        """Files that look like input but are not read (a compressed export, `.json`, `.tsv`,
        `users_2024.csv`): named in a warning so their rows are not missed in silence.
        Hidden files (`.DS_Store`, editor swap files) are not input."""
        read = {*self._users_present(), *self._events_candidates()}
        looks_like = [p for p in self.root.glob("users*") if p.is_file()] + self._events_like()
        return sorted(
            str(path.relative_to(self.root))
            for path in looks_like
            if path not in read and not path.name.startswith(".")
        )

    def events_files(self) -> list[Path]:
        found = self._events_candidates()
        if not found:
            raise InputError(
                f"{self.root}: no events file (expected events.csv, events.parquet, events.jsonl "
                "or files in events/)"
            )
        return found

    def read_users(self, mapping: dict[str, str]) -> list[StagedFile]:
        return [
            self._read(path, mapping, USERS_REQUIRED, USER_COLUMNS) for path in self.users_files()
        ]

    def read_events(self, mapping: dict[str, str]) -> list[StagedFile]:
        return [
            self._read(path, mapping, EVENTS_REQUIRED, EVENT_COLUMNS)
            for path in self.events_files()
        ]

    def _read(
        self,
        path: Path,
        mapping: dict[str, str],
        required: tuple[str, ...],
        contract: tuple[str, ...],
    ) -> StagedFile:
        return read_file(
            path, mapping, required, source=str(path.relative_to(self.root)), contract=contract
        )
