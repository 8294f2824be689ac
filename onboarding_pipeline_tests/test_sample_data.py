"""Tests of the synthetic data generator: determinism, planted truth and dirty-row bookkeeping."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import statsmodels.api as sm
from scipy import stats

from onboarding_pipeline.sample_data import GenerationSummary, generate_sample
from onboarding_pipeline.sample_data.__main__ import main as cli_main
from onboarding_pipeline.sample_data.generator import (
    CHURN_EFFECT,
    DEFAULT_NOW,
    EVENT_REASONS,
    EVENT_SPEC,
    USER_REASONS,
)

NOW_MS = int(DEFAULT_NOW.timestamp() * 1000)
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
DRIVERS = ("data_source_connected", "teammate_invited", "template_used")
VANITY = ("product_tour_completed", "help_article_viewed", "settings_viewed")
BLOCKERS = ("permission_error", "integration_failed")


# --- helpers ------------------------------------------------------------------------------------
def parse_ts(text: str) -> int | None:
    """Epoch ms of an ISO-8601 string (naive means UTC), or None when unparseable."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return round(value.timestamp() * 1000)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def event_problems(row: dict[str, str], signups: dict[str, int]) -> list[str]:
    """All problems of one events.csv row, in the quarantine's reason vocabulary."""
    problems = []
    user = row["user_id"]
    if not user:
        problems.append("missing_user_id")
    elif user not in signups:
        problems.append("unknown_user")
    if not row["event_name"]:
        problems.append("missing_event_name")
    ts = parse_ts(row["timestamp"]) if row["timestamp"] else None
    if not row["timestamp"]:
        problems.append("missing_timestamp")
    elif ts is None:
        problems.append("unparseable_timestamp")
    elif ts >= NOW_MS:
        problems.append("future_timestamp")
    elif user in signups and ts < signups[user]:
        problems.append("before_signup")
    if not is_json_object(row["properties"]):
        problems.append("invalid_properties")
    return problems


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationSummary]:
    out = tmp_path_factory.mktemp("small")
    return out, generate_sample(out, users=400, seed=11, progress=False)


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationSummary]:
    # Big enough for stable activation statistics, still about a second to generate.
    out = tmp_path_factory.mktemp("medium")
    return out, generate_sample(out, users=4000, seed=3, progress=False)


@pytest.fixture(scope="module")
def clean_events(small: tuple[Path, GenerationSummary]) -> list[dict[str, str]]:
    out, _ = small
    dirty = {
        int(r["row_number"])
        for r in read_csv(out / "truth" / "dirty_rows.csv")
        if r["source"] == "events.csv"
    }
    rows = read_csv(out / "events.csv")
    return [r for i, r in enumerate(rows, start=1) if i not in dirty]


def early_flags(out: Path) -> tuple[dict[str, dict[str, str]], dict[str, set[str]]]:
    """Truth rows by user and the event names each user did in the first 72 hours."""
    truth = {r["user_id"]: r for r in read_csv(out / "truth" / "users.csv")}
    signup = {u: parse_ts(r["signup_at"]) for u, r in truth.items()}
    dirty = {
        int(r["row_number"])
        for r in read_csv(out / "truth" / "dirty_rows.csv")
        if r["source"] == "events.csv"
    }
    did: dict[str, set[str]] = defaultdict(set)
    for i, r in enumerate(read_csv(out / "events.csv"), start=1):
        if i in dirty:
            continue
        ts = parse_ts(r["timestamp"])
        assert ts is not None
        if ts - signup[r["user_id"]] <= 3 * DAY_MS:
            did[r["user_id"]].add(r["event_name"])
    return truth, did


# --- determinism and formats --------------------------------------------------------------------
def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    a = generate_sample(tmp_path / "a", users=300, seed=5, progress=False)
    b = generate_sample(tmp_path / "b", users=300, seed=5, progress=False)
    files_a, files_b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    assert sorted(files_a) == sorted(files_b)
    assert "truth/summary.json" in files_a
    for name in files_a:
        assert files_a[name] == files_b[name], name
    assert a.events_written == b.events_written


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    generate_sample(tmp_path / "a", users=300, seed=5, progress=False)
    generate_sample(tmp_path / "b", users=300, seed=6, progress=False)
    assert (tmp_path / "a/events.csv").read_bytes() != (tmp_path / "b/events.csv").read_bytes()
    assert (tmp_path / "a/users.csv").read_bytes() != (tmp_path / "b/users.csv").read_bytes()


def test_fewer_users_is_a_prefix_of_more_users(tmp_path: Path) -> None:
    generate_sample(tmp_path / "a", users=50, seed=5, progress=False, dirty=False)
    generate_sample(tmp_path / "b", users=120, seed=5, progress=False, dirty=False)
    small_rows = read_csv(tmp_path / "a/truth/users.csv")
    big_rows = read_csv(tmp_path / "b/truth/users.csv")
    assert small_rows == big_rows[:50]


def test_parquet_and_jsonl_match_csv(small: tuple[Path, GenerationSummary], tmp_path: Path) -> None:
    out, summary = small
    csv_rows = read_csv(out / "events.csv")
    pq_sum = generate_sample(tmp_path / "pq", users=400, seed=11, fmt="parquet", progress=False)
    js_sum = generate_sample(tmp_path / "js", users=400, seed=11, fmt="jsonl", progress=False)
    table = pq.read_table(tmp_path / "pq/events.parquet")
    assert table.num_rows == len(csv_rows) == pq_sum.events_written == summary.events_written
    assert table.column("event_id").to_pylist() == [r["event_id"] for r in csv_rows]
    assert [v or "" for v in table.column("timestamp").to_pylist()] == [
        r["timestamp"] for r in csv_rows
    ]
    lines = (tmp_path / "js/events.jsonl").read_text().splitlines()
    assert len(lines) == len(csv_rows) == js_sum.events_written
    records = [json.loads(line) for line in lines]
    for rec, row in zip(records, csv_rows, strict=True):
        assert rec["event_id"] == row["event_id"]
        assert (rec["user_id"] or "") == row["user_id"]
        props = rec["properties"]
        if isinstance(props, dict):  # valid properties are nested objects in JSONL
            assert props == json.loads(row["properties"])
        else:  # invalid ones are a string holding the same bad text
            assert props == row["properties"]
            assert not is_json_object(props)
    # The JSONL dirty-row numbers point at lines with the same problems.
    dirty = read_csv(tmp_path / "js/truth/dirty_rows.csv")
    assert {r["source"] for r in dirty} == {"events.jsonl", "users.csv"}


def test_target_events_lands_within_ten_percent(tmp_path: Path) -> None:
    for target in (5_000, 60_000):
        s = generate_sample(tmp_path / str(target), target_events=target, seed=2, progress=False)
        assert abs(s.events_written - target) <= 0.1 * target, (target, s.events_written)
        with (tmp_path / str(target) / "events.csv").open() as fh:
            assert sum(1 for _ in fh) - 1 == s.events_written


def test_cli_writes_files(tmp_path: Path) -> None:
    code = cli_main(
        [
            "--users",
            "60",
            "--seed",
            "4",
            "--out",
            str(tmp_path),
            "--format",
            "jsonl",
            "--quiet",
            "--now",
            "2026-06-01T00:00:00Z",
            "--days",
            "30",
            "--no-dirty",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "truth/summary.json").read_text())
    assert summary["users"] == 60
    assert summary["now"] == "2026-06-01T00:00:00.000Z"
    assert summary["duplicates_injected"] == 0
    assert summary["events_written"] == summary["clean_events"]
    assert (tmp_path / "events.jsonl").exists()
    cutoff = parse_ts("2026-06-01T00:00:00Z")
    earliest = parse_ts("2026-05-02T00:00:00Z")
    assert cutoff is not None and earliest is not None
    for line in (tmp_path / "events.jsonl").read_text().splitlines():
        ts = parse_ts(json.loads(line)["timestamp"])
        assert ts is not None and earliest <= ts < cutoff


# --- sessions and time --------------------------------------------------------------------------
def test_every_clean_event_is_in_exactly_one_true_session(
    small: tuple[Path, GenerationSummary], clean_events: list[dict[str, str]]
) -> None:
    out, summary = small
    sessions = read_csv(out / "truth" / "sessions.csv")
    assert len(sessions) == summary.sessions
    assert len(clean_events) == summary.clean_events
    assert [(s["user_id"], s["session_start"]) for s in sessions] == sorted(
        (s["user_id"], s["session_start"]) for s in sessions
    )
    by_user: dict[str, list[dict[str, str]]] = defaultdict(list)
    for s in sessions:
        by_user[s["user_id"]].append(s)
    platform = {r["user_id"]: r["platform"] for r in read_csv(out / "users.csv")}
    hits: Counter[tuple[str, str]] = Counter()
    for ev in clean_events:
        ts = parse_ts(ev["timestamp"])
        assert ts is not None
        owners = [
            s
            for s in by_user[ev["user_id"]]
            if parse_ts(s["session_start"]) <= ts <= parse_ts(s["session_end"])  # type: ignore[operator]
        ]
        assert len(owners) == 1, ev
        hits[(ev["user_id"], owners[0]["session_start"])] += 1
        # Mobile events carry the true session id; web events carry none.
        expected = owners[0]["session_id"] if platform[ev["user_id"]] == "mobile" else ""
        assert ev["session_id"] == expected
        if platform[ev["user_id"]] == "mobile":
            assert expected.startswith(f"m-{ev['user_id']}-")
    for s in sessions:
        assert hits[(s["user_id"], s["session_start"])] == int(s["event_count"])


def test_session_gaps_follow_the_20_minute_and_2_hour_rules(
    clean_events: list[dict[str, str]],
) -> None:
    times: dict[str, list[int]] = defaultdict(list)
    for ev in clean_events:
        ts = parse_ts(ev["timestamp"])
        assert ts is not None
        times[ev["user_id"]].append(ts)
    inside = between = 0
    for stamps in times.values():
        stamps.sort()
        for a, b in pairwise(stamps):
            gap = b - a
            assert gap >= 5_000
            # Nothing between 20 minutes and 2 hours, so a 30-minute rule is exact.
            assert gap <= 20 * 60_000 or gap >= 2 * 3_600_000, gap
            inside += gap <= 20 * 60_000
            between += gap >= 2 * 3_600_000
    assert inside > 0 and between > 0


def test_no_event_after_now_or_before_signup(
    small: tuple[Path, GenerationSummary], clean_events: list[dict[str, str]]
) -> None:
    out, _ = small
    signup = {r["user_id"]: parse_ts(r["signup_at"]) for r in read_csv(out / "truth/users.csv")}
    first_event: dict[str, tuple[int, str]] = {}
    for ev in clean_events:
        ts = parse_ts(ev["timestamp"])
        assert ts is not None and ts < NOW_MS
        assert ts >= signup[ev["user_id"]]  # type: ignore[operator]
        if ev["user_id"] not in first_event or ts < first_event[ev["user_id"]][0]:
            first_event[ev["user_id"]] = (ts, ev["event_name"])
    # Everyone signs up, and signed_up is stamped exactly at signup_at.
    assert set(first_event) == set(signup)
    for user, (ts, name) in first_event.items():
        assert name == "signed_up" and ts == signup[user]
    span = max(signup.values()) - min(signup.values())  # type: ignore[type-var, operator]
    assert 100 * DAY_MS < span < 120 * DAY_MS


def test_timestamp_styles_are_mixed_but_denote_the_same_instants(
    clean_events: list[dict[str, str]],
) -> None:
    styles = Counter(
        "z" if t.endswith("Z") else "offset" if t[-6] in "+-" else "naive"
        for t in (ev["timestamp"] for ev in clean_events)
    )
    n = len(clean_events)
    assert 0.03 < styles["offset"] / n < 0.07
    assert 0.03 < styles["naive"] / n < 0.07
    # Offset stamps are real non-UTC offsets; parsing them keeps per-user order intact.
    assert any(
        t["timestamp"][-6:] not in ("+00:00", "-00:00")
        for t in clean_events
        if t["timestamp"][-6] in "+-"
    )


# --- dirty rows ---------------------------------------------------------------------------------
def test_dirty_event_rows_have_exactly_the_listed_problem(
    small: tuple[Path, GenerationSummary],
) -> None:
    out, summary = small
    signups = {r["user_id"]: parse_ts(r["signup_at"]) for r in read_csv(out / "truth/users.csv")}
    listed = {
        int(r["row_number"]): r["reason"]
        for r in read_csv(out / "truth/dirty_rows.csv")
        if r["source"] == "events.csv"
    }
    seen: dict[str, dict[str, str]] = {}
    reasons: Counter[str] = Counter()
    for number, row in enumerate(read_csv(out / "events.csv"), start=1):
        reason = listed.get(number)
        if reason == "duplicate":
            assert seen[row["event_id"]] == row  # exact copy of an earlier row
            reasons[reason] += 1
            continue
        assert row["event_id"] not in seen, number
        seen[row["event_id"]] = row
        problems = event_problems(row, signups)  # type: ignore[arg-type]
        assert problems == ([reason] if reason else []), (number, reason, problems, row)
        if reason:
            reasons[reason] += 1
    assert reasons["duplicate"] == summary.duplicates_injected
    assert 0.003 < summary.duplicates_injected / summary.clean_events < 0.007
    expected = summary.quarantine_expected["events"]
    assert set(expected) == set(EVENT_REASONS)
    for reason in EVENT_REASONS:
        assert expected[reason] >= 2
        assert reasons[reason] == expected[reason], reason
    assert summary.events_written == summary.clean_events + sum(reasons.values())


def test_dirty_user_rows_have_exactly_the_listed_problem(
    small: tuple[Path, GenerationSummary], clean_events: list[dict[str, str]]
) -> None:
    out, summary = small
    listed = {
        int(r["row_number"]): r["reason"]
        for r in read_csv(out / "truth/dirty_rows.csv")
        if r["source"] == "users.csv"
    }
    rows = read_csv(out / "users.csv")
    assert len(rows) == summary.user_rows_written
    first_seen: dict[str, dict[str, str]] = {}
    reasons: Counter[str] = Counter()
    for number, row in enumerate(rows, start=1):
        reason = listed.get(number, "")
        reasons[reason] += 1
        uid = row["user_id"]
        if reason == "missing_user_id":
            assert uid == "" and parse_ts(row["signup_at"]) is not None
        elif reason == "missing_signup_at":
            assert uid and uid not in first_seen and row["signup_at"] == ""
        elif reason == "unparseable_signup_at":
            assert uid and uid not in first_seen and row["signup_at"]
            assert parse_ts(row["signup_at"]) is None
        elif reason == "duplicate":
            assert first_seen[uid] == row
        elif reason == "conflicting_duplicate_user":
            earlier = first_seen[uid]
            assert earlier["signup_at"] != row["signup_at"]
            assert {k: v for k, v in earlier.items() if k != "signup_at"} == {
                k: v for k, v in row.items() if k != "signup_at"
            }
        else:
            assert uid and uid not in first_seen and parse_ts(row["signup_at"]) is not None
        if uid and uid not in first_seen and not reason:
            first_seen[uid] = row
    assert reasons[""] == summary.users
    assert reasons["duplicate"] == summary.user_duplicates_injected == 1
    for reason in USER_REASONS:
        assert reasons[reason] == summary.quarantine_expected["users"][reason] >= 1
    # Dirty users (fresh ids) never appear in the events, so they cause no unknown_user rows.
    valid = set(first_seen)
    dirty_ids = {
        r["user_id"]
        for n, r in enumerate(rows, 1)
        if listed.get(n) in ("missing_signup_at", "unparseable_signup_at")
    }
    assert dirty_ids and not dirty_ids & valid
    assert not dirty_ids & {ev["user_id"] for ev in clean_events}


def test_no_dirty_rows_when_disabled(tmp_path: Path) -> None:
    s = generate_sample(tmp_path, users=200, seed=1, dirty=False, progress=False)
    assert s.events_written == s.clean_events and s.duplicates_injected == 0
    assert all(v == 0 for v in s.quarantine_expected["events"].values())
    assert read_csv(tmp_path / "truth/dirty_rows.csv") == []
    assert len(read_csv(tmp_path / "users.csv")) == 200


# --- planted behaviour --------------------------------------------------------------------------
def test_event_effects_truth_file() -> None:
    effects = {name: (role, effect) for name, role, effect in EVENT_SPEC}
    assert effects["data_source_connected"] == ("driver", 1.2)
    assert effects["teammate_invited"] == ("driver", 0.8)
    assert effects["template_used"] == ("driver", 0.6)
    assert effects["permission_error"] == ("blocker", -1.0)
    assert effects["integration_failed"] == ("blocker", -0.7)
    assert all(effects[v] == ("vanity", 0.0) for v in VANITY)


def test_activation_rates_follow_drivers_blockers_and_vanity(
    medium: tuple[Path, GenerationSummary],
) -> None:
    out, summary = medium
    effects = {r["event_name"]: r for r in read_csv(out / "truth/event_effects.csv")}
    truth, did = early_flags(out)
    closed = [u for u, r in truth.items() if r["window_closed"] == "true"]
    act = {u: truth[u]["activated_within_window"] == "true" for u in closed}
    rate = sum(act.values()) / len(closed)
    assert 0.30 <= rate <= 0.45
    assert summary.closed_window_users == len(closed)
    assert summary.activated_within_window == sum(act.values())

    def rates(event: str) -> tuple[float, float]:
        doers = [act[u] for u in closed if event in did[u]]
        others = [act[u] for u in closed if event not in did[u]]
        assert len(doers) > 50 and len(others) > 50, event
        return sum(doers) / len(doers), sum(others) / len(others)

    for event in DRIVERS:
        with_e, without = rates(event)
        assert with_e > without + 0.1, event
        assert float(effects[event]["log_odds_effect"]) > 0
    for event in BLOCKERS:
        with_e, without = rates(event)
        assert with_e < without - 0.05, event
        assert float(effects[event]["log_odds_effect"]) < 0
    for event in VANITY:
        # Correlated with activation (through engagement) although the planted effect is zero.
        with_e, without = rates(event)
        assert with_e > without + 0.05, event
        assert effects[event]["role"] == "vanity"
        assert float(effects[event]["log_odds_effect"]) == 0.0


def test_activation_probability_ignores_engagement_given_events(
    medium: tuple[Path, GenerationSummary],
) -> None:
    """logit(p) minus the planted event and churn effects is a function of the segment alone."""
    out, _ = medium
    truth, did = early_flags(out)
    segment = {
        r["user_id"]: (r["role"], r["plan"], r["company_size"], r["use_case"])
        for r in read_csv(out / "users.csv")
        if r["user_id"]
    }
    effect = {name: eff for name, _, eff in EVENT_SPEC if eff}
    residual: dict[tuple[str, ...], list[float]] = defaultdict(list)
    engagement_spread = []
    for user, row in truth.items():
        signup = parse_ts(row["signup_at"])
        assert signup is not None
        if NOW_MS - signup < 3 * DAY_MS + 1:
            continue  # early window still open: not all early events happened yet
        p = float(row["true_activation_probability"])
        logit = math.log(p / (1 - p))
        planted = sum(effect.get(e, 0.0) for e in did[user])
        planted += CHURN_EFFECT * (row["churner"] == "true")
        residual[segment[user]].append(logit - planted)
        engagement_spread.append(float(row["latent_engagement"]))
    spreads = [max(v) - min(v) for v in residual.values() if len(v) > 1]
    assert spreads and max(spreads) < 1e-3  # only rounding of the 6-decimal probability
    assert max(engagement_spread) - min(engagement_spread) > 2.0  # z does vary a lot


def test_aha_timing_late_activators_and_churners(
    medium: tuple[Path, GenerationSummary],
) -> None:
    out, _ = medium
    truth = {r["user_id"]: r for r in read_csv(out / "truth/users.csv")}
    sessions = read_csv(out / "truth/sessions.csv")
    n_sessions = Counter(r["user_id"] for r in sessions)
    late = normal = 0
    for user, r in truth.items():
        signup = parse_ts(r["signup_at"])
        assert signup is not None
        if r["first_aha_at"]:
            days = (parse_ts(r["first_aha_at"]) - signup) / DAY_MS  # type: ignore[operator]
            if r["late_activator"] == "true":
                assert 15 <= days < 40
                assert r["activated_within_window"] == "false"
                late += 1
            else:
                # Never inside the 72-hour early horizon (+ the 2-hour session gap).
                assert 3 + 2 / 24 <= days < 14
                assert r["activated_within_window"] == "true"
                normal += 1
        if r["churner"] == "true" and r["planted_activator"] != "true":
            assert n_sessions[user] == 1  # a single session, never back
    assert normal > 0 and 0.03 < late / (late + normal) < 0.15
    churners = [r for r in truth.values() if r["churner"] == "true"]
    assert 0.05 < len(churners) / len(truth) < 0.35
    # Churn is decided before the activation draw: churners can activate, but rarely.
    churn_act = sum(r["planted_activator"] == "true" for r in churners) / len(churners)
    others = [r for r in truth.values() if r["churner"] != "true"]
    other_act = sum(r["planted_activator"] == "true" for r in others) / len(others)
    assert 0 < churn_act < 0.2 < other_act
    # Whoever they are, churners have a single session in the early horizon (and its gap);
    # everyone else comes back within it, so "one early session" is exactly the churners.
    signup = {u: parse_ts(r["signup_at"]) for u, r in truth.items()}
    early_sessions = Counter(
        s["user_id"]
        for s in sessions
        if parse_ts(s["session_start"]) < signup[s["user_id"]] + 3 * DAY_MS + 2 * HOUR_MS  # type: ignore[operator]
    )
    complete = [u for u in truth if signup[u] + 3 * DAY_MS <= NOW_MS]  # type: ignore[operator]
    assert all((early_sessions[u] == 1) == (truth[u]["churner"] == "true") for u in complete)
    assert all(early_sessions[r["user_id"]] == 1 for r in churners)
    # Activators keep coming back: retention is measurable.
    act_sessions = [n_sessions[u] for u, r in truth.items() if r["first_aha_at"]]
    assert sum(act_sessions) / len(act_sessions) > 5


def test_early_behaviour_carries_no_information_about_the_draw(tmp_path: Path) -> None:
    """Early-horizon features add nothing to the true probability (likelihood-ratio test).

    The pipeline predicts activation from the events of the first 72 hours before the first
    ``dashboard_shared``. If any of them were generated after (and depending on) the activation
    draw, they would predict ``activated_within_window`` beyond ``true_activation_probability``.
    """
    out = tmp_path / "leak"
    generate_sample(out, users=6000, seed=21, dirty=False, progress=False)
    truth = pd.read_csv(out / "truth/users.csv").set_index("user_id")
    signup = pd.to_datetime(truth["signup_at"], format="ISO8601", utc=True)
    events = pd.read_csv(out / "events.csv", usecols=["user_id", "event_name", "timestamp"])
    events["ts"] = pd.to_datetime(events["timestamp"], format="ISO8601", utc=True)
    events = events.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    user = events["user_id"]
    since = (events["ts"] - user.map(signup)).dt.total_seconds() * 1000
    assert (since >= 0).all()
    # True sessions: a new one after more than 30 minutes of inactivity.
    new_session = (user != user.shift()) | (events["ts"].diff() > pd.Timedelta(minutes=30))
    events["session"] = new_session.cumsum()
    shared = events["event_name"] == "dashboard_shared"
    first_aha = events[shared].groupby("user_id")["ts"].min()
    aha_since = (first_aha - signup.reindex(first_aha.index)).dt.total_seconds() * 1000
    assert len(aha_since) > 1000 and (aha_since >= 3 * DAY_MS).all()
    aha = user.map(first_aha)
    in_horizon = since < 3 * DAY_MS
    early = events[in_horizon & (aha.isna() | (events["ts"] < aha))]
    # By construction no horizon event comes at or after the user's first aha.
    assert len(early) == int(in_horizon.sum())

    closed = truth[truth["window_closed"]]
    counts = early.groupby(["user_id", "event_name"]).size().unstack(fill_value=0)
    counts["n_sessions"] = early.groupby("user_id")["session"].nunique()
    features = np.log1p(counts.reindex(closed.index, fill_value=0).astype(float))
    features = features.loc[:, features.nunique() > 1]
    assert {"data_source_connected", "help_article_viewed", "n_sessions"} <= set(features)
    p = closed["true_activation_probability"].clip(1e-6, 1 - 1e-6)
    logit_p = np.log(p / (1 - p)).rename("logit_p").to_frame()
    y = closed["activated_within_window"].astype(float)
    assert len(y) > 4000 and 0.30 <= y.mean() <= 0.45
    base = sm.Logit(y, sm.add_constant(logit_p)).fit(disp=0)
    full = sm.Logit(y, sm.add_constant(pd.concat([logit_p, features], axis=1))).fit(disp=0)
    lr = 2 * (full.llf - base.llf)
    p_value = stats.chi2.sf(lr, features.shape[1])
    assert p_value > 0.01, (lr, features.shape[1], p_value)
    # The features do carry information about activation - through the true probability.
    alone = sm.Logit(y, sm.add_constant(features)).fit(disp=0)
    assert alone.llr_pvalue < 1e-20


def test_funnel_steps_appear_in_order(clean_events: list[dict[str, str]]) -> None:
    funnel = [
        "signed_up",
        "onboarding_started",
        "profile_completed",
        "workspace_created",
        "dashboard_created",
        "dashboard_shared",
    ]
    first: dict[str, dict[str, int]] = defaultdict(dict)
    for ev in clean_events:
        ts = parse_ts(ev["timestamp"])
        assert ts is not None
        seen = first[ev["user_id"]]
        seen[ev["event_name"]] = min(ts, seen.get(ev["event_name"], ts))
    shared_users = 0
    for seen in first.values():
        present = [seen[name] for name in funnel if name in seen]
        assert present == sorted(present)
        if "dashboard_shared" in seen:
            shared_users += 1
            assert "dashboard_created" in seen  # an aha needs a dashboard
            for driver in DRIVERS:
                if driver in seen:
                    assert seen[driver] < seen["dashboard_shared"]
    assert shared_users > 0


def test_summary_json_matches_return_value(small: tuple[Path, GenerationSummary]) -> None:
    out, summary = small
    data = json.loads((out / "truth/summary.json").read_text())
    assert data["events_written"] == summary.events_written
    assert data["quarantine_expected"] == summary.quarantine_expected
    assert data["now"] == "2026-11-01T00:00:00.000Z"
    assert data["paths"]["events"] == "events.csv"
    assert Path(summary.paths["events"]) == (out / "events.csv").resolve()


def test_invalid_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt"):
        generate_sample(tmp_path, users=10, fmt="xlsx", progress=False)
    with pytest.raises(ValueError, match="users"):
        generate_sample(tmp_path, users=0, progress=False)


def test_now_is_respected(tmp_path: Path) -> None:
    now = datetime(2025, 3, 10, 12, 30, tzinfo=UTC)
    s = generate_sample(tmp_path, users=150, seed=9, now=now, signup_days=20, progress=False)
    cutoff = now.timestamp() * 1000
    dirty = {
        int(r["row_number"])
        for r in read_csv(tmp_path / "truth/dirty_rows.csv")
        if r["source"] == "events.csv"
    }
    rows = read_csv(tmp_path / "events.csv")
    for number, ev in enumerate(rows, start=1):
        if number not in dirty:
            ts = parse_ts(ev["timestamp"])
            assert ts is not None
            assert (now - timedelta(days=20)).timestamp() * 1000 <= ts < cutoff
    assert s.users == 150
