"""Deterministic synthetic onboarding data with planted ground truth.

The generator simulates users block by block (``BLOCK_USERS`` users per block, each block seeded
with ``np.random.default_rng([seed, block])``) with vectorised numpy, formats rows with pyarrow
compute kernels and streams them to disk. Because every block is always simulated in full and
only then truncated, user ``i`` gets the same events whatever the total number of users: a
smaller sample is a prefix of a larger one (clean rows only; dirty rows depend on the size).

Generative story (all times in integer milliseconds since the epoch; H = the 72 h observation
horizon, W = the 14-day activation window):

1. **Who.** Each user has segment attributes, a signup time and an unobserved engagement trait
   ``z`` (segment terms + noise).
2. **The plan, drawn before anything about activation.** Every user's *planned behaviour* is
   drawn from ``z``, the segment and noise only:

   * the whole first 72 h (events, sessions, times, property values, timestamp styles).
     ``z`` drives the vanity events (tour, help, settings), the number of sessions (2 + a
     Poisson count of mean ``exp(0.9 z - 0.3)``, at most 10) and so the active days
     strongly; the drivers moderately; the blockers depend on the segment only.
   * a prerequisite chain: ``data_source_connected`` (and ``dashboard_created``) can only
     happen after ``workspace_created``; the workspace has no effect of its own.
   * ``sso_login_failed`` (segment-driven, ~4% of users): a near-total blocker.
   * ``checklist_viewed`` exists only for users who signed up in the last
     ``CHECKLIST_TRACKED_DAYS`` (25) days before ``now`` (newly tracked; no effect).
   * every ``dashboard_created`` is logged twice for 99.5% of occurrences:
     ``dashboard_create_clicked`` follows it within a second (an alias, same dashboard id).
   * churners (from ``z`` and the early counts; always those who did nothing but sign up)
     have a single early session and never come back on their own; every other user has at
     least two early sessions and then 1-3 return sessions after the horizon, days apart.
3. **The probability.** ``p = true_activation_probability = P(activate within W)`` =
   ``sigmoid(ACT_BASE + segment terms + ACT_DRIFT * (signup position in the signup span - 1/2)
   + effects of the early drivers and blockers of the plan + CHURN_EFFECT if churner +
   Z_ACT * z)``. ``Z_ACT`` is small (0.15): ``z`` reaches activation mostly through the drivers
   and churn, so vanity events are explained away once sessions, active days and the other
   events are held fixed. ``ACT_DRIFT`` (+0.2 log-odds from the oldest to the newest signup)
   makes recent signups activate a little more, so a naive look calls ``checklist_viewed`` a
   driver. With ``effects="none"`` ``p`` is the same constant for everyone (a pure-noise world).
4. **The draw.** Activation within W ~ ``Bernoulli(p)``; its activation time ``T``
   (the start of the aha session, ``activation_at``) comes from one fixed mixture for every
   user, independent of everything else: with probability ``inside_horizon_share`` a
   Kumaraswamy(0.8, 1.3) time on [0, H), else a Kumaraswamy(1.2, 3.0) time on
   [H, W - 2 h). A user who does not activate within W becomes a late activator with
   probability ``LATE_ACTIVATOR_RATE * p`` (``T`` between day 15 and day 40). Hence for any age
   ``L`` < W - 2 h and a user not activated by ``L`` (``T > L``)::

       P(activate within W | p, not activated by L) = p (1 - F(L)) / (1 - p F(L))

   with ``F = activation_time_cdf`` (``true_landmark_probability``), exactly.
5. **After T only.** The aha session starts at ``T``: quick (5 s - 5 min apart) missing setup
   steps (onboarding, profile, workspace, dashboard; never the data source), then
   ``dashboard_shared`` (the first within 25 min of ``T``, always before W), then usage
   sessions until the user's lifetime or ``now`` runs out. The planned behaviour stays:
   planned early events after ``T`` are kept (a user who activates at hour 5 keeps doing their
   first-72-h plan), except those during the aha session itself and planned setup steps that
   the aha session already did; planned return sessions after ``T`` give way to usage.
   Nothing before ``T`` depends on the draw, so for a user not activated by ``L`` nothing in
   [0, L) does. (Reading the first share as the activation moment, a user in the middle of
   the aha session at ``L``, ``T <= L <`` first share, looks not yet activated; the truth
   counts them as activated by ``L``. They are under 1% of any landmark population.)

Outcomes are then what the event log shows: ``activated_within_window`` is a
``dashboard_shared`` at or before signup + 14 days (and before ``now``).

``truth/users.csv`` records per user ``true_activation_probability`` (``p``), the draw
(``planted_activator``: within W or late; ``late_activator``), ``activation_at`` /
``hours_to_activation`` (``T``, planned even after ``now``), ``activated_inside_horizon``,
``first_aha_at`` (observed), ``activated_within_window``, ``window_closed``, ``churner``,
``latent_engagement`` and ``true_p_at_1h``, ``true_p_at_24h``, ``true_p_at_72h``,
``true_p_at_168h`` (empty when ``T <= L``). These use ``p``, which knows the whole 72 h plan:
before 72 h they are an oracle, not a function of behaviour up to ``L``.
``truth/event_effects.csv`` records each event's role, planted log-odds effect and the event
it works through (``prerequisite``, ``alias``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from onboarding_pipeline.config.product import USER_COLUMNS

__all__ = [
    "BLOCK_USERS",
    "DEFAULT_NOW",
    "EFFECTS",
    "EVENT_NAMES",
    "EVENT_REASONS",
    "LANDMARK_HOURS",
    "USER_REASONS",
    "GenerationSummary",
    "activation_time_cdf",
    "generate_sample",
    "true_landmark_probability",
]

SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR

DEFAULT_NOW = datetime(2026, 11, 1, tzinfo=UTC)
ACTIVATION_WINDOW_MS = 14 * DAY
EARLY_WINDOW_MS = 72 * HOUR
# Activations within the window start before W - 2 h, so that the first share (<= 25 min into
# the aha session) always falls inside the window.
ACTIVATION_TIME_MAX_MS = ACTIVATION_WINDOW_MS - 2 * HOUR
SESSION_GAP_MIN_MS = 2 * HOUR  # gap between sessions is at least this
INTRA_GAP_MIN_MS = 5 * SEC  # consecutive events inside a session: 5 s ...
INTRA_GAP_MAX_MS = 20 * MIN  # ... to 20 min
AHA_GAP_MAX_MS = 5 * MIN  # the aha session's steps come quickly
ALIAS_SHARE = 0.995  # share of dashboard_created with a dashboard_create_clicked twin
ALIAS_DELAY_MS = (30, 900)  # the twin is logged this many ms after dashboard_created
BLOCK_USERS = 5_000
# Ids of the "unknown_user" dirty rows are drawn from [UNKNOWN_USER_BASE, 10**7), so real user
# ids (u0000000 ...) must stay below it.
UNKNOWN_USER_BASE = 9_000_000
_Y2099_MS = int(datetime(2099, 1, 1, tzinfo=UTC).timestamp() * 1000)

FORMATS = ("csv", "parquet", "jsonl")
EFFECTS = ("planted", "none")
LANDMARK_HOURS = (1, 24, 72, 168)

# --- vocabulary ---------------------------------------------------------------------------------
# (name, role, planted log-odds effect on activation within the window, the event it works
# through). Roles: funnel / aha / usage / neutral (no effect), driver / blocker (an effect of
# their own), prerequisite (no effect of its own; enables `through`, which has one), vanity (no
# effect; associated through z), alias (another name logged with `through`), newly_tracked (no
# effect; exists only for recent signups).
EVENT_SPEC: tuple[tuple[str, str, float, str], ...] = (
    ("signed_up", "funnel", 0.0, ""),
    ("onboarding_started", "funnel", 0.0, ""),
    ("profile_completed", "funnel", 0.0, ""),
    ("workspace_created", "prerequisite", 0.0, "data_source_connected"),
    ("data_source_connected", "driver", 1.2, ""),
    ("dashboard_created", "funnel", 0.0, ""),
    ("dashboard_create_clicked", "alias", 0.0, "dashboard_created"),
    ("dashboard_shared", "aha", 0.0, ""),
    ("teammate_invited", "driver", 0.8, ""),
    ("template_used", "driver", 0.6, ""),
    ("invite_accepted", "neutral", 0.0, ""),
    ("product_tour_completed", "vanity", 0.0, ""),
    ("help_article_viewed", "vanity", 0.0, ""),
    ("settings_viewed", "vanity", 0.0, ""),
    ("permission_error", "blocker", -1.0, ""),
    ("integration_failed", "blocker", -0.7, ""),
    ("sso_login_failed", "blocker", -3.5, ""),
    ("checklist_viewed", "newly_tracked", 0.0, ""),
    ("page_viewed", "neutral", 0.0, ""),
    ("search_performed", "neutral", 0.0, ""),
    ("notification_opened", "neutral", 0.0, ""),
    ("dashboard_viewed", "usage", 0.0, ""),
    ("report_exported", "usage", 0.0, ""),
)
EVENT_NAMES: tuple[str, ...] = tuple(s[0] for s in EVENT_SPEC)
_E = {name: i for i, name in enumerate(EVENT_NAMES)}
_EFFECT = {name: effect for name, _, effect, _ in EVENT_SPEC}
# Roles that claim an effect on activation; in the pure-noise world they are all `neutral`.
_EFFECT_ROLES = ("driver", "blocker", "prerequisite", "vanity")
# Setup steps after signed_up, in funnel order. Only the workspace gates anything (the data
# source and the dashboard need one); the aha session does the missing ones except the source.
FUNNEL = (
    "onboarding_started",
    "profile_completed",
    "workspace_created",
    "data_source_connected",
    "dashboard_created",
)
_SETUP_CODES = np.array(
    [_E[n] for n in ("onboarding_started", "profile_completed", "workspace_created")]
    + [_E["dashboard_created"]]
)

EVENT_REASONS = (
    "missing_user_id",
    "missing_event_name",
    "missing_timestamp",
    "unparseable_timestamp",
    "unknown_user",
    "future_timestamp",
    "before_signup",
    "invalid_properties",
)
USER_REASONS = (
    "missing_user_id",
    "missing_signup_at",
    "unparseable_signup_at",
    "conflicting_duplicate_user",
)

# --- segments -----------------------------------------------------------------------------------
ROLES = ("admin", "analyst", "engineer", "marketer", "executive")
SIZES = ("1-10", "11-50", "51-200", "201-1000", "1000+")
PLANS = ("free", "trial", "pro", "enterprise")
USE_CASES = ("reporting", "product_analytics", "marketing", "finance")
TECH = ("low", "medium", "high")
PLATFORMS = ("web", "mobile")

ROLE_P = np.array([0.15, 0.35, 0.20, 0.20, 0.10])
SIZE_P = np.array([0.28, 0.30, 0.22, 0.12, 0.08])
PLAN_BY_SIZE = np.array(
    [
        [0.50, 0.30, 0.18, 0.02],
        [0.40, 0.32, 0.24, 0.04],
        [0.30, 0.32, 0.30, 0.08],
        [0.22, 0.30, 0.30, 0.18],
        [0.15, 0.25, 0.25, 0.35],
    ]
)
USE_CASE_BY_ROLE = np.array(
    [
        [0.40, 0.25, 0.15, 0.20],
        [0.40, 0.35, 0.10, 0.15],
        [0.20, 0.60, 0.05, 0.15],
        [0.20, 0.15, 0.60, 0.05],
        [0.45, 0.15, 0.15, 0.25],
    ]
)
TECH_BY_ROLE = np.array(
    [
        [0.25, 0.50, 0.25],
        [0.15, 0.50, 0.35],
        [0.05, 0.35, 0.60],
        [0.35, 0.50, 0.15],
        [0.45, 0.40, 0.15],
    ]
)
MOBILE_P_BY_ROLE = np.array([0.25, 0.2, 0.15, 0.35, 0.5])

# Latent engagement z: segment terms + N(0, Z_NOISE).
Z_TECH = np.array([-0.5, 0.0, 0.5])
Z_ROLE = np.array([0.1, 0.3, 0.2, -0.1, -0.4])
Z_SIZE = np.array([0.1, 0.05, 0.0, -0.1, -0.2])
Z_PLAN = np.array([-0.3, 0.0, 0.3, 0.2])
Z_NOISE = 0.9

# Activation log-odds: base + segment terms + drift + planted event effects + a small direct z
# term (deliberately different segment terms from z's so that segment adjustment matters).
ACT_BASE = -1.2
ACT_ROLE = np.array([0.0, 0.25, 0.1, -0.15, -0.35])
ACT_PLAN = np.array([-0.5, 0.0, 0.35, 0.2])
ACT_SIZE = np.array([0.0, 0.0, 0.1, 0.0, -0.2])
ACT_USE_CASE = np.array([0.15, 0.05, -0.1, 0.0])
ACT_DRIFT = 0.2  # log-odds gained from the first to the last day of the signup span
Z_ACT = 0.15  # direct effect of z on the log-odds (kept small: z acts through the drivers)
NOISE_LOGIT = -0.6  # effects="none": everyone has p = sigmoid(NOISE_LOGIT)
# Churners (decided before the activation draw from z and the early counts) have a single early
# session and do not come back on their own; CHURN_EFFECT is the planted log-odds effect of that.
CHURN_BASE = -1.3
CHURN_EFFECT = -1.5
# A user who does not activate within the window activates late with probability rate * p.
LATE_ACTIVATOR_RATE = 0.25
LATE_DAYS = (15, 40)
# Activation time within the window: a mixture of two Kumaraswamy(a, b) laws, one on [0, H)
# (weight inside_horizon_share), one on [H, ACTIVATION_TIME_MAX_MS).
T_INSIDE_AB = (0.8, 1.3)
T_OUTSIDE_AB = (1.2, 3.0)
CHECKLIST_TRACKED_DAYS = 25  # checklist_viewed exists for signups in the last 25 days only


JOB_TITLES = {
    "admin": ("IT Administrator", "Operations Manager", "Systems Administrator"),
    "analyst": ("Data Analyst", "BI Analyst", "Senior Analyst", "Business Analyst"),
    "engineer": ("Data Engineer", "Software Engineer", "Analytics Engineer"),
    "marketer": ("Marketing Manager", "Growth Marketer", "Content Strategist"),
    "executive": ("CEO", "VP Operations", "Head of Finance", "CTO"),
}
# fmt: off
FIRST_NAMES = (
    "Ada", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
    "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wen",
    "Xavier", "Yara", "Zane", "Amir", "Bea", "Chen", "Dana", "Emil", "Fatima", "Gus", "Hana",
    "Ivan", "Jade", "Kai", "Lena", "Mateo", "Nia", "Oscar", "Paula", "Rafael", "Sofia", "Tomas",
    "Uma", "Victor", "Wanda", "Yusuf", "Zoe",
)
COMPANY_ADJ = (
    "Blue", "Bright", "Silver", "North", "Rapid", "Clear", "Green", "Iron", "Lunar", "Solar",
    "Quiet", "Bold", "Prime", "Urban", "Swift", "Crimson", "Golden", "Nimble", "Stellar", "Vivid",
)
COMPANY_NOUN = (
    "Loop", "Harbor", "Peak", "Field", "Stack", "Forge", "Wave", "Grove", "Signal", "Pine",
    "Bridge", "Orbit", "Ridge", "Spark", "Vale", "Beacon", "Canyon", "Delta", "Ember", "Atlas",
)
# fmt: on
COMPANY_SUFFIX = ("Labs", "Inc", "Group", "Analytics", "Systems", "Co")
DOMAIN_TLD = (".com", ".io", ".co")

# Timestamps: ~5% with a non-UTC offset for the same instant, ~5% naive (meaning UTC).
OFFSET_SHARE = 0.05
NAIVE_SHARE = 0.05
OFFSETS_MIN = np.array([60, 120, -300, -240, 330, -420, 540, -180, 600, -600])

UNPARSEABLE_TIMESTAMPS = (
    "not-a-date",
    "2026-13-45T00:00:00Z",
    "2026-02-30T10:00:00Z",
    "31/31/2026 10:00",
    "TBD",
    "2026-09-01T25:61:00Z",
)
INVALID_PROPERTIES = ("[1,2", '"text"', "[1, 2, 3]", "42", '{"plan": "pro"', "not json")
UNPARSEABLE_SIGNUPS = ("not-a-date", "2026-02-30T09:00:00Z", "13/13/2026", "2026-13-01T00:00:00Z")

EVENTS_COLUMNS = ("event_id", "user_id", "event_name", "timestamp", "session_id", "properties")
# The input contract of users, plus `platform`: an extra column kept as an attribute.
USERS_COLUMNS = (*USER_COLUMNS, "platform")

# Dirty-row rates per block of clean events.
DUPLICATE_RATE = 0.005
REASON_RATE = 1e-4
REASON_MIN = 2


def _property_pools() -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Per-event-type pools of the JSON text after the common ``{"plan":...`` prefix."""
    dash = [f"d{i:04d}" for i in range(1, 201)]
    sources = (
        "postgres",
        "snowflake",
        "bigquery",
        "csv_upload",
        "salesforce",
        "hubspot",
        "google_sheets",
    )
    pools: dict[str, list[str]] = {
        "signed_up": [
            f',"utm_source":"{s}"'
            for s in ("google", "linkedin", "direct", "partner", "newsletter", "g2")
        ],
        "onboarding_started": [',"step":1'],
        "profile_completed": [',"step":2'],
        "workspace_created": [
            f',"step":3,"workspace_template":"{t}"'
            for t in ("blank", "marketing", "finance", "product")
        ],
        "data_source_connected": [f',"step":4,"source":"{s}"' for s in sources],
        "dashboard_created": [f',"step":5,"dashboard_id":"{d}"' for d in dash],
        # Same size and order as dashboard_created's pool: a twin carries the same id.
        "dashboard_create_clicked": [f',"dashboard_id":"{d}","ui":"toolbar"' for d in dash],
        "dashboard_shared": [
            f',"dashboard_id":"{d}","channel":"{c}"'
            for d in dash
            for c in ("email", "slack", "link")
        ],
        "teammate_invited": [f',"invitee_role":"{r}"' for r in ROLES],
        "template_used": [
            f',"template":"{t}"'
            for t in ("weekly_kpis", "marketing_funnel", "revenue", "product_usage")
        ],
        "invite_accepted": [f',"invitee_role":"{r}"' for r in ROLES],
        "product_tour_completed": [',"tour":"getting_started"'],
        "help_article_viewed": [
            f',"article":"{a}"'
            for a in (
                "connect-a-data-source",
                "share-a-dashboard",
                "invite-teammates",
                "build-your-first-chart",
                "permissions",
                "billing-faq",
            )
        ],
        "settings_viewed": [
            f',"section":"{s}"'
            for s in ("profile", "billing", "notifications", "security", "members")
        ],
        "permission_error": [
            f',"resource":"{r}","required_role":"admin"'
            for r in ("data_source", "workspace", "dashboard", "billing")
        ],
        "integration_failed": [
            f',"source":"{s}","error":"{e}"'
            for s in sources
            for e in ("auth_timeout", "invalid_credentials", "schema_mismatch")
        ],
        "sso_login_failed": [
            f',"idp":"{i}","error":"{e}"'
            for i in ("okta", "azure_ad", "google_workspace", "onelogin")
            for e in ("saml_assertion_invalid", "clock_skew", "user_not_assigned")
        ],
        "checklist_viewed": [f',"checklist":"getting_started","items_done":{k}' for k in range(6)],
        "page_viewed": [
            f',"page":"{p}"'
            for p in (
                "/home",
                "/dashboards",
                "/data",
                "/templates",
                "/settings",
                "/explore",
                "/reports",
                "/pricing",
            )
        ],
        "search_performed": [
            f',"query_length":{q},"results":{r}' for q in range(1, 31) for r in (0, 3, 12, 40)
        ],
        "notification_opened": [f',"channel":"{c}"' for c in ("email", "push", "in_app")],
        "dashboard_viewed": [f',"dashboard_id":"{d}"' for d in dash],
        "report_exported": [
            f',"format":"{f}","dashboard_id":"{d}"'
            for f in ("pdf", "csv", "png")
            for d in dash[:50]
        ],
    }
    flat: list[str] = []
    offsets = np.zeros(len(EVENT_NAMES), dtype=np.int64)
    sizes = np.zeros(len(EVENT_NAMES), dtype=np.int64)
    for code, name in enumerate(EVENT_NAMES):
        offsets[code] = len(flat)
        sizes[code] = len(pools[name])
        flat.extend(pools[name])
    return pa.array(flat, type=pa.string()), offsets, sizes


_PROP_POOL, _PROP_OFF, _PROP_SIZE = _property_pools()
_PROP_PREFIX = pa.array([f'{{"plan":"{p}"' for p in PLANS])


# --- public result ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationSummary:
    """What one ``generate_sample`` call wrote (``paths`` are absolute)."""

    users: int  # valid users (rows of users.csv that are neither dirty nor duplicates)
    user_rows_written: int  # all data rows of users.csv, dirty ones included
    events_written: int  # all data rows of the events file, dirty and duplicate ones included
    clean_events: int
    sessions: int  # true sessions of the clean events
    duplicates_injected: int  # exact duplicate event rows (not quarantined)
    user_duplicates_injected: int  # exact duplicate user rows (not quarantined)
    # {"events": {reason: rows}, "users": {reason: rows}}; every reason code is present.
    quarantine_expected: dict[str, dict[str, int]]
    closed_window_users: int  # users whose signup_at + 14 days <= now
    activated_within_window: int  # of those, how many share a dashboard within 14 days
    activated_inside_horizon: int  # of those, how many activated within the first 72 h
    seed: int
    format: str
    now: str
    effects: str  # "planted" or "none" (the pure-noise world)
    inside_horizon_share: float  # F(72 h) of the activation-time law
    paths: dict[str, str] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready dict; paths relative to the output dir so runs compare byte for byte."""
        data = asdict(self)
        out = Path(self.paths.get("out", "."))
        data["paths"] = {
            k: (Path(v).relative_to(out).as_posix() if k != "out" else ".")
            for k, v in self.paths.items()
        }
        return data


# --- small helpers ------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _choice_rows(rng: np.random.Generator, table: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Categorical draw where each element uses probabilities ``table[row]``."""
    cum = np.cumsum(table, axis=1)[row]
    u = rng.random(len(row))[:, None]
    return np.minimum((u >= cum).sum(axis=1), table.shape[1] - 1)


def _runs(keys: list[np.ndarray]) -> np.ndarray:
    """True where a run of equal (keys...) starts; arrays must already be grouped."""
    n = len(keys[0])
    first = np.ones(n, dtype=bool)
    if n > 1:
        change = np.zeros(n - 1, dtype=bool)
        for k in keys:
            change |= k[1:] != k[:-1]
        first[1:] = change
    return first


def _ragged_cumsum(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum that restarts wherever ``first`` is true."""
    if len(values) == 0:
        return values.copy()
    cs = np.cumsum(values)
    starts = np.flatnonzero(first)
    base = cs[starts] - values[starts]
    return cs - base[np.cumsum(first) - 1]


def _intra_gaps(rng: np.random.Generator, n: int, max_gap: int = INTRA_GAP_MAX_MS) -> np.ndarray:
    # Log-uniform between 5 s and 20 min: mostly quick clicks, sometimes a long read.
    lo, hi = math.log(INTRA_GAP_MIN_MS), math.log(max_gap)
    gaps = np.exp(rng.uniform(lo, hi, n)).astype(np.int64)
    return np.clip(gaps, INTRA_GAP_MIN_MS, max_gap)


def _capped_poisson(
    rng: np.random.Generator, lam: np.ndarray | float, cap: int, n: int
) -> np.ndarray:
    return np.minimum(rng.poisson(lam, n), cap)


def _expand(counts: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten an (owners x event types) count matrix into (owner, code) per event."""
    owners = np.arange(counts.shape[0])
    own = [np.repeat(owners, counts[:, j]) for j in range(counts.shape[1])]
    code = [np.full(len(o), codes[j], dtype=np.int16) for j, o in enumerate(own)]
    return np.concatenate(own), np.concatenate(code)


def _layout_sessions(
    rng: np.random.Generator,
    owner: np.ndarray,
    code: np.ndarray,
    key: np.ndarray,
    max_gap: int = INTRA_GAP_MAX_MS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Order events inside sessions by ``key`` and space them 5 s - ``max_gap`` apart.

    ``owner`` is a session index. Returns (owner, code, offset within session, duration of
    each session indexed by owner; sessions without events get duration 0).
    """
    order = np.lexsort((key, owner))
    owner, code = owner[order], code[order]
    first = _runs([owner])
    gaps = _intra_gaps(rng, len(owner), max_gap)
    gaps[first] = 0
    offset = _ragged_cumsum(gaps, first)
    n_owner = int(owner.max()) + 1 if len(owner) else 0
    dur = np.zeros(n_owner, dtype=np.int64)
    np.maximum.at(dur, owner, offset)
    return owner, code, offset, dur


def _chain_starts(
    rng: np.random.Generator,
    user: np.ndarray,
    anchor: np.ndarray,
    dur: np.ndarray,
    mean_gap: np.ndarray,
) -> np.ndarray:
    """Start offsets of consecutive sessions per user (``user`` sorted), >= 2 h apart."""
    gap = SESSION_GAP_MIN_MS + rng.exponential(1.0, len(user)) * mean_gap
    gap = gap.astype(np.int64)
    first = _runs([user])
    return anchor + _ragged_cumsum(gap + dur, first) - dur


# --- the activation-time law and the true landmark probability ----------------------------------
def _kumaraswamy_cdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.asarray(1.0 - (1.0 - x**a) ** b)


def activation_time_cdf(
    age_hours: float | np.ndarray, inside_horizon_share: float = 0.5
) -> np.ndarray:
    """``F(L) = P(T <= L | the user activates within the window)``, ``L`` in hours since signup.

    The same fixed mixture for every user (module docstring, step 4): ``F(72)`` is
    ``inside_horizon_share`` and ``F`` reaches 1 at 14 days - 2 hours.
    """
    t = np.asarray(age_hours, dtype=np.float64) * HOUR
    h, top = EARLY_WINDOW_MS, ACTIVATION_TIME_MAX_MS
    inside = _kumaraswamy_cdf(t / h, *T_INSIDE_AB)
    outside = _kumaraswamy_cdf((t - h) / (top - h), *T_OUTSIDE_AB)
    return np.asarray(inside_horizon_share * inside + (1.0 - inside_horizon_share) * outside)


def true_landmark_probability(
    p: float | np.ndarray, age_hours: float | np.ndarray, inside_horizon_share: float = 0.5
) -> np.ndarray:
    """``P(activate within the window | p, not activated by age L) = p(1-F(L)) / (1-p F(L))``.

    ``p`` is ``true_activation_probability`` (within the window; late activators count as not
    activating). Exact for the generator's users whatever their behaviour up to ``L``, since
    nothing before the activation time depends on the draw. Broadcasts like numpy.
    """
    f = activation_time_cdf(age_hours, inside_horizon_share)
    p = np.asarray(p, dtype=np.float64)
    num, den = p * (1.0 - f), 1.0 - p * f
    return np.asarray(np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0))


def _activation_times(rng: np.random.Generator, n: int, inside_share: float) -> np.ndarray:
    """Offsets from signup (ms) drawn from ``activation_time_cdf`` by inversion."""
    inside = rng.random(n) < inside_share
    u = rng.random(n)
    a = np.where(inside, T_INSIDE_AB[0], T_OUTSIDE_AB[0])
    b = np.where(inside, T_INSIDE_AB[1], T_OUTSIDE_AB[1])
    x = (1.0 - (1.0 - u) ** (1.0 / b)) ** (1.0 / a)
    h, top = EARLY_WINDOW_MS, ACTIVATION_TIME_MAX_MS
    t = np.where(inside, x * h, h + x * (top - h)).astype(np.int64)
    return np.maximum(t, 1)  # after the signed_up event (a 1 ms floor: F is exact to 1 ms)


# --- one simulated block ------------------------------------------------------------------------
@dataclass
class _Block:
    """Clean simulation of one block of users (events sorted by user, then time)."""

    first_index: int
    # users
    signup: np.ndarray
    role: np.ndarray
    size: np.ndarray
    plan: np.ndarray
    use_case: np.ndarray
    tech: np.ndarray
    mobile: np.ndarray
    first_name: np.ndarray
    job_title: np.ndarray
    account: np.ndarray
    company: np.ndarray
    tld: np.ndarray
    z: np.ndarray
    p_act: np.ndarray  # P(activate within the window)
    within: np.ndarray  # the draw: activates within the window
    late: np.ndarray  # activates after the window instead
    activated: np.ndarray  # within | late
    t_act: np.ndarray  # activation time T (ms after signup; -1 = never)
    churner: np.ndarray
    # events
    ev_user: np.ndarray
    ev_code: np.ndarray
    ev_ts: np.ndarray
    ev_prop: np.ndarray  # index into _PROP_POOL
    ev_tz: np.ndarray  # 0 = "Z", 1 = offset, 2 = naive
    ev_off: np.ndarray  # index into OFFSETS_MIN

    def truncate(self, n_keep: int) -> _Block:
        keep = self.ev_user < n_keep
        kw: dict[str, Any] = {"first_index": self.first_index}
        for name, value in vars(self).items():
            if name == "first_index":
                continue
            kw[name] = value[keep] if name.startswith("ev_") else value[:n_keep]
        return _Block(**kw)


def _codes(*names: str) -> np.ndarray:
    return np.array([_E[c] for c in names])


def _simulate_block(
    seed: int, block: int, now_ms: int, signup_days: int, inside_share: float, planted: bool
) -> _Block:
    rng = np.random.default_rng([seed, block])
    n = BLOCK_USERS

    # Segments; users share accounts (company, size, plan are account attributes).
    n_acc = n // 3
    acc_size = rng.choice(len(SIZES), n_acc, p=SIZE_P)
    acc_plan = _choice_rows(rng, PLAN_BY_SIZE, acc_size)
    acc_global = block * BLOCK_USERS + np.arange(n_acc)
    acc_company = (acc_global * 7919 + seed * 104729) % (
        len(COMPANY_ADJ) * len(COMPANY_NOUN) * len(COMPANY_SUFFIX)
    )
    acc_tld = rng.integers(0, len(DOMAIN_TLD), n_acc)
    account = rng.integers(0, n_acc, n)
    size, plan = acc_size[account], acc_plan[account]
    role = rng.choice(len(ROLES), n, p=ROLE_P)
    use_case = _choice_rows(rng, USE_CASE_BY_ROLE, role)
    tech = _choice_rows(rng, TECH_BY_ROLE, role)
    mobile = rng.random(n) < MOBILE_P_BY_ROLE[role]
    first_name = rng.integers(0, len(FIRST_NAMES), n)
    job_title = rng.integers(0, 1_000_000, n)  # reduced modulo the role's title list later

    # Signups over the last `signup_days` days: fewer on weekends, mostly in working hours.
    day = rng.integers(0, signup_days, n)
    start_ms = now_ms - signup_days * DAY
    weekday = ((start_ms + day * DAY) // DAY + 3) % 7  # 0 = Monday
    redraw = (weekday >= 5) & (rng.random(n) < 0.6)
    day = np.where(redraw, rng.integers(0, signup_days, n), day)
    hour_w = np.array(
        [1, 1, 1, 1, 1, 2, 3, 5, 8, 10, 10, 9, 8, 9, 10, 10, 9, 7, 5, 4, 3, 2, 2, 1], dtype=float
    )
    hour = rng.choice(24, n, p=hour_w / hour_w.sum())
    signup = start_ms + day * DAY + hour * HOUR + rng.integers(0, HOUR, n)
    signup = np.minimum(signup, now_ms - 1)

    z = Z_TECH[tech] + Z_ROLE[role] + Z_SIZE[size] + Z_PLAN[plan] + rng.normal(0.0, Z_NOISE, n)
    sz = _sigmoid(z)
    low, high, ent = tech == 0, tech == 2, plan == 3

    # ---- 1. The plan: behaviour drawn from z, the segment and noise only. ----
    # Setup steps. Only the workspace gates: the data source (the driver) and the dashboard
    # need one, so the workspace matters only through them (a prerequisite chain).
    workspace = rng.random(n) < _sigmoid(1.0 + 0.3 * z)
    source = workspace & (rng.random(n) < _sigmoid(0.6 + 0.8 * z - 0.5 * low + 0.4 * high))
    steps = np.stack(
        [
            rng.random(n) < _sigmoid(2.5 + 0.6 * z),  # onboarding_started
            rng.random(n) < _sigmoid(1.2 + 0.6 * z),  # profile_completed
            workspace,
            source,
            workspace & (rng.random(n) < _sigmoid(-0.3 + 0.5 * z + 1.2 * source)),  # dashboard
        ],
        axis=1,
    )
    has_dashboard = steps[:, 4]

    def occurs(p: np.ndarray, extra_lam: float, cap: int) -> np.ndarray:
        hit = rng.random(n) < p
        return np.where(hit, 1 + _capped_poisson(rng, extra_lam, cap - 1, n), 0)

    n_inv = occurs(_sigmoid(-1.0 + 0.6 * z + 0.3 * (size >= 2)), 0.5, 3)
    n_tmpl = occurs(_sigmoid(-0.9 + 0.5 * z + 0.3 * (use_case == 0)), 0.3, 2)
    n_tour = occurs(_sigmoid(-0.3 + 1.4 * z), 0.0, 1)
    n_help = occurs(_sigmoid(-0.7 + 1.2 * z), 0.8, 4)
    n_sett = occurs(_sigmoid(-0.5 + 1.2 * z), 0.5, 3)
    n_perm = occurs(_sigmoid(-2.2 + 1.2 * ent + 0.4 * (size == 4) + 0.7 * low - 0.5 * high), 0.4, 3)
    n_intf = occurs(_sigmoid(-2.0 + 0.5 * ent + 1.0 * low - 0.5 * high), 0.4, 3)
    n_sso = occurs(_sigmoid(-3.6 + 1.6 * ent + 0.6 * (size >= 3)), 0.3, 2)
    recent = signup >= now_ms - CHECKLIST_TRACKED_DAYS * DAY
    n_chk = occurs(_sigmoid(0.8 + 0.4 * z), 0.5, 3) * recent
    n_page = _capped_poisson(rng, 1.5 + 2.0 * sz, 8, n)
    n_srch = _capped_poisson(rng, 0.3 + 0.8 * sz, 3, n)
    n_noti = _capped_poisson(rng, 0.3, 2, n)

    # Early event rows with an ordering key in [0, 1) spanning the early period; setup steps
    # come in funnel order (disjoint key ranges per step).
    other_codes = _codes(
        "teammate_invited",
        "template_used",
        "product_tour_completed",
        "help_article_viewed",
        "settings_viewed",
        "permission_error",
        "integration_failed",
        "sso_login_failed",
        "checklist_viewed",
        "page_viewed",
        "search_performed",
        "notification_opened",
    )
    other_counts = np.stack(
        [
            n_inv,
            n_tmpl,
            n_tour,
            n_help,
            n_sett,
            n_perm,
            n_intf,
            n_sso,
            n_chk,
            n_page,
            n_srch,
            n_noti,
        ],
        axis=1,
    )
    u_f, c_f = _expand(steps.astype(np.int64), _codes(*FUNNEL))
    step_of_code = np.zeros(len(EVENT_NAMES), dtype=np.int64)
    step_of_code[_codes(*FUNNEL)] = np.arange(len(FUNNEL))
    step = step_of_code[c_f]
    speed = rng.uniform(0.2, 1.0, n)  # how fast the user moves through the setup
    k_f = np.where(
        step == 0, rng.random(len(u_f)) * 0.02, speed[u_f] * (step + rng.random(len(u_f))) / 5.0
    )
    u_o, c_o = _expand(other_counts, other_codes)
    k_o = rng.random(len(u_o))
    inv = c_o == _E["teammate_invited"]
    acc_mask = rng.random(int(inv.sum())) < 0.55  # invite_accepted follows some invites
    u_a = u_o[inv][acc_mask]
    k_a = k_o[inv][acc_mask] + (1 - k_o[inv][acc_mask]) * rng.random(len(u_a))
    c_a = np.full(len(u_a), _E["invite_accepted"], dtype=np.int16)
    e_user = np.concatenate([np.arange(n), u_f, u_o, u_a])
    e_code = np.concatenate([np.full(n, _E["signed_up"], dtype=np.int16), c_f, c_o, c_a])
    e_key = np.concatenate([np.full(n, -1.0), k_f, k_o, k_a])
    n_early = np.bincount(e_user, minlength=n)

    # Churners: some low-engagement users (few early events; always those who did nothing but
    # sign up) have a single early session and never come back on their own. Everyone else has
    # 2 + Poisson(exp(0.8 z - 0.2)) early sessions (capped at 10): sessions and active days are
    # good proxies of z.
    churner = (rng.random(n) < _sigmoid(CHURN_BASE - 1.3 * z)) & (n_early <= 12)
    churner |= n_early == 1
    n_sess_early = np.where(churner, 1, 2 + _capped_poisson(rng, np.exp(-0.3 + 0.9 * z), 8, n))
    raw_sess = np.clip((e_key * n_sess_early[e_user]).astype(np.int64), 0, n_sess_early[e_user] - 1)
    # A non-churner's last early event opens its last session, so it has at least two.
    by_key = np.lexsort((e_key, e_user))
    last_ev = by_key[np.append(e_user[by_key][1:] != e_user[by_key][:-1], True)]
    raw_sess[last_ev] = n_sess_early[e_user[last_ev]] - 1
    # Session owner id = user * 16 + raw session (<= 10 sessions per user), renumbered densely.
    owner_raw = e_user * 16 + raw_sess
    uniq, owner = np.unique(owner_raw, return_inverse=True)
    owner, e_code, e_off, e_dur = _layout_sessions(rng, owner, e_code, e_key)
    s_user = uniq // 16
    s_last = np.ones(len(uniq), dtype=bool)
    s_last[:-1] = s_user[1:] != s_user[:-1]
    s_count = np.bincount(s_user, minlength=n)
    mandatory = np.bincount(s_user, weights=e_dur, minlength=n) + (s_count - 1) * SESSION_GAP_MIN_MS
    slack = np.maximum(0, EARLY_WINDOW_MS - MIN - mandatory)
    w = np.where(s_last, 0.0, rng.exponential(1.0, len(uniq)))
    w_sum = np.bincount(s_user, weights=w, minlength=n) + rng.exponential(1.0, n)
    extra = (slack[s_user] * w / w_sum[s_user]).astype(np.int64)
    inc = np.where(s_last, 0, e_dur + SESSION_GAP_MIN_MS + extra)
    s_start = _ragged_cumsum(inc, _runs([s_user])) - inc
    early_end = np.zeros(n, dtype=np.int64)
    early_end[s_user[s_last]] = (s_start + e_dur)[s_last]
    pe_user, pe_code, pe_t = s_user[owner], e_code, s_start[owner] + e_off

    # Planned return sessions of non-churners after the horizon, a few days apart.
    after_early = np.maximum(early_end, EARLY_WINDOW_MS)
    n_ret = np.where(churner, 0, 1 + _capped_poisson(rng, 0.3 + 0.8 * sz, 2, n))
    r_user = np.repeat(np.arange(n), n_ret)
    nr = len(r_user)
    ret_cols = np.stack(
        [
            rng.random(nr) < 0.4,
            1 + _capped_poisson(rng, 0.8, 3, nr),
            _capped_poisson(rng, 0.3, 2, nr),
            _capped_poisson(rng, 0.6, 2, nr) * has_dashboard[r_user],
        ],
        axis=1,
    ).astype(np.int64)
    ret_codes = _codes("notification_opened", "page_viewed", "search_performed", "dashboard_viewed")
    o_r, c_r = _expand(ret_cols, ret_codes)
    key_r = np.where(c_r == _E["notification_opened"], -1.0, rng.random(len(o_r)))
    o_r, c_r, off_r, dur_r = _layout_sessions(rng, o_r, c_r, key_r)
    r_start = _chain_starts(rng, r_user, after_early[r_user], dur_r, np.full(nr, 3.0 * DAY))
    pl_user = np.concatenate([pe_user, r_user[o_r]])
    pl_code = np.concatenate([pe_code, c_r])
    pl_t = np.concatenate([pe_t, r_start[o_r] + off_r])
    pl_return = np.arange(len(pl_user)) >= len(pe_user)
    # Presentation draws (property value, timestamp style, alias twin) of the plan, too.
    pl_u = rng.random((len(pl_user), 4))
    pl_off = rng.integers(0, len(OFFSETS_MIN), len(pl_user))

    # ---- 2. The probability: the segment, the drift and the early plan (and a little z). ----
    if planted:
        signup_pos = (signup - start_ms) / (signup_days * DAY)  # 0 = oldest, 1 = newest
        logit = (
            ACT_BASE
            + ACT_ROLE[role]
            + ACT_PLAN[plan]
            + ACT_SIZE[size]
            + ACT_USE_CASE[use_case]
            + ACT_DRIFT * (signup_pos - 0.5)
            + _EFFECT["data_source_connected"] * source
            + _EFFECT["teammate_invited"] * (n_inv > 0)
            + _EFFECT["template_used"] * (n_tmpl > 0)
            + _EFFECT["permission_error"] * (n_perm > 0)
            + _EFFECT["integration_failed"] * (n_intf > 0)
            + _EFFECT["sso_login_failed"] * (n_sso > 0)
            + CHURN_EFFECT * churner
            + Z_ACT * z
        )
    else:
        logit = np.full(n, NOISE_LOGIT)
    p_act = _sigmoid(logit)

    # ---- 3. The draw and the activation time, independent of the plan given p. ----
    within = rng.random(n) < p_act
    late = ~within & (rng.random(n) < LATE_ACTIVATOR_RATE * p_act)
    t_within = _activation_times(rng, n, inside_share)
    lo, hi = LATE_DAYS[0] * DAY, LATE_DAYS[1] * DAY
    t_late = lo + ((hi - lo) * rng.beta(1.2, 2.0, n)).astype(np.int64)
    t_act = np.where(within, t_within, np.where(late, t_late, -1)).astype(np.int64)
    activated = within | late

    # ---- 4. After T only: the aha session (setup steps not done before T, then the share). ----
    act_idx = np.flatnonzero(activated)
    na = len(act_idx)
    big = np.iinfo(np.int64).max
    setup_t = np.full((n, len(_SETUP_CODES)), big, dtype=np.int64)
    for k, code in enumerate(_SETUP_CODES):
        m = pe_code == code
        first_t = np.full(n, big, dtype=np.int64)
        np.minimum.at(first_t, pe_user[m], pe_t[m])
        setup_t[:, k] = first_t
    t_a = t_act[act_idx]
    todo = setup_t[act_idx] >= t_a[:, None]
    aha_cols = np.column_stack(
        [
            rng.random(na) < 0.5,  # page_viewed
            todo,  # onboarding, profile, workspace, dashboard_created
            np.ones(na, dtype=bool),  # dashboard_shared
            rng.random(na) < 0.5,  # dashboard_viewed
            rng.random(na) < 0.15,  # report_exported
        ]
    ).astype(np.int64)
    aha_codes = np.concatenate(
        [
            _codes("page_viewed"),
            _SETUP_CODES,
            _codes("dashboard_shared", "dashboard_viewed", "report_exported"),
        ]
    )
    o_a, c_a = _expand(aha_cols, aha_codes)
    rank = np.zeros(len(EVENT_NAMES))
    rank[aha_codes] = np.arange(len(aha_codes))
    o_a, c_a, off_a, dur_a = _layout_sessions(rng, o_a, c_a, rank[c_a], AHA_GAP_MAX_MS)
    aha_end = t_a + dur_a

    # The plan after T: keep the planned early events, except during the aha session and the
    # setup steps it did; planned return sessions give way to the usage below.
    t_user = np.full(n, big, dtype=np.int64)
    t_user[act_idx] = t_a
    end_user = np.full(n, -1, dtype=np.int64)
    end_user[act_idx] = aha_end
    after_t = pl_t >= t_user[pl_user]
    drop = after_t & ((pl_t <= end_user[pl_user]) | np.isin(pl_code, _SETUP_CODES) | pl_return)
    parts_user = [pl_user[~drop], act_idx[o_a]]
    parts_code = [pl_code[~drop], c_a]
    parts_t = [pl_t[~drop], t_a[o_a] + off_a]

    # Usage sessions after the aha, until the user's lifetime or `now` runs out.
    now_off = now_ms - signup
    life = (7 * DAY + rng.exponential(90 * DAY, na)).astype(np.int64)
    span = np.minimum(now_off[act_idx] - aha_end, life)
    mean_gap = (0.5 + 3.5 * _sigmoid(-0.8 * z[act_idx])) * DAY
    n_use = np.where(
        span > SESSION_GAP_MIN_MS,
        np.ceil(0.9 * np.maximum(span, 0) / (mean_gap + SESSION_GAP_MIN_MS)) + 1,
        0,
    )
    n_use = np.minimum(n_use, 200).astype(np.int64)
    g_idx = np.repeat(np.arange(na), n_use)
    ng = len(g_idx)
    use_cols = np.stack(
        [
            rng.random(ng) < 0.25,
            1 + _capped_poisson(rng, 1.0, 4, ng),
            _capped_poisson(rng, 0.35, 2, ng),
            _capped_poisson(rng, 1.0, 4, ng),
            _capped_poisson(rng, 0.3, 2, ng),
            rng.random(ng) < 0.06,
        ],
        axis=1,
    ).astype(np.int64)
    use_codes = _codes(
        "notification_opened",
        "dashboard_viewed",
        "report_exported",
        "page_viewed",
        "search_performed",
        "dashboard_shared",
    )
    o_u, c_u = _expand(use_cols, use_codes)
    key_u = np.where(c_u == _E["notification_opened"], -1.0, rng.random(len(o_u)))
    o_u, c_u, off_u, dur_u = _layout_sessions(rng, o_u, c_u, key_u)
    u_start = _chain_starts(rng, g_idx, aha_end[g_idx], dur_u, mean_gap[g_idx])
    u_ok = u_start <= (aha_end + span)[g_idx]
    keep = u_ok[o_u]
    parts_user.append(act_idx[g_idx[o_u]][keep])
    parts_code.append(c_u[keep])
    parts_t.append((u_start[o_u] + off_u)[keep])

    # Assemble; log the alias twin of each dashboard_created; drop everything at or after
    # `now`; sort by user then time.
    ev_user = np.concatenate(parts_user).astype(np.int64)
    ev_code = np.concatenate(parts_code).astype(np.int16)
    ev_t = np.concatenate(parts_t)
    n_later = len(ev_user) - int((~drop).sum())
    ev_u = np.concatenate([pl_u[~drop], rng.random((n_later, 4))])
    ev_off = np.concatenate([pl_off[~drop], rng.integers(0, len(OFFSETS_MIN), n_later)])
    twin = (ev_code == _E["dashboard_created"]) & (ev_u[:, 2] < ALIAS_SHARE)
    delay = ALIAS_DELAY_MS[0] + (ev_u[twin, 3] * (ALIAS_DELAY_MS[1] - ALIAS_DELAY_MS[0]))
    ev_user = np.concatenate([ev_user, ev_user[twin]])
    ev_code = np.concatenate([ev_code, np.full(int(twin.sum()), _E["dashboard_create_clicked"])])
    ev_code = ev_code.astype(np.int16)
    ev_t = np.concatenate([ev_t, ev_t[twin] + delay.astype(np.int64)])
    ev_u = np.concatenate([ev_u, ev_u[twin]])  # same dashboard id, same timestamp style
    ev_off = np.concatenate([ev_off, ev_off[twin]])
    ev_ts = signup[ev_user] + ev_t
    keep = ev_ts < now_ms
    ev_user, ev_code, ev_ts = ev_user[keep], ev_code[keep], ev_ts[keep]
    ev_u, ev_off = ev_u[keep], ev_off[keep]
    order = np.lexsort((ev_ts, ev_user))
    ev_user, ev_code, ev_ts = ev_user[order], ev_code[order], ev_ts[order]
    ev_u, ev_off = ev_u[order], ev_off[order]

    ev_prop = _PROP_OFF[ev_code] + (ev_u[:, 0] * _PROP_SIZE[ev_code]).astype(np.int64)
    u_tz = ev_u[:, 1]
    ev_tz = np.where(u_tz < OFFSET_SHARE, 1, np.where(u_tz < OFFSET_SHARE + NAIVE_SHARE, 2, 0))

    return _Block(
        first_index=block * BLOCK_USERS,
        signup=signup,
        role=role,
        size=size,
        plan=plan,
        use_case=use_case,
        tech=tech,
        mobile=mobile,
        first_name=first_name,
        job_title=job_title,
        account=acc_global[account],
        company=acc_company[account],
        tld=acc_tld[account],
        z=z,
        p_act=p_act,
        within=within,
        late=late,
        activated=activated,
        t_act=t_act,
        churner=churner,
        ev_user=ev_user,
        ev_code=ev_code,
        ev_ts=ev_ts,
        ev_prop=ev_prop,
        ev_tz=ev_tz.astype(np.int8),
        ev_off=ev_off,
    )


# --- formatting ---------------------------------------------------------------------------------
_NAME_ARR = pa.array(EVENT_NAMES)
_OFFSET_SUFFIX = pa.array(
    [f"{'+' if m >= 0 else '-'}{abs(m) // 60:02d}:{abs(m) % 60:02d}" for m in OFFSETS_MIN]
)


def _strftime(ms: np.ndarray) -> pa.Array:
    """``YYYY-MM-DDTHH:MM:SS.mmm`` (no zone) for epoch milliseconds."""
    ts = pa.array(np.asarray(ms, dtype=np.int64), type=pa.timestamp("ms"))
    return pc.strftime(ts, format="%Y-%m-%dT%H:%M:%S")


def _iso_z(ms: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(_strftime(ms), "Z", "")


def _event_timestamps(ts: np.ndarray, tz: np.ndarray, off: np.ndarray) -> pa.Array:
    """Mostly UTC ``Z``; some with a non-UTC offset for the same instant; some naive."""
    shifted = ts + np.where(tz == 1, OFFSETS_MIN[off] * MIN, 0)
    base = _strftime(shifted)
    # suffix pool: 0 -> "Z", 1 -> "", 2.. -> offsets
    pool = pa.concat_arrays([pa.array(["Z", ""]), _OFFSET_SUFFIX])
    sel = np.where(tz == 0, 0, np.where(tz == 2, 1, 2 + off))
    return pc.binary_join_element_wise(base, pool.take(pa.array(sel)), "")


def _ids(prefix: str, nums: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(
        pc.cast(pa.array(np.asarray(nums, dtype=np.int64)), pa.string()), width=width, padding="0"
    )
    return pc.binary_join_element_wise(prefix, digits, "")


def _user_ids(nums: np.ndarray) -> pa.Array:
    return _ids("u", nums, 7)


def _session_ids(user_ids: pa.Array, ordinal: np.ndarray, mobile: np.ndarray) -> pa.Array:
    """``m-<user_id>-<n>`` for mobile users' sessions (n is 1-based), null for web."""
    text = pc.binary_join_element_wise(
        "m-", user_ids, "-", pc.cast(pa.array(ordinal), pa.string()), ""
    )
    return pc.if_else(pa.array(mobile), text, pa.nulls(len(mobile), pa.string()))


def _join_lines(cols: list[pa.Array]) -> pa.Array:
    """CSV records (no quoting needed except where the caller already quoted), nulls empty."""
    line = pc.binary_join_element_wise(*cols, ",", null_handling="replace", null_replacement="")
    return pc.binary_join_element_wise(line, "", "\n")


def _write_string_array(fh: Any, arr: pa.Array) -> None:
    """Write the concatenated values of a (non-null) string array without Python objects."""
    if len(arr) == 0:
        return
    arr = arr.cast(pa.large_string()) if arr.type != pa.large_string() else arr
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    fh.write(memoryview(data_buf)[int(offsets[0]) : int(offsets[-1])])


def _json_str(arr: pa.Array) -> pa.Array:
    """JSON value for strings that need no escaping (ids, names, timestamps); null -> null."""
    quoted = pc.binary_join_element_wise('"', arr, '"', "")
    return pc.if_else(pc.is_null(arr), "null", quoted)


# --- the streamed events file -------------------------------------------------------------------
@dataclass
class _Rows:
    """String columns of event rows ready to write; ``props_json`` is the JSONL value."""

    event_id: pa.Array
    user_id: pa.Array
    event_name: pa.Array
    timestamp: pa.Array
    session_id: pa.Array
    properties: pa.Array
    props_json: pa.Array


class _EventsSink:
    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self._fh: Any = None
        self._pq: pq.ParquetWriter | None = None
        if fmt == "parquet":
            schema = pa.schema([(c, pa.string()) for c in EVENTS_COLUMNS])
            self._pq = pq.ParquetWriter(path, schema, compression="zstd")
        else:
            self._fh = path.open("wb")
            if fmt == "csv":
                self._fh.write((",".join(EVENTS_COLUMNS) + "\n").encode())

    def write(self, rows: _Rows) -> None:
        if self.fmt == "parquet":
            assert self._pq is not None
            cols = [
                rows.event_id,
                rows.user_id,
                rows.event_name,
                rows.timestamp,
                rows.session_id,
                rows.properties,
            ]
            self._pq.write_table(pa.table(cols, names=list(EVENTS_COLUMNS)), row_group_size=1 << 20)
        elif self.fmt == "csv":
            # Only properties can hold quotes or commas: always quote it, doubling quotes.
            props = pc.binary_join_element_wise(
                '"', pc.replace_substring(rows.properties, '"', '""'), '"', ""
            )
            _write_string_array(
                self._fh,
                _join_lines(
                    [
                        rows.event_id,
                        rows.user_id,
                        rows.event_name,
                        rows.timestamp,
                        rows.session_id,
                        props,
                    ]
                ),
            )
        else:
            parts = [
                '{"event_id":',
                _json_str(rows.event_id),
                ',"user_id":',
                _json_str(rows.user_id),
                ',"event_name":',
                _json_str(rows.event_name),
                ',"timestamp":',
                _json_str(rows.timestamp),
                ',"session_id":',
                _json_str(rows.session_id),
                ',"properties":',
                rows.props_json,
                "}\n",
            ]
            _write_string_array(self._fh, pc.binary_join_element_wise(*parts, ""))

    def close(self) -> None:
        if self._pq is not None:
            self._pq.close()
        if self._fh is not None:
            self._fh.close()


# --- per-block row building ---------------------------------------------------------------------
@dataclass
class _BlockOutput:
    rows: _Rows
    dirty: list[tuple[int, str]]  # (row position within this block's rows, reason)
    n_clean: int
    n_dup: int
    reasons: dict[str, int]
    next_event_id: int


def _reason_count(n_clean: int) -> int:
    return REASON_MIN + round(REASON_RATE * n_clean)


def _dirty_estimate(n_clean: int) -> int:
    return round(DUPLICATE_RATE * n_clean) + len(EVENT_REASONS) * _reason_count(n_clean)


def _block_rows(
    blk: _Block, seed: int, block: int, dirty: bool, now_ms: int, first_event_id: int
) -> _BlockOutput:
    n_users = len(blk.signup)
    uid = _user_ids(blk.first_index + np.arange(n_users))
    ev_user = blk.ev_user
    n = len(ev_user)
    first = _runs([ev_user])
    # True sessions: consecutive events of a user more than 30 min apart start a new session.
    new_sess = first.copy()
    new_sess[1:] |= np.diff(blk.ev_ts) > 30 * MIN
    ordinal = _ragged_cumsum(new_sess.astype(np.int64), first)
    user_col = uid.take(pa.array(ev_user))
    session = _session_ids(user_col, ordinal, blk.mobile[ev_user])
    plan_prefix = _PROP_PREFIX.take(pa.array(blk.plan[ev_user]))
    props = pc.binary_join_element_wise(
        plan_prefix, _PROP_POOL.take(pa.array(blk.ev_prop)), "}", ""
    )
    cols = {
        "user_id": user_col,
        "event_name": _NAME_ARR.take(pa.array(blk.ev_code)),
        "timestamp": _event_timestamps(blk.ev_ts, blk.ev_tz, blk.ev_off),
        "session_id": session,
        "properties": props,
        "props_json": props,
    }
    # File order: by timestamp within the block (ties by user), like an event log.
    file_order = np.lexsort((ev_user, blk.ev_ts))
    pos_of_clean = np.empty(n, dtype=np.int64)
    pos_of_clean[file_order] = np.arange(n)

    extra_cols: dict[str, list[pa.Array]] = {k: [] for k in cols}
    keys = [pos_of_clean.astype(np.float64)]
    reasons_list: list[np.ndarray] = [np.full(n, -1, dtype=np.int64)]
    dup_src = np.zeros(0, dtype=np.int64)
    reasons: dict[str, int] = dict.fromkeys(EVENT_REASONS, 0)
    if dirty and n > 0:
        rng = np.random.default_rng([seed, block, 1])
        n_dup = min(n, round(DUPLICATE_RATE * n))
        dup_src = np.sort(rng.choice(n, n_dup, replace=False))
        for k, v in cols.items():
            extra_cols[k].append(v.take(pa.array(dup_src)))
        keys.append(pos_of_clean[dup_src] + rng.uniform(0.01, 30.0, n_dup))
        reasons_list.append(np.full(n_dup, -2, dtype=np.int64))
        k_r = _reason_count(n)
        for r_i, reason in enumerate(EVENT_REASONS):
            src = rng.integers(0, n, k_r)
            idx = pa.array(src)
            part = {k: v.take(idx) for k, v in cols.items()}
            z_ts = _iso_z(blk.ev_ts[src])
            part["timestamp"] = z_ts  # dirty rows use plain UTC unless the reason says otherwise
            nulls = pa.nulls(k_r, pa.string())
            if reason == "missing_user_id":
                part["user_id"] = nulls
            elif reason == "missing_event_name":
                part["event_name"] = nulls
            elif reason == "missing_timestamp":
                part["timestamp"] = nulls
            elif reason == "unparseable_timestamp":
                pool = pa.array(UNPARSEABLE_TIMESTAMPS)
                part["timestamp"] = pool.take(pa.array(rng.integers(0, len(pool), k_r)))
            elif reason == "unknown_user":
                ghost = _user_ids(rng.integers(UNKNOWN_USER_BASE, 10**7, k_r))
                part["user_id"] = ghost
                part["session_id"] = _session_ids(
                    ghost, np.ones(k_r, dtype=np.int64), blk.mobile[ev_user[src]]
                )
            elif reason == "future_timestamp":
                part["timestamp"] = _iso_z(_Y2099_MS + blk.ev_ts[src] % (300 * DAY))
            elif reason == "before_signup":
                before = blk.signup[ev_user[src]] - 30 * DAY - rng.integers(0, 12 * HOUR, k_r)
                part["timestamp"] = _iso_z(before)
                part["session_id"] = nulls
            elif reason == "invalid_properties":
                pick = pa.array(rng.integers(0, len(INVALID_PROPERTIES), k_r))
                part["properties"] = pa.array(INVALID_PROPERTIES).take(pick)
                part["props_json"] = pa.array([json.dumps(s) for s in INVALID_PROPERTIES]).take(
                    pick
                )
            for k in cols:
                extra_cols[k].append(part[k])
            keys.append(rng.uniform(-0.5, n - 0.5, k_r))
            reasons_list.append(np.full(k_r, r_i, dtype=np.int64))
            reasons[reason] = k_r

    all_keys = np.concatenate(keys)
    order = np.argsort(all_keys, kind="stable")
    reason_code = np.concatenate(reasons_list)[order]
    total = len(order)
    # Event ids: a running counter in file order; exact duplicates reuse their source's id.
    is_dup = reason_code == -2
    id_num = np.zeros(total, dtype=np.int64)
    id_num[~is_dup] = first_event_id + np.arange(int((~is_dup).sum()))
    if len(dup_src):
        inv = np.empty(total, dtype=np.int64)
        inv[order] = np.arange(total)
        id_num[inv[n : n + len(dup_src)]] = id_num[inv[dup_src]]
    take = pa.array(order)
    merged = {k: pa.concat_arrays([v, *extra_cols[k]]).take(take) for k, v in cols.items()}
    rows = _Rows(event_id=_ids("e", id_num, 10), **merged)
    dirty_pos = np.flatnonzero(reason_code != -1)
    labels = [
        "duplicate" if reason_code[p] == -2 else EVENT_REASONS[reason_code[p]] for p in dirty_pos
    ]
    return _BlockOutput(
        rows=rows,
        dirty=list(zip(dirty_pos.tolist(), labels, strict=True)),
        n_clean=n,
        n_dup=len(dup_src),
        reasons=reasons,
        next_event_id=first_event_id + int((~is_dup).sum()),
    )


def _sessions_table(blk: _Block) -> tuple[pa.Array, int]:
    """CSV lines of the block's true sessions (sorted by user, start) and their count."""
    ts, ev_user = blk.ev_ts, blk.ev_user
    if len(ts) == 0:
        return pa.array([], pa.string()), 0
    first = _runs([ev_user])
    new_sess = first.copy()
    new_sess[1:] |= np.diff(ts) > 30 * MIN
    starts = np.flatnonzero(new_sess)
    ends = np.append(starts[1:], len(ts)) - 1
    s_user = ev_user[starts]
    ordinal = _ragged_cumsum(np.ones(len(starts), dtype=np.int64), _runs([s_user]))
    uid = _user_ids(blk.first_index + s_user)
    lines = _join_lines(
        [
            uid,
            _iso_z(ts[starts]),
            _iso_z(ts[ends]),
            pc.cast(pa.array(ends - starts + 1), pa.string()),
            _session_ids(uid, ordinal, blk.mobile[s_user]),
        ]
    )
    return lines, len(starts)


def _users_frame(blk: _Block) -> pd.DataFrame:
    n = len(blk.signup)
    idx = blk.first_index + np.arange(n)
    roles = np.array(ROLES, dtype=object)[blk.role]
    titles = np.array(
        [JOB_TITLES[r][j % len(JOB_TITLES[r])] for r, j in zip(roles, blk.job_title, strict=True)],
        dtype=object,
    )
    n_adj, n_noun = len(COMPANY_ADJ), len(COMPANY_NOUN)
    adj = np.array(COMPANY_ADJ, dtype=object)[blk.company % n_adj]
    noun = np.array(COMPANY_NOUN, dtype=object)[(blk.company // n_adj) % n_noun]
    suffix = np.array(COMPANY_SUFFIX, dtype=object)[blk.company // (n_adj * n_noun)]
    first = np.array(FIRST_NAMES, dtype=object)[blk.first_name]
    domain = (adj + noun).astype(str)
    domain = np.char.lower(domain).astype(object) + np.array(DOMAIN_TLD, dtype=object)[blk.tld]
    uid = np.array(_user_ids(idx).to_pylist(), dtype=object)
    email = np.char.lower(first.astype(str)).astype(object) + "." + idx.astype(str) + "@" + domain
    return pd.DataFrame(
        {
            "user_id": uid,
            "signup_at": _iso_z(blk.signup).to_pylist(),
            "account_id": _ids("a", blk.account, 7).to_pylist(),
            "email": email,
            "first_name": first,
            "job_title": titles,
            "role": roles,
            "company": adj + " " + noun + " " + suffix,
            "company_size": np.array(SIZES, dtype=object)[blk.size],
            "plan": np.array(PLANS, dtype=object)[blk.plan],
            "use_case": np.array(USE_CASES, dtype=object)[blk.use_case],
            "tech_savvy": np.array(TECH, dtype=object)[blk.tech],
            "platform": np.array(PLATFORMS, dtype=object)[blk.mobile.astype(int)],
        }
    )


def _truth_users_frame(blk: _Block, now_ms: int, inside_share: float) -> pd.DataFrame:
    n = len(blk.signup)
    shared = blk.ev_code == _E["dashboard_shared"]
    first_aha = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_aha, blk.ev_user[shared], blk.ev_ts[shared])
    has_aha = first_aha < np.iinfo(np.int64).max
    aha_str = np.array(_iso_z(np.where(has_aha, first_aha, 0)).to_pylist(), dtype=object)
    aha_str[~has_aha] = ""
    within = has_aha & (first_aha <= blk.signup + ACTIVATION_WINDOW_MS)
    has_t = blk.t_act >= 0
    act_str = np.array(_iso_z(blk.signup + np.maximum(blk.t_act, 0)).to_pylist(), dtype=object)
    act_str[~has_t] = ""
    frame = pd.DataFrame(
        {
            "user_id": _user_ids(blk.first_index + np.arange(n)).to_pylist(),
            "signup_at": _iso_z(blk.signup).to_pylist(),
            "true_activation_probability": np.round(blk.p_act, 6),
            "activated_within_window": within,
            "first_aha_at": aha_str,
            "window_closed": blk.signup + ACTIVATION_WINDOW_MS <= now_ms,
            "late_activator": blk.late,
            "churner": blk.churner,
            "planted_activator": blk.activated,
            "latent_engagement": np.round(blk.z, 4),
            "activation_at": act_str,
            "hours_to_activation": np.where(has_t, np.round(blk.t_act / HOUR, 4), np.nan),
            "activated_inside_horizon": blk.within & (blk.t_act < EARLY_WINDOW_MS),
        }
    )
    for hours in LANDMARK_HOURS:
        truth = np.round(true_landmark_probability(blk.p_act, hours, inside_share), 6)
        done = blk.within & (blk.t_act <= hours * HOUR)
        frame[f"true_p_at_{hours}h"] = np.where(done, np.nan, truth)
    return frame


def _bool_text(df: pd.DataFrame) -> pd.DataFrame:
    for c in df.columns:
        if df[c].dtype == bool:
            df[c] = np.where(df[c].to_numpy(), "true", "false")
    return df


def _dirty_users(
    users: pd.DataFrame, seed: int, n_valid: int, now_ms: int
) -> tuple[pd.DataFrame, list[tuple[int, str]], dict[str, int]]:
    """Interleave dirty user rows into the last block's user rows.

    Fresh ids (u<n_valid + j>) are never referenced by events; the duplicate and the
    conflicting duplicate copy existing rows and come after them.
    """
    rng = np.random.default_rng([seed, 2**31 - 1])
    n = len(users)
    k = 2 + n_valid // 50_000
    counts = {
        "missing_user_id": k,
        "missing_signup_at": k,
        "unparseable_signup_at": k,
        "conflicting_duplicate_user": 1,
    }
    parts, keys, labels = [users], [np.arange(n, dtype=np.float64)], [[""] * n]
    fresh = 0
    for reason in ("missing_user_id", "missing_signup_at", "unparseable_signup_at"):
        src = rng.integers(0, n, k)
        part = users.iloc[src].copy()
        ids = n_valid + fresh + np.arange(k)
        fresh += k
        part["user_id"] = _user_ids(ids).to_pylist()
        local = part["email"].str.split("@").str[0].str.split(".").str[0]
        part["email"] = local + "." + ids.astype(str) + "@" + part["email"].str.split("@").str[1]
        if reason == "missing_user_id":
            part["user_id"] = ""
        elif reason == "missing_signup_at":
            part["signup_at"] = ""
        else:
            part["signup_at"] = np.array(UNPARSEABLE_SIGNUPS, dtype=object)[
                rng.integers(0, len(UNPARSEABLE_SIGNUPS), k)
            ]
        parts.append(part)
        keys.append(rng.uniform(-0.5, n - 0.5, k))
        labels.append([reason] * k)
    # One exact duplicate and one conflicting duplicate, of two different earlier rows.
    two = rng.choice(n, size=min(2, n), replace=False) if n >= 2 else np.array([0, 0])
    dup = users.iloc[[two[0]]].copy()
    conflict = users.iloc[[two[1]]].copy()
    signup_ms = int(pd.Timestamp(conflict["signup_at"].iloc[0]).value // 1_000_000)
    shift = int(rng.integers(1, 6)) * DAY + int(rng.integers(1, 600)) * MIN
    # Later than the valid row (a pipeline keeping the last row would then see events before
    # signup), unless that would put the signup after `now`.
    shifted = signup_ms + shift if signup_ms + shift < now_ms else signup_ms - shift
    conflict["signup_at"] = _iso_z(np.array([shifted])).to_pylist()
    parts += [dup, conflict]
    keys += [
        np.array([two[0] + rng.uniform(0.5, 40.0)]),
        np.array([two[1] + rng.uniform(0.5, 40.0)]),
    ]
    labels += [["duplicate"], ["conflicting_duplicate_user"]]
    merged = pd.concat(parts, ignore_index=True)
    order = np.argsort(np.concatenate(keys), kind="stable")
    flat_labels = np.array([lab for group in labels for lab in group], dtype=object)[order]
    merged = merged.iloc[order].reset_index(drop=True)
    dirty = [(int(p), str(flat_labels[p])) for p in np.flatnonzero(flat_labels != "")]
    return merged, dirty, counts


# --- driver -------------------------------------------------------------------------------------
def _blocks(
    seed: int, now_ms: int, signup_days: int, inside_share: float, planted: bool
) -> Iterator[tuple[int, _Block]]:
    block = 0
    while True:
        yield block, _simulate_block(seed, block, now_ms, signup_days, inside_share, planted)
        block += 1


def _to_utc_ms(now: datetime) -> int:
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return round(now.timestamp() * 1000)


def _write_event_effects(path: Path, planted: bool) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["event_name", "role", "log_odds_effect", "through"])
        for name, role, effect, through in EVENT_SPEC:
            if not planted and role in _EFFECT_ROLES:
                # The pure-noise world: nothing has an effect, nothing works through anything.
                role, effect, through = "neutral", 0.0, ""
            w.writerow([name, role, f"{effect:.1f}", through])


def generate_sample(
    out: Path,
    users: int = 3000,
    seed: int = 7,
    *,
    target_events: int | None = None,
    fmt: str = "csv",
    now: datetime = DEFAULT_NOW,
    signup_days: int = 120,
    dirty: bool = True,
    progress: bool = True,
    inside_horizon_share: float = 0.5,
    effects: Literal["planted", "none"] = "planted",
) -> GenerationSummary:
    """Write ``users.csv``, ``events.<fmt>`` and ``truth/`` under ``out``.

    With ``target_events`` the number of users is chosen (ignoring ``users``) so that the
    events file has about that many rows, dirty rows included. ``inside_horizon_share`` is the
    share of within-window activators whose activation starts inside the first 72 h;
    ``effects="none"`` gives a pure-noise world (the same ``p`` for everyone).
    """
    if not 0.0 <= inside_horizon_share <= 1.0:
        raise ValueError(f"inside_horizon_share must be in [0, 1], got {inside_horizon_share!r}")
    if effects not in EFFECTS:
        raise ValueError(f"effects must be one of {EFFECTS}, got {effects!r}")
    planted = effects == "planted"
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if signup_days < 1:
        raise ValueError("signup_days must be >= 1")
    if target_events is None and users < 1:
        raise ValueError("users must be >= 1")
    if target_events is not None and target_events < 1:
        raise ValueError("target_events must be >= 1")
    now_ms = _to_utc_ms(now)
    out = Path(out)
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    events_path = out / f"events.{fmt}"
    users_path = out / "users.csv"
    for stale in (out / f"events.{f}" for f in FORMATS if f != fmt):
        stale.unlink(missing_ok=True)  # a leftover other-format file would confuse readers

    sink = _EventsSink(events_path, fmt)
    users_fh = users_path.open("w", newline="")
    truth_users_fh = (truth / "users.csv").open("w", newline="")
    sessions_fh = (truth / "sessions.csv").open("wb")
    sessions_fh.write(b"user_id,session_start,session_end,event_count,session_id\n")
    bar = tqdm(
        total=users if target_events is None else None,
        unit="users",
        disable=not progress,
        desc="generating",
    )

    n_valid = events_written = clean = sessions = dups = 0
    next_id = 0
    user_rows = 0
    closed = activated = inside = 0
    ev_reasons = dict.fromkeys(EVENT_REASONS, 0)
    user_reasons = dict.fromkeys(USER_REASONS, 0)
    user_dups = 0
    dirty_rows: list[tuple[str, int, str]] = []
    try:
        for block, full in _blocks(seed, now_ms, signup_days, inside_horizon_share, planted):
            # How many users of this block to keep.
            if target_events is None:
                n_keep = min(BLOCK_USERS, users - n_valid)
                last = n_valid + n_keep >= users
            else:
                per_user = np.bincount(full.ev_user, minlength=BLOCK_USERS)
                cum = np.cumsum(per_user)
                extra = (
                    np.array([_dirty_estimate(int(c)) for c in cum])
                    if dirty
                    else np.zeros(len(cum), dtype=np.int64)
                )
                reached = np.flatnonzero(events_written + cum + extra >= target_events)
                n_keep = int(reached[0]) + 1 if len(reached) else BLOCK_USERS
                last = len(reached) > 0
            if n_valid + n_keep >= UNKNOWN_USER_BASE:
                raise ValueError("too many users for the u%07d id format")
            blk = full.truncate(n_keep) if n_keep < BLOCK_USERS else full

            res = _block_rows(blk, seed, block, dirty, now_ms, next_id)
            sink.write(res.rows)
            for pos, reason in res.dirty:
                dirty_rows.append((events_path.name, events_written + pos + 1, reason))
            events_written += len(res.rows.event_id)
            clean += res.n_clean
            dups += res.n_dup
            next_id = res.next_event_id
            for k, v in res.reasons.items():
                ev_reasons[k] += v

            lines, n_sess = _sessions_table(blk)
            _write_string_array(sessions_fh, lines)
            sessions += n_sess

            n_valid += n_keep
            udf = _users_frame(blk)
            if last and dirty:
                udf, udirty, ucounts = _dirty_users(udf, seed, n_valid, now_ms)
                for pos, reason in udirty:
                    dirty_rows.append((users_path.name, user_rows + pos + 1, reason))
                for k, v in ucounts.items():
                    user_reasons[k] += v
                user_dups += 1
            udf.to_csv(users_fh, index=False, header=block == 0, lineterminator="\n")
            user_rows += len(udf)

            tdf = _truth_users_frame(blk, now_ms, inside_horizon_share)
            done = tdf["window_closed"] & tdf["activated_within_window"]
            closed += int(tdf["window_closed"].sum())
            activated += int(done.sum())
            inside += int((done & tdf["activated_inside_horizon"]).sum())
            _bool_text(tdf).to_csv(
                truth_users_fh,
                index=False,
                header=block == 0,
                lineterminator="\n",
                float_format="%.6g",
            )
            if bar.total is None and target_events is not None:
                # Estimate the user count from the first block's events per user.
                per = max(1.0, events_written / max(n_valid, 1))
                bar.total = max(n_valid, round(target_events / per))
            bar.update(n_keep)
            if last:
                break
    finally:
        bar.close()
        sink.close()
        users_fh.close()
        truth_users_fh.close()
        sessions_fh.close()

    _write_event_effects(truth / "event_effects.csv", planted)
    dirty_rows.sort(key=lambda r: (r[0] != events_path.name, r[1]))
    with (truth / "dirty_rows.csv").open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["source", "row_number", "reason"])
        w.writerows(dirty_rows)

    paths = {
        "out": out.resolve(),
        "events": events_path.resolve(),
        "users": users_path.resolve(),
        "truth_users": (truth / "users.csv").resolve(),
        "truth_sessions": (truth / "sessions.csv").resolve(),
        "truth_event_effects": (truth / "event_effects.csv").resolve(),
        "truth_dirty_rows": (truth / "dirty_rows.csv").resolve(),
        "truth_summary": (truth / "summary.json").resolve(),
    }
    summary = GenerationSummary(
        users=n_valid,
        user_rows_written=user_rows,
        events_written=events_written,
        clean_events=clean,
        sessions=sessions,
        duplicates_injected=dups,
        user_duplicates_injected=user_dups,
        quarantine_expected={"events": ev_reasons, "users": user_reasons},
        closed_window_users=closed,
        activated_within_window=activated,
        activated_inside_horizon=inside,
        seed=seed,
        format=fmt,
        now=datetime.fromtimestamp(now_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{now_ms % 1000:03d}Z",
        effects=effects,
        inside_horizon_share=inside_horizon_share,
        paths={k: str(v) for k, v in paths.items()},
    )
    (truth / "summary.json").write_text(json.dumps(summary.to_json_dict(), indent=2) + "\n")
    return summary
