"""`onboarding.yaml`: every product-specific choice in one validated file.

Only `aha_events` is required; everything else has a default. Unknown keys are errors so a
typo (`activation_window_day`) cannot silently fall back to a default.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from onboarding_pipeline.config.engagement import (
    HealthRules,
    InterventionRules,
    OnboardingPath,
    SegmentRule,
    default_path,
)
from onboarding_pipeline.connectors.config import FilesSourceSettings, SourceSettings

USER_COLUMNS = (
    "user_id",
    "signup_at",
    "account_id",
    "email",
    "first_name",
    "job_title",
    "role",
    "company",
    "company_size",
    "plan",
    "use_case",
    "tech_savvy",
)
EVENT_COLUMNS = (
    "event_id",
    "user_id",
    "event_name",
    "timestamp",
    "account_id",
    "session_id",
    "properties",
)


class ConfigError(ValueError):
    """An invalid `onboarding.yaml`; the message names the file, the key and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnMapping(_Strict):
    """Input column name -> contract column name, e.g. `{clientId: user_id, event: event_name}`."""

    users: dict[str, str] = Field(default_factory=dict)
    events: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _targets_are_contract_columns(self) -> ColumnMapping:
        for kind, mapping, allowed in (
            ("users", self.users, USER_COLUMNS),
            ("events", self.events, EVENT_COLUMNS),
        ):
            for source, target in mapping.items():
                if target not in allowed:
                    raise ValueError(
                        f"{kind}.{source} maps to {target!r}, which is not a contract column "
                        f"(expected one of {', '.join(allowed)})"
                    )
            targets = list(mapping.values())
            duplicated = {t for t in targets if targets.count(t) > 1}
            if duplicated:
                raise ValueError(f"{kind}: several columns map to {sorted(duplicated)}")
        return self


TimestampFormat = Literal["auto", "iso", "epoch_s", "epoch_ms"]
TIMESTAMP_COLUMNS = ("users.signup_at", "events.timestamp")


class IngestionRules(_Strict):
    """What counts as a bad row, and how timestamps are read."""

    # Signups and events stamped later than the ingestion clock (or `as_of`) plus this are
    # rejected (`future_timestamp`).
    future_tolerance_hours: float = Field(default=24.0, ge=0)
    # Events this long before the user's signup are rejected; a little earlier is normal
    # (anonymous activity merged into the account at signup).
    pre_signup_tolerance_hours: float = Field(default=24.0, ge=0)
    # Signups and events before this day (UTC) are rejected (`out_of_range_timestamp`): a
    # 1970 stamp is a zero epoch or a misread number, not a user.
    min_timestamp: date = date(1990, 1, 1)
    # How numbers in a timestamp column are read (ISO-8601 text is always accepted):
    # auto = magnitude decides (>= 1e11 is milliseconds, else seconds); iso = numbers are
    # rejected; epoch_s / epoch_ms = every number is seconds / milliseconds since 1970 UTC.
    timestamp_format: TimestampFormat = "auto"
    # Per column, overriding `timestamp_format`: {events.timestamp: epoch_ms}.
    timestamp_formats: dict[str, TimestampFormat] = Field(default_factory=dict)
    # The blocking check fails when more than this share of the identified event rows (user
    # id present) is quarantined for any reason: malformed data.
    max_quarantine_share: float = Field(default=0.05, ge=0, le=1)
    # A separate blocking check for anonymous traffic (`missing_user_id`), as a share of all
    # event rows read; 1.0 = anonymous events never block.
    max_anonymous_share: float = Field(default=1.0, ge=0, le=1)

    @field_validator("timestamp_formats")
    @classmethod
    def _known_timestamp_columns(
        cls, value: dict[str, TimestampFormat]
    ) -> dict[str, TimestampFormat]:
        unknown = sorted(set(value) - set(TIMESTAMP_COLUMNS))
        if unknown:
            raise ValueError(
                f"unknown timestamp column(s) {', '.join(unknown)} "
                f"(expected {' or '.join(TIMESTAMP_COLUMNS)})"
            )
        return value

    def format_of(self, column: str) -> TimestampFormat:
        """The format of `users.signup_at` or `events.timestamp`."""
        return self.timestamp_formats.get(column, self.timestamp_format)


class InviteEvents(_Strict):
    """Event names that mean an invitation was sent / accepted (features, stall labels)."""

    sent: list[str] = Field(default_factory=lambda: ["teammate_invited"])
    accepted: list[str] = Field(default_factory=lambda: ["invite_accepted"])


class ModelRules(_Strict):
    """Quality gates of the activation model (blocking check)."""

    min_roc_auc: float = Field(default=0.6, ge=0.5, le=1)
    # A new version may be at most this much worse (ROC AUC) than the previous one.
    max_auc_drop: float = Field(default=0.03, ge=0, le=0.5)
    # Share of the newest closed-window signups used for validation (time-based split).
    validation_fraction: float = Field(default=0.25, gt=0.05, lt=0.8)
    min_training_users: int = Field(default=200, ge=20)


class CriticalPathRules(_Strict):
    """How early events are judged."""

    # Events need this many users with and without them to be tested.
    min_users: int = Field(default=30, ge=5)
    # False-discovery rate for q-values (Benjamini-Hochberg) and significance of effects.
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    # Naive lift at or above this, with no adjusted effect, is "vanity".
    vanity_min_lift: float = Field(default=1.2, ge=1)
    # At most this many events are modelled (the most common in the horizon).
    max_events: int = Field(default=40, ge=1, le=500)
    # The equivalence margin: "no effect" = the total effect's interval lies inside
    # +-log(this odds ratio); a driver, prerequisite or blocker needs its interval beyond it.
    equivalence_odds_ratio: float = Field(default=1.25, gt=1, le=5)
    # Two events done by the same users (Jaccard index at least this) are one action logged
    # twice: judged once, under the more widespread name.
    alias_jaccard: float = Field(default=0.95, gt=0.5, le=1)
    # Regressions use at most this many users per population (a stratified sample beyond).
    max_regression_users: int = Field(default=10_000, ge=1_000)


class KpiTargets(_Strict):
    activation_rate: float | None = Field(default=None, ge=0, le=1)
    median_hours_to_value: float | None = Field(default=None, ge=0)
    retention_rate: float | None = Field(default=None, ge=0, le=1)
    onboarding_completion_rate: float | None = Field(default=None, ge=0, le=1)


class FrictionRules(_Strict):
    max_clusters: int = Field(default=6, ge=2, le=12)
    # Event or funnel step -> recommended fix; the defaults cover common blockers.
    fixes: dict[str, str] = Field(default_factory=dict)


class ReportOwners(_Strict):
    """Who answers for each area in the weekly review (names or handles, shown as written)."""

    kpis: str = "Head of Growth"
    funnel: str = "Onboarding PM"
    critical_path: str = "Onboarding PM"
    model: str = "Data Science"
    engagement: str = "Customer Success"


class ReportSettings(_Strict):
    """The weekly report and where it is delivered (credentials come from the environment)."""

    # Also the email subject ("<title>: week of <Monday>"): one line, no CR/LF.
    title: str = Field(default="Weekly onboarding report", min_length=1, max_length=200)
    # Email recipients; empty = no email delivery. Each gets a message of their own (To: that
    # address only), so nobody sees the others and the ledger tracks every address.
    recipients: list[str] = Field(default_factory=list)
    # Slack channel of the summary (a name like #onboarding or an id like C0123ABC);
    # empty = no Slack delivery.
    slack_channel: str = "#onboarding"
    # Notion database that gets one page per week (its id or URL); None = NOTION_DATABASE_ID
    # from the environment, and without either no Notion delivery.
    notion_database_id: str | None = None
    # Time zone of the weekly schedule and of times shown in the report.
    timezone: str = "UTC"
    # Language of the report (the HTML `lang`); only "en" texts ship today.
    language: str = "en"
    owners: ReportOwners = Field(default_factory=ReportOwners)
    # How many issues the report puts up for the weekly review.
    review_items: int = Field(default=3, ge=1, le=3)
    # How many drivers / vanity events / blockers each list shows.
    top_events: int = Field(default=5, ge=1, le=20)

    @field_validator("recipients")
    @classmethod
    def _recipients_are_addresses(cls, recipients: list[str]) -> list[str]:
        # A CR/LF (a header injected into the message) or any other malformed address fails
        # here, when the config loads, not halfway through a delivery.
        # Compared as delivered: the domain in its IDNA (punycode) form, so `ana@bücher.example`
        # and `ana@xn--bcher-kva.example` are one recipient listed twice.
        seen: set[str] = set()
        for index, address in enumerate(recipients):
            try:
                parsed = validate_email(address, check_deliverability=False)
            except EmailNotValidError as error:
                raise ValueError(
                    f"[{index}] {address!r} is not an email address: {error}"
                ) from None
            canonical = f"{parsed.local_part}@{parsed.ascii_domain}".lower()
            if canonical in seen:
                raise ValueError(f"[{index}] {address!r} is listed twice")
            seen.add(canonical)
        return recipients

    @field_validator("title", "slack_channel", "notion_database_id")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        # The title becomes the email subject: a line break would start a new header.
        # Python's email policy breaks lines at U+2028, VT, NEL, ... too: splitlines() knows them.
        if value is not None and (len(value.splitlines()) > 1 or "\x00" in value):
            raise ValueError(f"{value!r} must be one line (no line break of any kind, no NUL)")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone_exists(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r} (use an IANA name like Europe/Berlin)"
            ) from None
        return name


class ProductConfig(_Strict):
    """Validated contents of `onboarding.yaml`."""

    aha_events: list[str] = Field(min_length=1)
    activation_window_days: int = Field(default=14, ge=1, le=365)
    observation_hours: int = Field(default=72, ge=1, le=24 * 60)
    # Landmark ladder (hours since signup): each landmark has its own population (window
    # closed, not activated by the landmark) and its own critical path. Products whose value
    # comes in the first session need early looks (e.g. [1, 24, 72, 168]). The observation
    # horizon is always one of them (added when missing); empty = just the horizon.
    landmark_hours: list[int] = Field(default_factory=list)
    # Sessions are rebuilt per daily partition with one day of context either side, so the
    # inactivity gap must stay below a day.
    session_timeout_minutes: int = Field(default=30, ge=1, le=24 * 60 - 1)
    funnel_steps: list[str] = Field(default_factory=list)
    # Events after which a user is gone for good (account deleted, unsubscribed, withdrew):
    # they leave the onboarding population at once (no score, no queue, no nudge), count as
    # not activated once their window closes, and an aha event after them does not count.
    terminal_events: list[str] = Field(default_factory=list)
    # First day of the partitions of `raw_events` and `sessions`.
    partitions_start_date: date = date(2024, 1, 1)
    # Their size: every partition costs Dagster bookkeeping (~10 ms per asset on the local
    # instance), so years of history run much faster monthly; daily keeps a nightly run small.
    partitions: Literal["daily", "weekly", "monthly"] = "daily"
    # Fixed "now" for replays; by default now is the data's watermark (latest accepted event).
    as_of: datetime | None = None
    column_mapping: ColumnMapping = Field(default_factory=ColumnMapping)
    ingestion: IngestionRules = Field(default_factory=IngestionRules)
    invite_events: InviteEvents = Field(default_factory=InviteEvents)
    model: ModelRules = Field(default_factory=ModelRules)
    critical_path: CriticalPathRules = Field(default_factory=CriticalPathRules)
    # Activation within each of these many days of signup is reported as a tier.
    activation_tiers_days: list[int] = Field(default_factory=lambda: [7, 30, 90])
    # Retained = active on or after this many days after signup (within one week of it).
    retention_days: int = Field(default=30, ge=1, le=365)
    kpi_targets: KpiTargets = Field(default_factory=KpiTargets)
    friction: FrictionRules = Field(default_factory=FrictionRules)
    # Where events come from: files (default), mixpanel, amplitude or posthog.
    source: SourceSettings = Field(default_factory=FilesSourceSettings)
    # Sections that later stages fill; kept as plain mappings until those stages validate them.
    # Engagement playbook (config/engagement.py): segment rules -> paths of milestones,
    # health-score weights, stall and intervention rules.
    segments: list[SegmentRule] = Field(default_factory=list)
    paths: dict[str, OnboardingPath] = Field(default_factory=dict)
    health: HealthRules = Field(default_factory=HealthRules)
    interventions: InterventionRules = Field(default_factory=InterventionRules)
    report: ReportSettings = Field(default_factory=ReportSettings)

    @field_validator("aha_events", "funnel_steps", "terminal_events")
    @classmethod
    def _names_are_unique_and_non_empty(cls, names: list[str]) -> list[str]:
        if any(not name.strip() for name in names):
            raise ValueError("event names must not be empty")
        if len(set(names)) != len(names):
            raise ValueError("event names must be unique")
        return names

    @model_validator(mode="after")
    def _terminal_events_are_not_aha(self) -> ProductConfig:
        both = sorted(set(self.terminal_events) & set(self.aha_events))
        if both:
            raise ValueError(
                f"terminal_events and aha_events both name {', '.join(map(repr, both))}: an "
                "event cannot both activate a user and end their onboarding"
            )
        return self

    @model_validator(mode="after")
    def _terminal_events_are_no_progress(self) -> ProductConfig:
        # Leaving would count as a funnel step, a milestone, adoption or a stall signal, yet a
        # user who left is out of the population at once (and their later steps do not count).
        lists: dict[str, set[str]] = {
            "funnel_steps": set(self.funnel_steps),
            "paths milestone events": {
                event
                for path in self.paths.values()
                for milestone in path.milestones
                for event in [*milestone.events, *milestone.started_by]
            },
            "health.adoption_events": set(self.health.adoption_events),
            "interventions.stall.permission_events": set(
                self.interventions.stall.permission_events
            ),
            "interventions.stall.tour_events": set(self.interventions.stall.tour_events),
        }
        clashes = [
            f"terminal_events and {name} both name {', '.join(map(repr, both))}"
            for name, events in lists.items()
            if (both := sorted(set(self.terminal_events) & events))
        ]
        if clashes:
            raise ValueError(
                "; ".join(clashes) + ": an event that ends a user's onboarding cannot also be "
                "progress, adoption or a stall signal"
            )
        return self

    @model_validator(mode="after")
    def _segments_name_paths(self) -> ProductConfig:
        for index, rule in enumerate(self.segments):
            if rule.path not in self.paths:
                known = ", ".join(sorted(self.paths)) or "none configured"
                raise ValueError(
                    f"segments[{index}] names path {rule.path!r}, which is not under paths ({known})"
                )
        return self

    def onboarding_paths(self) -> dict[str, OnboardingPath]:
        """The configured paths, or one `standard` path built from the funnel steps."""
        if self.paths:
            return dict(self.paths)
        return {
            "standard": default_path(
                list(self.funnel_steps), list(self.aha_events), self.activation_window_days
            )
        }

    @model_validator(mode="after")
    def _landmarks_fit_the_window(self) -> ProductConfig:
        window_hours = self.activation_window_days * 24
        if self.observation_hours >= window_hours:
            raise ValueError(
                f"observation_hours ({self.observation_hours}) must be shorter than the "
                f"activation window ({window_hours} h = activation_window_days x 24)"
            )
        for hours in self.landmark_hours:
            if not 0 < hours < window_hours:
                raise ValueError(
                    f"landmark_hours: {hours} must be between 1 and {window_hours - 1} "
                    "(a landmark after the window closes has nobody left to activate)"
                )
        return self

    def landmarks(self) -> list[int]:
        """The landmark ladder in hours, ascending; always holds `observation_hours`."""
        return sorted({*self.landmark_hours, self.observation_hours})

    @field_validator("as_of")
    @classmethod
    def _as_of_is_aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("as_of needs a time zone, e.g. 2026-11-01T00:00:00Z")
        return value


def load_config(path: str | Path) -> ProductConfig:
    """Read and validate `onboarding.yaml`, raising `ConfigError` that names file, key and problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file: {error.strerror or error}") from error
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        return ProductConfig.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"]) or "(top level)"
            message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(f"{path}: {key}: {message}")
        raise ConfigError("\n".join(problems)) from None
