"""Tests of the synthetic data generator: determinism, planted truth and dirty-row bookkeeping."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
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
    ACT_DRIFT,
    CHECKLIST_TRACKED_DAYS,
    CHURN_EFFECT,
    DEFAULT_NOW,
    EVENT_REASONS,
    EVENT_SPEC,
    LANDMARK_HOURS,
    USER_REASONS,
    Z_ACT,
    activation_time_cdf,
    true_landmark_probability,
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
    # Big enough for stable activation statistics (one full block), about a second to generate.
    out = tmp_path_factory.mktemp("medium")
    return out, generate_sample(out, users=5000, seed=3, progress=False)


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
    small: tuple[Path, GenerationSummary], clean_events: list[dict[str, str]]
) -> None:
    """A user's planned sessions keep 5 s - 20 min inside and >= 2 h between, so a 30-minute
    rule is exact for users who never activate; the alias twin comes within a second; an
    activator's aha and usage sessions may fall close to a planned one (the truth's sessions
    are cut by the same 30-minute rule either way)."""
    out, _ = small
    activators = {
        r["user_id"] for r in read_csv(out / "truth/users.csv") if r["planted_activator"] == "true"
    }
    times: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for ev in clean_events:
        ts = parse_ts(ev["timestamp"])
        assert ts is not None
        times[ev["user_id"]].append((ts, ev["event_name"]))
    inside = between = odd = total = 0
    for user, stamps in times.items():
        stamps.sort()
        for (a, _), (b, name) in pairwise(stamps):
            gap = b - a
            total += 1
            if name == "dashboard_create_clicked":
                assert 30 <= gap < 1_000, gap
                continue
            regular = 5_000 <= gap <= 20 * 60_000 or gap >= 2 * 3_600_000
            if user not in activators:
                assert regular, (user, gap)
            odd += not regular
            inside += 5_000 <= gap <= 20 * 60_000
            between += gap >= 2 * 3_600_000
    assert inside > 0 and between > 0
    assert odd < 0.02 * total


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
@dataclass
class World:
    """One generated world read with pandas: truth by user, users, clean events."""

    out: Path
    summary: GenerationSummary
    truth: pd.DataFrame  # index user_id
    users: pd.DataFrame  # index user_id (valid rows only)
    events: pd.DataFrame  # clean events sorted by user and time; `hours` since signup


def epoch_ms(stamps: pd.Series) -> pd.Series:
    return stamps.dt.as_unit("ms").astype("int64")


def load_world(out: Path, summary: GenerationSummary) -> World:
    truth = pd.read_csv(out / "truth/users.csv").set_index("user_id")
    truth["signup"] = pd.to_datetime(truth["signup_at"], format="ISO8601", utc=True)
    users = pd.read_csv(out / "users.csv").dropna(subset=["user_id"])
    users = users.drop_duplicates("user_id").set_index("user_id").loc[truth.index]
    events = pd.read_csv(
        out / "events.csv", usecols=["user_id", "event_name", "timestamp", "properties"]
    )
    dirty = pd.read_csv(out / "truth/dirty_rows.csv")
    dirty_rows = dirty.loc[dirty["source"] == "events.csv", "row_number"].to_numpy() - 1
    events = events.drop(index=dirty_rows)
    events["ts"] = pd.to_datetime(events["timestamp"], format="ISO8601", utc=True)
    events = events.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    since = events["ts"] - events["user_id"].map(truth["signup"])
    events["hours"] = since.dt.total_seconds() / 3600
    return World(out, summary, truth, users, events)


@pytest.fixture(scope="module")
def world(medium: tuple[Path, GenerationSummary]) -> World:
    return load_world(*medium)


def landmark_population(w: World, hours: int) -> pd.DataFrame:
    """Closed-window users not activated by ``hours`` (the truth says so: T > hours)."""
    t = w.truth
    return t[t["window_closed"] & t[f"true_p_at_{hours}h"].notna()]


def flags_before(w: World, users: pd.Index, hours: float) -> pd.DataFrame:
    """0/1 per user and event name: did it at least once in the first ``hours``."""
    early = w.events[w.events["hours"] < hours]
    counts = early.groupby(["user_id", "event_name"]).size().unstack(fill_value=0)
    return (counts.reindex(users, fill_value=0) > 0).astype(int)


def test_event_effects_truth_file(world: World) -> None:
    effects = {name: (role, effect, through) for name, role, effect, through in EVENT_SPEC}
    assert effects["data_source_connected"] == ("driver", 1.2, "")
    assert effects["teammate_invited"] == ("driver", 0.8, "")
    assert effects["template_used"] == ("driver", 0.6, "")
    assert effects["permission_error"] == ("blocker", -1.0, "")
    assert effects["integration_failed"] == ("blocker", -0.7, "")
    assert effects["sso_login_failed"] == ("blocker", -3.5, "")
    assert effects["workspace_created"] == ("prerequisite", 0.0, "data_source_connected")
    assert effects["dashboard_create_clicked"] == ("alias", 0.0, "dashboard_created")
    assert effects["checklist_viewed"] == ("newly_tracked", 0.0, "")
    assert all(effects[v] == ("vanity", 0.0, "") for v in VANITY)
    written = pd.read_csv(world.out / "truth/event_effects.csv", keep_default_na=False)
    assert list(written.columns) == ["event_name", "role", "log_odds_effect", "through"]
    assert [tuple(r) for r in written.itertuples(index=False)] == [
        (n, r, e, t) for n, r, e, t in EVENT_SPEC
    ]
    assert set(written["event_name"]) == set(world.events["event_name"])  # all are used


def test_activation_time_law_and_true_landmark_probability(world: World) -> None:
    assert activation_time_cdf(0.0) == 0.0
    assert activation_time_cdf(72.0) == pytest.approx(0.5)
    assert activation_time_cdf(72.0, inside_horizon_share=0.2) == pytest.approx(0.2)
    assert activation_time_cdf(14 * 24 - 2) == pytest.approx(1.0)
    ages = np.linspace(0, 400, 81)
    assert (np.diff(activation_time_cdf(ages)) >= 0).all()
    p = 0.4
    assert true_landmark_probability(p, 0.0) == pytest.approx(p)
    assert true_landmark_probability(p, 14 * 24) == 0.0
    assert true_landmark_probability(1.0, 400.0) == 0.0  # 0/0 at certainty after the window
    assert (np.diff(true_landmark_probability(p, ages)) <= 0).all()
    f = activation_time_cdf(24.0)
    assert true_landmark_probability(p, 24.0) == pytest.approx(p * (1 - f) / (1 - p * f))

    # The truth columns are that function of p, empty exactly when T <= L (within the window).
    t = world.truth
    within = t["planted_activator"] & ~t["late_activator"]
    for hours in LANDMARK_HOURS:
        column = t[f"true_p_at_{hours}h"]
        done = within & (t["hours_to_activation"] <= hours)
        assert column.isna().equals(done), hours
        expected = true_landmark_probability(t["true_activation_probability"][~done], hours)
        assert np.abs(column[~done].to_numpy() - expected).max() < 1e-5

    # The planted activation times of within-window activators follow the law (KS test).
    times = t.loc[within, "hours_to_activation"].to_numpy()
    assert len(times) > 1500 and (times > 0).all() and (times < 14 * 24 - 2).all()
    assert stats.kstest(times, lambda x: activation_time_cdf(x)).pvalue > 0.01


def test_about_half_of_the_activators_activate_inside_the_horizon(world: World) -> None:
    t = world.truth
    closed_act = t[t["window_closed"] & t["activated_within_window"]]
    share = closed_act["activated_inside_horizon"].mean()
    assert abs(share - 0.5) < 0.04, share
    assert world.summary.activated_inside_horizon == int(
        closed_act["activated_inside_horizon"].sum()
    )
    assert world.summary.inside_horizon_share == 0.5
    # Some activate within the very first hour, as in a first-session product.
    assert (closed_act["hours_to_activation"] < 1).mean() > 0.01


def test_inside_horizon_share_is_configurable(tmp_path: Path) -> None:
    summary = generate_sample(
        tmp_path, users=2500, seed=4, inside_horizon_share=0.2, dirty=False, progress=False
    )
    t = pd.read_csv(tmp_path / "truth/users.csv")
    within = t[t["planted_activator"] & ~t["late_activator"]]
    share = (within["hours_to_activation"] < 72).mean()
    assert abs(share - 0.2) < 0.05, share
    assert (within["activated_inside_horizon"] == (within["hours_to_activation"] < 72)).all()
    assert summary.inside_horizon_share == 0.2
    # The truth columns use the configured law.
    row = within[within["hours_to_activation"] > 200].iloc[0]
    assert row["true_p_at_72h"] == pytest.approx(
        true_landmark_probability(row["true_activation_probability"], 72, 0.2), abs=1e-6
    )


def test_landmark_truth_matches_the_outcomes(world: World) -> None:
    """For closed windows not activated by L, the activation rate is the mean true_p_at_L."""
    for hours in LANDMARK_HOURS:
        pop = landmark_population(world, hours)
        truth = pop[f"true_p_at_{hours}h"]
        observed = pop["activated_within_window"].mean()
        se = math.sqrt(float((truth * (1 - truth)).sum())) / len(pop)
        assert len(pop) > 1500
        assert abs(observed - truth.mean()) < 3.5 * se, (hours, observed, truth.mean(), se)
    # The rate falls with the landmark: the later, the fewer still to come.
    rates = [landmark_population(world, h)["activated_within_window"].mean() for h in (1, 72, 168)]
    assert rates[0] > rates[1] > rates[2] > 0


def test_activation_timing_late_activators_and_churners(world: World) -> None:
    t, ev = world.truth, world.events
    sessions = pd.read_csv(world.out / "truth/sessions.csv")
    n_sessions = sessions.groupby("user_id").size().reindex(t.index, fill_value=0)
    closed = t[t["window_closed"]]
    assert 0.33 <= closed["activated_within_window"].mean() <= 0.42
    assert world.summary.closed_window_users == len(closed)
    assert world.summary.activated_within_window == int(closed["activated_within_window"].sum())

    activation = pd.to_datetime(t["activation_at"], format="ISO8601", utc=True)
    first_aha = pd.to_datetime(t["first_aha_at"], format="ISO8601", utc=True)
    seen = first_aha.notna()
    # The first share comes within 25 minutes of T (the aha session's start).
    lag = (first_aha[seen] - activation[seen]).dt.total_seconds()
    assert (lag >= 0).all() and (lag <= 25 * 60).all()
    assert not (seen & ~t["planted_activator"]).any()
    late = t[t["late_activator"]]
    assert (
        (late["hours_to_activation"] >= 15 * 24) & (late["hours_to_activation"] < 40 * 24)
    ).all()
    assert not late["activated_within_window"].any()
    share_late = len(late) / int(t["planted_activator"].sum())
    assert 0.04 < share_late < 0.15, share_late
    within_closed = closed[closed["planted_activator"] & ~closed["late_activator"]]
    assert within_closed["activated_within_window"].all()
    assert (closed["activated_within_window"] <= closed["planted_activator"]).all()

    # Churners: a single session in the plan; one that does not activate never comes back.
    churners = t[t["churner"]]
    assert 0.1 < len(churners) / len(t) < 0.3
    assert (n_sessions[churners.index[~churners["planted_activator"]]] == 1).all()
    churn_act = churners["planted_activator"].mean()
    other_act = t.loc[~t["churner"], "planted_activator"].mean()
    assert 0 < churn_act < 0.2 < other_act
    # Among users not activated by 72 h, "a single session in the first 72 h" is the churners.
    complete = t[(NOW_MS - epoch_ms(t["signup"])) >= 3 * DAY_MS]
    complete = complete[complete["true_p_at_72h"].notna()]
    early = ev[ev["user_id"].isin(complete.index) & (ev["hours"] < 72)]
    new_session = (early["user_id"] != early["user_id"].shift()) | (
        early["ts"].diff() > pd.Timedelta(minutes=30)
    )
    early_sessions = new_session.groupby(early["user_id"]).sum().reindex(complete.index)
    assert ((early_sessions == 1) == complete["churner"]).all()
    # Activators keep coming back: retention is measurable.
    assert n_sessions[t.index[t["first_aha_at"].notna()]].mean() > 5


def test_activators_keep_their_planned_early_behaviour(world: World) -> None:
    """Early behaviour is not cut at activation: who activates at hour 5 still acts later."""
    t, ev = world.truth, world.events
    fast = t[t["window_closed"] & (t["hours_to_activation"] < 12) & ~t["churner"]]
    assert len(fast) > 100
    after = ev[ev["user_id"].isin(fast.index) & (ev["hours"] < 72)]
    after = after[after["hours"] > after["user_id"].map(fast["hours_to_activation"]) + 1]
    planned_only = {"help_article_viewed", "settings_viewed", "template_used", "teammate_invited"}
    users_with_planned_later = after.loc[after["event_name"].isin(planned_only), "user_id"]
    assert users_with_planned_later.nunique() > 0.2 * len(fast)


def test_drivers_blockers_and_vanity_in_the_72h_landmark_population(world: World) -> None:
    """Naively, drivers and vanity go with activation and blockers against it; held against
    sessions, active days, the segment and the other events, vanity's association goes away
    (z reaches activation mostly through the drivers) while the drivers' stays."""
    pop = landmark_population(world, 72)
    y = pop["activated_within_window"].astype(float)
    did = flags_before(world, pop.index, 72)
    early = world.events[world.events["user_id"].isin(pop.index) & (world.events["hours"] < 72)]
    new_session = (early["user_id"] != early["user_id"].shift()) | (
        early["ts"].diff() > pd.Timedelta(minutes=30)
    )
    sessions = new_session.groupby(early["user_id"]).sum().reindex(pop.index)
    days = (early["hours"] // 24).groupby(early["user_id"]).nunique().reindex(pop.index)
    z = pop["latent_engagement"]
    assert np.corrcoef(z, np.log(sessions))[0, 1] > 0.6  # sessions are a good proxy of z
    assert np.corrcoef(z, days)[0, 1] > 0.45

    def rates(event: str) -> tuple[float, float]:
        return y[did[event] == 1].mean(), y[did[event] == 0].mean()

    for event in DRIVERS:
        with_e, without = rates(event)
        assert with_e > without + 0.08, event
    for event in BLOCKERS:
        with_e, without = rates(event)
        assert with_e < without - 0.04, event
    for event in VANITY:
        with_e, without = rates(event)
        assert with_e > without + 0.05, event  # associated through z

    segment = pd.get_dummies(
        world.users.loc[pop.index, ["role", "plan", "company_size", "use_case"]], drop_first=True
    ).astype(float)
    drift = (pop["signup"] - pop["signup"].min()).dt.total_seconds().rename("signup_age")
    held = pd.concat(
        [
            did[[*DRIVERS, *BLOCKERS, "sso_login_failed", *VANITY]],
            np.log(sessions).rename("log_sessions"),
            days.rename("active_days"),
            segment,
            drift / 1e7,
        ],
        axis=1,
    ).astype(float)
    fit = sm.Logit(y, sm.add_constant(held)).fit(disp=0)
    for event in VANITY:
        assert abs(fit.params[event]) < 0.3, (event, fit.params[event])
    for event in DRIVERS:
        assert fit.conf_int().loc[event, 0] > 0, event


def test_logit_of_p_is_the_planted_sum(world: World) -> None:
    """logit(p) minus the planted event, churn, drift and z terms is a function of the segment."""
    t = world.truth
    pop = t[t["true_p_at_72h"].notna() & (NOW_MS - epoch_ms(t["signup"]) > 3 * DAY_MS)]
    did = flags_before(world, pop.index, 72)
    effect = pd.Series({name: eff for name, _, eff, _ in EVENT_SPEC if eff})
    p = pop["true_activation_probability"]
    start_ms = NOW_MS - 120 * DAY_MS
    signup_pos = (epoch_ms(pop["signup"]) - start_ms) / (120 * DAY_MS)
    residual = (
        np.log(p / (1 - p))
        - did[effect.index] @ effect
        - CHURN_EFFECT * pop["churner"]
        - ACT_DRIFT * (signup_pos - 0.5)
        - Z_ACT * pop["latent_engagement"]
    )
    segment = world.users.loc[pop.index, ["role", "plan", "company_size", "use_case"]]
    spread = residual.groupby([segment[c] for c in segment]).agg(lambda s: s.max() - s.min())
    # Only the rounding of the 6-decimal probability (up to ~1e-3 in logit for p ~ 0.001).
    assert len(spread) > 50 and spread.max() < 5e-3
    assert 0 < Z_ACT <= 0.3 and pop["latent_engagement"].std() > 0.8


def test_early_behaviour_carries_no_information_about_the_draw(world: World) -> None:
    """For users not activated by L, behaviour before L adds nothing to true_p_at_L.

    If anything before L were generated after (and depending on) the activation draw, counts
    of the events and sessions before L would predict activation beyond the true landmark
    probability (likelihood-ratio test), at the horizon (72 h) and at a week (168 h).
    """
    ev = world.events
    for hours in (72, 168):
        pop = landmark_population(world, hours)
        early = ev[ev["user_id"].isin(pop.index) & (ev["hours"] < hours)]
        # No share before L, by construction, and nothing from the aha session either.
        assert not (early["event_name"] == "dashboard_shared").any()
        counts = early.groupby(["user_id", "event_name"]).size().unstack(fill_value=0)
        new_session = (early["user_id"] != early["user_id"].shift()) | (
            early["ts"].diff() > pd.Timedelta(minutes=30)
        )
        counts["n_sessions"] = new_session.groupby(early["user_id"]).sum()
        features = np.log1p(counts.reindex(pop.index, fill_value=0).astype(float))
        features = features.drop(columns="dashboard_create_clicked")  # its alias is there
        features = features.loc[:, features.nunique() > 1]
        assert {"data_source_connected", "help_article_viewed", "n_sessions"} <= set(features)
        p = pop[f"true_p_at_{hours}h"].clip(1e-6, 1 - 1e-6)
        logit_p = np.log(p / (1 - p)).rename("logit_p").to_frame()
        y = pop["activated_within_window"].astype(float)
        base = sm.Logit(y, sm.add_constant(logit_p)).fit(disp=0)
        full = sm.Logit(y, sm.add_constant(pd.concat([logit_p, features], axis=1))).fit(disp=0)
        lr = 2 * (full.llf - base.llf)
        p_value = stats.chi2.sf(lr, features.shape[1])
        assert p_value > 0.01, (hours, lr, features.shape[1], p_value)
        # The features do carry information about activation - through the true probability.
        alone = sm.Logit(y, sm.add_constant(features)).fit(disp=0)
        assert alone.llr_pvalue < 1e-10, hours


def test_observed_landmark_population_is_the_truths_up_to_aha_sessions(world: World) -> None:
    """ "No share by L" in the log differs from the truth's "T > L" only for users in the
    middle of their aha session at L (T <= L < first share, at most 25 minutes)."""
    t = world.truth[world.truth["window_closed"]]
    first_aha_h = (
        pd.to_datetime(t["first_aha_at"], format="ISO8601", utc=True) - t["signup"]
    ).dt.total_seconds() / 3600
    for hours in LANDMARK_HOURS:
        observed = ~(first_aha_h <= hours)
        truth = t[f"true_p_at_{hours}h"].notna()
        assert (truth <= observed).all()
        between = observed & ~truth
        assert (t.loc[between, "hours_to_activation"] > hours - 25 / 60).all()
        assert between.sum() <= 0.01 * truth.sum()


def test_prerequisite_chain(world: World) -> None:
    """A data source (and a dashboard) only after a workspace; the workspace matters only
    through the data source."""
    ev = world.events
    first = ev.groupby(["user_id", "event_name"])["ts"].min().unstack()
    for later in ("data_source_connected", "dashboard_created"):
        users = first[later].notna()
        assert users.sum() > 1000
        assert (first.loc[users, "workspace_created"] < first.loc[users, later]).all(), later
    # The share comes after a dashboard exists.
    shared = first["dashboard_shared"].notna()
    assert (first.loc[shared, "dashboard_created"] < first.loc[shared, "dashboard_shared"]).all()
    # Workspace: a clear total association in the 72 h landmark population, none given the
    # data source (its planted effect is zero; the source's is not).
    pop = landmark_population(world, 72)
    did = flags_before(world, pop.index, 72)
    y = pop["activated_within_window"]
    ws, ds = did["workspace_created"] == 1, did["data_source_connected"] == 1
    assert y[ws].mean() > y[~ws].mean() + 0.08
    assert abs(y[ws & ~ds].mean() - y[~ws].mean()) < 0.06
    assert y[ds].mean() > y[ws & ~ds].mean() + 0.1


def test_alias_pair_is_logged_together(world: World) -> None:
    ev = world.events
    created = ev[ev["event_name"] == "dashboard_created"]
    clicked = ev[ev["event_name"] == "dashboard_create_clicked"]
    assert len(clicked) > 1000
    pairs = pd.merge_asof(
        clicked.sort_values("ts"),
        created.sort_values("ts")[["user_id", "ts", "properties"]],
        on="ts",
        by="user_id",
        direction="backward",
        tolerance=pd.Timedelta(seconds=1),
        suffixes=("", "_created"),
    )
    matched = pairs["properties_created"].notna()
    assert matched.mean() == 1.0  # every click within a second after its dashboard_created
    assert len(clicked) >= 0.99 * len(created)
    dash_id = pairs["properties"].map(lambda s: json.loads(s)["dashboard_id"])
    assert (
        dash_id == pairs["properties_created"].map(lambda s: json.loads(s)["dashboard_id"])
    ).all()
    users = set(created["user_id"]) ^ set(clicked["user_id"])
    assert len(users) <= 0.01 * created["user_id"].nunique()


def test_near_total_blocker(world: World) -> None:
    t = world.truth
    did = flags_before(world, t.index, 72)["sso_login_failed"] == 1
    assert 0.03 <= did.mean() <= 0.05, did.mean()
    closed = t["window_closed"]
    assert t.loc[did, "true_activation_probability"].mean() < 0.05
    assert t.loc[did & closed, "activated_within_window"].mean() < 0.06
    assert t.loc[~did & closed, "activated_within_window"].mean() > 0.3


def test_newly_tracked_event_and_the_upward_drift(world: World) -> None:
    t, ev = world.truth, world.events
    launch = DEFAULT_NOW - timedelta(days=CHECKLIST_TRACKED_DAYS)
    viewers = ev.loc[ev["event_name"] == "checklist_viewed", "user_id"].unique()
    assert len(viewers) > 200
    assert (t.loc[viewers, "signup"] >= launch).all()  # only recent signups have it
    recent = t["signup"] >= launch
    assert len(viewers) > 0.5 * recent.sum()
    # The base rate drifts upward with signup time: p rises, though checklist does nothing.
    p = t["true_activation_probability"]
    logit = np.log(p / (1 - p))
    slope = stats.linregress(epoch_ms(t["signup"]) / DAY_MS, logit).slope
    assert 0.001 < slope * 120 / ACT_DRIFT < 2.0
    # So naively its viewers (all recent) look better than the others with closed windows.
    closed = t[t["window_closed"]]
    viewed = closed.index.isin(viewers)
    assert viewed.sum() > 50
    chance = closed["true_activation_probability"]
    assert chance[viewed].mean() > chance[~viewed].mean()


def test_pure_noise_world_has_no_effects(tmp_path: Path) -> None:
    summary = generate_sample(tmp_path, users=3000, seed=8, effects="none", progress=False)
    assert summary.effects == "none"
    w = load_world(tmp_path, summary)
    p = w.truth["true_activation_probability"]
    assert p.nunique() == 1 and 0.2 < p.iloc[0] < 0.5
    effects = pd.read_csv(tmp_path / "truth/event_effects.csv", keep_default_na=False)
    assert (effects["log_odds_effect"] == 0).all()
    # Only the structure stays: the alias is still logged with its event.
    assert dict(zip(effects["event_name"], effects["through"], strict=True)) == {
        n: ("dashboard_created" if n == "dashboard_create_clicked" else "")
        for n in effects["event_name"]
    }
    assert not set(effects["role"]) & {"driver", "blocker", "prerequisite", "vanity"}
    # No early event moves activation in the 72 h landmark population (Fisher, Bonferroni).
    pop = landmark_population(w, 72)
    did = flags_before(w, pop.index, 72)
    y = pop["activated_within_window"].to_numpy()
    tested = [e for e in did if 30 <= did[e].sum() <= len(pop) - 30]
    assert len(tested) >= 15
    for event in tested:
        x = did[event].to_numpy() == 1
        table = [[(y & x).sum(), (~y & x).sum()], [(y & ~x).sum(), (~y & ~x).sum()]]
        assert stats.fisher_exact(table).pvalue > 0.001 / len(tested), event
    # Neither does engagement.
    assert abs(stats.pointbiserialr(y, pop["latent_engagement"]).statistic) < 0.06


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
