"""The `source` section of `onboarding.yaml`: which tool the events come from.

Only non-secret settings live here. Credentials come from environment variables (see
`docs/connectors.md`), so the config file can be committed as is.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilesSourceSettings(_Strict):
    """Users and events files in the data directory (`ONBOARDING_DATA_DIR`)."""

    type: Literal["files"] = "files"


class _ConnectorSettings(_Strict):
    """Settings every API connector shares."""

    # First day fetched on the first sync; default: `partitions_start_date`.
    start_date: date | None = None
    # Last day fetched; default: `as_of` if set, else today (UTC).
    end_date: date | None = None
    # Days before the cursor fetched again on each sync, for late-arriving events.
    overlap_days: int = Field(default=3, ge=0, le=60)
    # A user's first event of this name is the signup; none: the user's first event of any kind.
    signup_event: str | None = None
    # Alternatively a users file (csv, parquet or jsonl; relative to onboarding.yaml).
    users_file: str | None = None
    # Where fetched days land; default: `<output dir>/landing/<type>`.
    landing_dir: str | None = None
    # API host; the default follows `region` (or PostHog's US cloud).
    base_url: str | None = None
    timeout_seconds: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=6, ge=1, le=20)
    # First wait between attempts; it doubles each time (a Retry-After header wins).
    backoff_seconds: float = Field(default=2.0, ge=0)

    @field_validator("signup_event", "users_file", "landing_dir", "base_url")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (leave the key out instead)")
        return value


class MixpanelSettings(_ConnectorSettings):
    """Mixpanel raw event export (`/api/2.0/export`)."""

    type: Literal["mixpanel"]
    # Needed with a service account (the default auth); ignored with a project API secret.
    project_id: int | None = None
    region: Literal["us", "eu", "in"] = "us"
    auth: Literal["service_account", "api_secret"] = "service_account"
    # Mobile SDKs flush late: Mixpanel events can arrive days after they happened.
    overlap_days: int = Field(default=5, ge=0, le=60)
    # The project's time zone (project settings): export dates are days in it, and a date
    # later than the project's today is refused.
    project_timezone: str = "UTC"

    @field_validator("project_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown time zone {value!r} (e.g. America/Los_Angeles)") from error
        return value

    @model_validator(mode="after")
    def _service_account_names_its_project(self) -> MixpanelSettings:
        if self.auth == "service_account" and self.project_id is None:
            raise ValueError("project_id is required with auth: service_account")
        return self


class AmplitudeSettings(_ConnectorSettings):
    """Amplitude export API (`/api/2/export`)."""

    type: Literal["amplitude"]
    region: Literal["us", "eu"] = "us"


class PostHogSettings(_ConnectorSettings):
    """PostHog query API (`/api/projects/:id/query/`, HogQL)."""

    type: Literal["posthog"]
    project_id: int
    # `https://us.posthog.com`, `https://eu.posthog.com` or a self-hosted URL; `base_url` wins.
    host: str = "https://us.posthog.com"
    # Which id is the user: the distinct id sent by your code, or PostHog's merged person id.
    user_id: Literal["distinct_id", "person_id"] = "distinct_id"
    page_size: int = Field(default=10_000, ge=1, le=50_000)


SourceSettings = Annotated[
    FilesSourceSettings | MixpanelSettings | AmplitudeSettings | PostHogSettings,
    Field(discriminator="type"),
]
ConnectorSettings = MixpanelSettings | AmplitudeSettings | PostHogSettings
