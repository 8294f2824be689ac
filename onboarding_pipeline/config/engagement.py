"""The engagement sections of `onboarding.yaml`: segments, paths, health, interventions.

A customer-success playbook as data: segment rules give each user a path, a path is a list of
weighted milestones with due days, the health score's weights and risk cut-offs are settings,
and so are the intervention rules (thresholds, ladder, owners, holdout). Every default is
documented in docs/configuration.md.
"""

from __future__ import annotations

from datetime import time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from onboarding_pipeline.engagement.nudge_writer import NudgeSettings

# User attributes a segment rule may test (columns of raw_users).
SEGMENT_ATTRIBUTES = ("role", "company_size", "plan", "use_case", "tech_savvy", "job_title")
FAILURE_LABELS = ("access_block", "invite_failure", "generic_tour_trap", "no_show", "other")
Channel = Literal["in_app", "email", "human"]
RiskLevel = Literal["high", "medium", "low"]
DEFAULT_LADDER: tuple[Channel, ...] = ("in_app", "email", "human")
DEFAULT_QUEUED_RISK: tuple[RiskLevel, ...] = ("high",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SegmentRule(_Strict):
    """Users whose attributes match every `when` entry follow `path`; the first match wins,
    and a rule without `when` matches everyone (put it last as the default)."""

    path: str
    when: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("when")
    @classmethod
    def _attributes_exist(cls, when: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(when) - set(SEGMENT_ATTRIBUTES))
        if unknown:
            raise ValueError(
                f"unknown user attribute(s) {unknown}; expected {', '.join(SEGMENT_ATTRIBUTES)}"
            )
        return when


class Milestone(_Strict):
    """A step of a path: done at the first of its `events`; `started_by` events show it was
    begun (a user who started and did not finish is stalled)."""

    name: str
    label: str | None = None  # words for messages and reports; defaults to the name
    events: list[str] = Field(min_length=1)
    started_by: list[str] = Field(default_factory=list)
    weight: float = Field(default=1.0, gt=0)
    due_day: int = Field(default=3, ge=0, le=365)

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ")


class OnboardingPath(_Strict):
    description: str = ""
    milestones: list[Milestone] = Field(min_length=1)
    timeline_days: int = Field(default=14, ge=1, le=365)
    # Days after signup (day 0 = the first 24 h) when every user of the path is queued for a
    # touch, stalled or not.
    touchpoint_days: list[int] = Field(default_factory=lambda: [1, 3, 7])
    owner: str | None = None

    @field_validator("milestones")
    @classmethod
    def _names_unique(cls, milestones: list[Milestone]) -> list[Milestone]:
        names = [m.name for m in milestones]
        if len(set(names)) != len(names):
            raise ValueError("milestone names must be unique within a path")
        return milestones


class HealthWeights(_Strict):
    activation_speed: float = Field(default=0.25, ge=0)
    feature_adoption: float = Field(default=0.30, ge=0)
    engagement_frequency: float = Field(default=0.20, ge=0)
    milestone_completion: float = Field(default=0.25, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> HealthWeights:
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("at least one health weight must be positive")
        return self


class HealthRules(_Strict):
    weights: HealthWeights = Field(default_factory=HealthWeights)
    # risk_level: high below `high_risk_below`, medium below `medium_risk_below`, else low.
    high_risk_below: float = Field(default=30, ge=0, le=100)
    medium_risk_below: float = Field(default=60, ge=0, le=100)
    # Events counted by feature adoption; empty = every milestone event of every path.
    adoption_events: list[str] = Field(default_factory=list)
    # Activation speed halves for every this many hours to the first milestone event.
    speed_half_life_hours: float = Field(default=24, gt=0)
    # Also fit the weights from outcomes (logistic regression) and report both.
    fit_weights: bool = True

    @model_validator(mode="after")
    def _ordered_cutoffs(self) -> HealthRules:
        if self.high_risk_below > self.medium_risk_below:
            raise ValueError("high_risk_below must not exceed medium_risk_below")
        return self


class StallRules(_Strict):
    # No event for this long: stalled.
    inactive_hours: float = Field(default=72, gt=0)
    # A started milestone not completed this long after it was started: stalled.
    step_timeout_hours: float = Field(default=24, gt=0)
    permission_events: list[str] = Field(default_factory=lambda: ["permission_error"])
    tour_events: list[str] = Field(
        default_factory=lambda: ["product_tour_completed", "checklist_completed"]
    )


def _known_failure_labels(mapping: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(mapping) - set(FAILURE_LABELS))
    if unknown:
        raise ValueError(f"unknown failure label(s) {unknown}; expected {FAILURE_LABELS}")
    return mapping


# A mapping keyed by failure label: a typo in a label is an error, not a silent no-op.
ByFailureLabel = Annotated[dict[str, str], AfterValidator(_known_failure_labels)]


class Owners(_Strict):
    """Who acts: by failure label first, then by path, then the default."""

    default: str = "growth"
    by_path: dict[str, str] = Field(default_factory=dict)
    by_failure_label: ByFailureLabel = Field(default_factory=lambda: {"access_block": "support"})


DEFAULT_FIXES = {
    "access_block": "Get the access you need: ask your workspace admin to grant your role",
    "invite_failure": "Re-send your teammate invitations or share a direct join link",
    "generic_tour_trap": "Skip the tour and do the first real task with a ready-made template",
}

# Quiet hours concern messages a user notices when they arrive; in-app waits for a visit.
DEFAULT_QUIET_CHANNELS: tuple[Channel, ...] = ("email",)
DEFAULT_DAILY_LIMITS: dict[Channel, int] = {"in_app": 1000, "email": 500, "human": 25}


def _known_timezone(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin'"
        ) from None
    return name


class QuietHours(_Strict):
    """No message to a user between `start` and `end` of their local day (overnight when
    `start` is after `end`); rows caught by it stay due for a later run."""

    start: time = time(21, 0)
    end: time = time(8, 0)
    channels: list[Channel] = Field(default_factory=lambda: list(DEFAULT_QUIET_CHANNELS))
    # Users without a valid `timezone` attribute: this zone; null (default) = the rule skips
    # them (one zone's night is another's working day; the data's clock is often UTC).
    default_timezone: Annotated[str | None, AfterValidator(_known_timezone)] = None


class DeliverySettings(_Strict):
    """`interventions.delivery`: how queue rows reach users (docs/outreach.md)."""

    # Messages per channel and day (sent, outbox or in flight); the rest stay due.
    daily_limits: dict[Channel, int] = Field(default_factory=lambda: dict(DEFAULT_DAILY_LIMITS))
    quiet_hours: QuietHours | None = Field(default_factory=QuietHours)
    # A row still not delivered this many days after it was queued expires.
    max_delay_days: float = Field(default=3, ge=0)
    # Failed attempts before a row is given up (each attempt has the client's own retries).
    max_attempts: int = Field(default=3, ge=1)
    # Email: a file of addresses and/or user ids, one a line (`#` comments), relative to
    # onboarding.yaml; and events that mean "unsubscribed" (such users get no email).
    suppression_file: str | None = None
    unsubscribe_events: list[str] = Field(
        default_factory=lambda: ["unsubscribed", "email_unsubscribed"]
    )
    # https:// or mailto: template with {user_id} and {token} (HMAC of the user id under
    # ONBOARDING_UNSUBSCRIBE_SECRET); null = mailto: the sender.
    unsubscribe_url: str | None = None
    email_subject: str = Field(default="Your next step: {next_action}", min_length=1)
    # Owner -> Slack channel of the `human` hand-off; other owners: report.slack_channel.
    owner_channels: dict[str, str] = Field(default_factory=dict)
    # Latest events shown in a hand-off's timeline.
    timeline_events: int = Field(default=5, ge=0, le=50)

    @field_validator("unsubscribe_url")
    @classmethod
    def _url_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("https://", "mailto:")):
            raise ValueError("unsubscribe_url must start with https:// or mailto:")
        return _template("unsubscribe_url", value, ("user_id", "token"))

    @field_validator("email_subject")
    @classmethod
    def _subject_template(cls, value: str) -> str:
        return _template("email_subject", value, ("next_action", "first_name"))


def _template(key: str, value: str, fields: tuple[str, ...]) -> str:
    """`value` if it formats with `fields` alone (a typo in a placeholder fails at load)."""
    try:
        value.format(**{name: "x" for name in fields})
    except (KeyError, IndexError, ValueError) as error:
        allowed = " and ".join(f"{{{name}}}" for name in fields)
        raise ValueError(f"{key} may only use {allowed} ({error})") from None
    return value


class InterventionRules(_Strict):
    # Name of the randomized experiment; with the user id it decides the holdout.
    experiment: str = "onboarding-interventions"
    holdout_fraction: float = Field(default=0.10, ge=0, lt=1)
    # A user queued less than this many days ago is not queued again.
    cooldown_days: float = Field(default=3, ge=0)
    ladder: list[Channel] = Field(default_factory=lambda: list(DEFAULT_LADDER))
    # In-app early; from this day after signup the first touch is an email.
    email_from_day: float = Field(default=4, ge=0)
    # urgent: probability below this and at least `urgent_after_days` since signup;
    # guide: fewer than `guide_until_days` since signup; nudge: everyone else.
    urgent_below_probability: float = Field(default=0.25, ge=0, le=1)
    urgent_after_days: float = Field(default=5, ge=0)
    guide_until_days: float = Field(default=3, ge=0)
    # Users at these risk levels are queued even when not stalled.
    queue_risk_levels: list[RiskLevel] = Field(default_factory=lambda: list(DEFAULT_QUEUED_RISK))
    owners: Owners = Field(default_factory=Owners)
    # Failure label -> next action (defaults in DEFAULT_FIXES; labels without a fix get the
    # next milestone of the path).
    fixes: ByFailureLabel = Field(default_factory=dict)
    # Expected activation gain of an intervention before effectiveness has been measured.
    assumed_uplift: float = Field(default=0.05, ge=0, le=1)
    # Effectiveness: each user's outcome is "activated within this many days of their first
    # assignment" (or by their window's close, if sooner), the same for both arms.
    follow_up_days: float = Field(default=14, gt=0)
    # A subgroup (intervention type, failure label) is estimated only with this many users
    # with a final outcome in each arm.
    min_subgroup_users: int = Field(default=30, ge=2)
    # Error rate of the effectiveness intervals (anytime-valid: over every read, not one).
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    stall: StallRules = Field(default_factory=StallRules)
    nudges: NudgeSettings = Field(default_factory=NudgeSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)

    @field_validator("ladder")
    @classmethod
    def _ladder_not_empty(cls, ladder: list[Channel]) -> list[Channel]:
        if not ladder:
            raise ValueError("the escalation ladder needs at least one channel")
        return ladder

    def fix_for(self, failure_label: str) -> str | None:
        return self.fixes.get(failure_label) or DEFAULT_FIXES.get(failure_label)


def default_path(
    funnel_steps: list[str], aha_events: list[str], window_days: int
) -> OnboardingPath:
    """The path used when `paths` is not configured: the funnel steps, then the aha event."""
    steps = [*(s for s in funnel_steps if s not in aha_events), aha_events[0]]
    last = max(1, window_days - 1)
    return OnboardingPath(
        description="Every funnel step, then the aha moment (no paths configured)",
        timeline_days=window_days,
        milestones=[
            Milestone(name=step, events=[step], due_day=round(last * (i + 1) / len(steps)))
            for i, step in enumerate(steps)
        ],
    )
