"""The closed loop: each simulated day's events land in the data directory, the real
`daily_refresh` job runs over them (ingestion down to the queue, the nudges and their
delivery), in-app deliveries reach a local webhook receiver, and the world reacts to what it
received on the following days. At the end the pipeline's read-outs are set against the
planted truth of this very run (the world replays every assigned user without nudges).

`summary.txt` in the working folder says how far the run is: "in progress" while it runs (so
a run killed outright is recognisable), then the summary lines. A run asked to stop (`stop`,
e.g. on SIGTERM) ends after the day in progress, measures what it has and says
"INTERRUPTED" at the top."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from onboarding_pipeline.code_location import build_definitions
from onboarding_pipeline.outreach.resource import ENV_INAPP_WEBHOOK_SECRET, ENV_INAPP_WEBHOOK_URL
from onboarding_pipeline.runner import (
    _QUIET_CONSOLE,
    RANGE_END_TAG,
    RANGE_START_TAG,
    data_partition_range,
    failure_text,
    local_instance,
)
from onboarding_pipeline.settings import Settings, default_warehouse_url
from onboarding_pipeline.simulation.receiver import NudgeReceiver
from onboarding_pipeline.simulation.world import (
    AHA,
    DATA_STARTED,
    DATA_STEP,
    LEFT,
    SIGNUP,
    START,
    WINDOW_DAYS,
    WORKSPACE,
    Life,
    Person,
    WorldSpec,
    events_frame,
    happened_by,
    life,
    people,
    users_frame,
)
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline.warehouse.tables import (
    INTERVENTION_EFFECTIVENESS,
    INTERVENTION_LEDGER,
    STEP_EXPERIMENTS,
)

DAILY_JOB = "daily_refresh"
WEBHOOK_SECRET = "simulation-secret"
FOLLOW_UP_DAYS = 14
COOLDOWN_DAYS = 3
SUMMARY_FILE = "summary.txt"
# Credentials that would send for real: never read during a simulation.
UNSET = ("DAGSTER_HOME", "SLACK_BOT_TOKEN", "SMTP_HOST", "ANTHROPIC_API_KEY")


def product_config(as_of: datetime) -> dict[str, Any]:
    """The simulated product's `onboarding.yaml` (two milestones, then the aha moment)."""
    return {
        "aha_events": [AHA],
        "terminal_events": [LEFT],
        "activation_window_days": WINDOW_DAYS,
        "observation_hours": 72,
        "funnel_steps": [SIGNUP, WORKSPACE, DATA_STARTED, DATA_STEP, AHA],
        "partitions_start_date": START.date().replace(day=1).isoformat(),
        "partitions": "monthly",
        "as_of": as_of.isoformat(),
        "model": {"min_training_users": 100},
        "paths": {
            "standard": {
                "touchpoint_days": [],
                "milestones": [
                    {
                        "name": "workspace_ready",
                        "label": "Create your workspace",
                        "events": [WORKSPACE],
                        "due_day": 1,
                    },
                    {
                        "name": "data_connected",
                        "label": "Connect a data source",
                        "events": [DATA_STEP],
                        "started_by": [DATA_STARTED],
                        "weight": 2,
                        "due_day": 3,
                    },
                ],
            }
        },
        "interventions": {
            "holdout_fraction": 0.5,
            "ladder": ["in_app", "in_app"],
            "email_from_day": 365,
            "cooldown_days": COOLDOWN_DAYS,
            # Queued when stalled (the data step begun, not finished a day later), not for
            # a risk level: the experiment is about the data step.
            "queue_risk_levels": [],
            "follow_up_days": FOLLOW_UP_DAYS,
            "delivery": {"quiet_hours": None},
        },
    }


@dataclass
class Simulation:
    """What happened, what the pipeline read out, and the planted truth."""

    spec: WorldSpec
    days_run: int = 0
    seconds_per_day: list[float] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # "day N: asset" -> error
    deliveries: list[dict[str, Any]] = field(default_factory=list)  # payloads + `day`
    effectiveness: pd.DataFrame = field(default_factory=pd.DataFrame)
    step_experiments: pd.DataFrame = field(default_factory=pd.DataFrame)
    ledger: pd.DataFrame = field(default_factory=pd.DataFrame)
    truth: dict[str, float] = field(default_factory=dict)
    rejected_webhooks: int = 0
    interrupted: str | None = None  # why the run stopped early (e.g. "SIGTERM")

    def overall(self) -> dict[str, Any]:
        rows = self.effectiveness[self.effectiveness.segment_type == "overall"]
        return {str(k): v for k, v in rows.iloc[0].items()} if len(rows) else {}

    def step_row(self) -> dict[str, Any]:
        rows = self.step_experiments[self.step_experiments.step == "data_connected"]
        return {str(k): v for k, v in rows.iloc[0].items()} if len(rows) else {}

    def checks(self) -> dict[str, Any]:
        """What must hold whatever the effect: the holdout got nothing, nobody was messaged
        inside the cooldown or twice for the same step; and whether the read-outs' intervals
        hold the planted truth."""
        sent = pd.DataFrame(
            self.deliveries, columns=["user_id", "next_action", "escalation_step", "day"]
        )
        held = (
            set(self.ledger.user_id[self.ledger.holdout.astype(bool)])
            if len(self.ledger)
            else set()
        )
        sent["ordinal"] = [date.fromisoformat(str(day)).toordinal() for day in sent.day]
        gaps = sent.sort_values("ordinal").groupby("user_id").ordinal.diff().dropna()
        found: dict[str, Any] = {
            "deliveries": len(sent),
            "holdout_users_messaged": int(sent.user_id.isin(held).sum()),
            "messages_inside_cooldown": int((gaps < COOLDOWN_DAYS).sum()),
            "same_step_messaged_twice": int(
                sent.duplicated(["user_id", "next_action", "escalation_step"]).sum()
            ),
            "rejected_webhooks": self.rejected_webhooks,
        }
        overall, step = self.overall(), self.step_row()
        if overall and "lift" in self.truth:
            found["lift_in_interval"] = _holds(
                overall, "adjusted_ci_low", "adjusted_ci_high", self.truth["lift"]
            )
            plain = overall.get("ci_high", np.nan) - overall.get("ci_low", np.nan)
            adjusted = overall.get("adjusted_ci_high", np.nan) - overall.get(
                "adjusted_ci_low", np.nan
            )
            found["cupac_narrower"] = bool(adjusted < plain) if plain == plain else None
        if step and "step_effect" in self.truth:
            found["step_effect_in_interval"] = _holds(
                step, "ci_low", "ci_high", self.truth["step_effect"]
            )
        return found

    def lines(self) -> list[str]:
        mean = sum(self.seconds_per_day) / max(len(self.seconds_per_day), 1)
        out: list[str] = []
        if self.interrupted is not None:
            out.append(
                f"INTERRUPTED by {self.interrupted} after {self.days_run} of {self.spec.days} "
                "days: the read-outs and the planted truth cover only the days run"
            )
        out += [
            f"simulated {self.days_run} days, {self.spec.users} users (seed {self.spec.seed}): "
            f"{mean:.1f} s per day through `{DAILY_JOB}`",
            f"deliveries received by the in-app stub: {len(self.deliveries)}",
        ]
        overall, step = self.overall(), self.step_row()
        if overall:
            out.append(
                "activation lift (treated - holdout, final follow-ups): planted "
                f"{_planted(self.truth.get('lift'))}; plain "
                f"{_interval(overall, 'difference', 'ci_low', 'ci_high')}; CUPAC "
                f"{_interval(overall, 'adjusted_difference', 'adjusted_ci_low', 'adjusted_ci_high')}"
            )
        if step:
            out.append(
                "effect of connecting data on activation (IV): planted "
                f"{_planted(self.truth.get('step_effect'))}; recovered "
                f"{_interval(step, 'step_effect', 'ci_low', 'ci_high')} ({step.get('evidence')})"
            )
        out.append("checks: " + ", ".join(f"{k} {v}" for k, v in self.checks().items()))
        out += [f"FAILED {what}: {error}" for what, error in self.failures.items()]
        return out


def _holds(row: dict[str, Any], low: str, high: str, value: float) -> bool | None:
    if row.get(low) is None or row.get(low) != row.get(low):
        return None
    return bool(row[low] <= value <= row[high])


def _planted(value: float | None) -> str:
    """The planted truth, or why there is none yet (no treated user's follow-up is over)."""
    if value is None or value != value:
        return "not yet known (no treated user's follow-up is over)"
    return f"{value:+.3f}"


def _known(row: dict[str, Any], name: str) -> bool:
    return row.get(name) is not None and row.get(name) == row.get(name)


def _interval(row: dict[str, Any], value: str, low: str, high: str) -> str:
    if not _known(row, low):
        return "not estimated" + (f" ({row['note']})" if _known(row, "note") else "")
    # A weak nudge gives the step's interval without a point estimate.
    point = f"{row[value]:+.3f} " if _known(row, value) else "no point estimate "
    return f"{point}[{row[low]:+.3f}, {row[high]:+.3f}]"


@contextmanager
def _environment(receiver: NudgeReceiver) -> Iterator[None]:
    wanted = {ENV_INAPP_WEBHOOK_URL: receiver.url, ENV_INAPP_WEBHOOK_SECRET: WEBHOOK_SECRET}
    saved = {name: os.environ.get(name) for name in (*wanted, *UNSET)}
    try:
        for name in UNSET:
            os.environ.pop(name, None)
        os.environ.update(wanted)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def simulate(
    spec: WorldSpec,
    root: Path,
    echo: Callable[[str], None] = print,
    stop: Callable[[], str | None] = lambda: None,
) -> Simulation:
    """Run the closed loop for `spec.days` days under `root` (data, warehouse, run history).
    `stop` is asked after each day: a reason (e.g. "SIGTERM") ends the loop there."""
    data_dir, output = root / "data", root / "output"
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        data_dir, data_dir / "onboarding.yaml", default_warehouse_url(output), output
    )
    persons = people(spec)
    nudges: dict[str, dict[date, str]] = {p.user_id: {} for p in persons}
    lives: dict[str, Life] = {}
    result = Simulation(spec)
    events_file = data_dir / "events.csv"
    events_file.unlink(missing_ok=True)
    summary = root / SUMMARY_FILE
    with NudgeReceiver(WEBHOOK_SECRET) as receiver, _environment(receiver):
        instance, _ = local_instance(output)
        try:
            for offset in range(spec.days):
                day = START.date() + timedelta(days=offset)
                summary.write_text(
                    f"in progress: day {offset + 1} of {spec.days} started at "
                    f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC (no summary yet; a run that "
                    "stopped here was killed)\n",
                    encoding="utf-8",
                )
                started = time.monotonic()
                _land_day(persons, spec, nudges, lives, day, data_dir, events_file)
                failures = _off_the_main_thread(lambda: _run_daily_job(settings, instance))
                result.failures.update({f"day {offset}: {k}": v for k, v in failures.items()})
                for payload in receiver.take():
                    nudges[str(payload["user_id"])][day] = str(payload["next_action"])
                    result.deliveries.append({**payload, "day": day.isoformat()})
                result.seconds_per_day.append(time.monotonic() - started)
                result.days_run = offset + 1
                echo(
                    f"day {offset + 1}/{spec.days} ({day}): "
                    f"{sum(1 for d in result.deliveries if d['day'] == day.isoformat())} "
                    f"nudges delivered, {result.seconds_per_day[-1]:.1f} s"
                    + (f", {len(failures)} failed" if failures else "")
                )
                result.interrupted = stop()
                if result.interrupted is not None and result.days_run < spec.days:
                    echo(f"{result.interrupted}: stopping after day {result.days_run}")
                    break
                result.interrupted = None  # asked to stop after the last day: nothing lost
        finally:
            instance.dispose()
        result.rejected_webhooks = receiver.rejected
    _read_outs(result, settings)
    result.truth = planted_truth(
        persons, spec, nudges, result.ledger, START + timedelta(days=result.days_run)
    )
    summary.write_text("\n".join(result.lines()) + "\n", encoding="utf-8")
    return result


def _land_day(
    persons: list[Person],
    spec: WorldSpec,
    nudges: dict[str, dict[date, str]],
    lives: dict[str, Life],
    day: date,
    data_dir: Path,
    events_file: Path,
) -> None:
    """Write the users who have signed up by `day` and append the day's events."""
    yesterday = day - timedelta(days=1)
    for person in persons:
        if person.signup_at.date() > day:
            continue
        # A nudge delivered yesterday changes today onwards: replay that user.
        if person.user_id not in lives or yesterday in nudges[person.user_id]:
            lives[person.user_id] = life(person, spec, nudges[person.user_id])
    users_frame(persons, day).to_csv(data_dir / "users.csv", index=False)
    events_frame(lives, day).to_csv(
        events_file, mode="a", header=not events_file.exists(), index=False
    )
    as_of = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    config = yaml.safe_dump(product_config(as_of), sort_keys=False)
    (data_dir / "onboarding.yaml").write_text(config, encoding="utf-8")


def _off_the_main_thread(work: Callable[[], dict[str, str]]) -> dict[str, str]:
    """`work()` on a worker thread, the main thread waiting. On the main thread Dagster maps
    SIGTERM and SIGINT onto its own handler for the whole run, and a signal it caught fails
    the day half-done; on another thread it leaves them to the caller's handlers, so a stop
    request waits for the end of the day. Daemonic: a second request may stop at once."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the main thread below
            outcome["error"] = error

    worker = threading.Thread(target=run, name="daily-job", daemon=True)
    worker.start()
    worker.join()  # signal handlers still run on the main thread while it waits
    if "error" in outcome:
        raise outcome["error"]
    return dict(outcome["value"])


def _run_daily_job(settings: Settings, instance: Any) -> dict[str, str]:
    with warnings.catch_warnings():  # Dagster's beta notices, once per simulated day
        warnings.simplefilter("ignore")
        defs = build_definitions(settings)
    span = data_partition_range(settings, defs)
    tags = {RANGE_START_TAG: span[0], RANGE_END_TAG: span[1]} if span else {}
    run = defs.resolve_job_def(DAILY_JOB).execute_in_process(
        instance=instance, tags=tags, raise_on_error=False, run_config=_QUIET_CONSOLE
    )
    if run.success:
        return {}
    return {DAILY_JOB: failure_text(run)}


def _read_outs(result: Simulation, settings: Settings) -> None:
    warehouse = WarehouseResource(url=settings.warehouse_url)
    try:
        result.effectiveness = warehouse.execute(warehouse.table(INTERVENTION_EFFECTIVENESS.name))
        result.step_experiments = warehouse.execute(warehouse.table(STEP_EXPERIMENTS.name))
        result.ledger = warehouse.execute(warehouse.table(INTERVENTION_LEDGER.name))
    finally:
        warehouse.close()


def planted_truth(
    persons: list[Person],
    spec: WorldSpec,
    nudges: dict[str, dict[date, str]],
    ledger: pd.DataFrame,
    now: datetime,
) -> dict[str, float]:
    """The effect of assignment on the treated users whose follow-up is over (their activation
    with the nudges they got minus without any, replayed on the same random numbers), and the
    effect of the data step per user it moved (the ratio the IV estimates)."""
    if ledger.empty:
        return {}
    first = ledger.sort_values(["queued_on", "queued_at"]).groupby("user_id").first()
    by_id = {p.user_id: p for p in persons}
    lift = moved = users = 0.0
    for user, row in first.iterrows():
        if bool(row["holdout"]) or str(user) not in by_id:
            continue
        person = by_id[str(user)]
        queued_at = pd.Timestamp(row["queued_at"]).to_pydatetime()
        end = min(
            queued_at + timedelta(days=FOLLOW_UP_DAYS),
            person.signup_at + timedelta(days=WINDOW_DAYS),
        )
        if end > now:
            continue  # not final yet, as in the effectiveness table
        real, without = life(person, spec, nudges[str(user)]), life(person, spec, {})
        users += 1
        lift += happened_by(real.activated_at, end) - happened_by(without.activated_at, end)
        moved += happened_by(real.data_step_at, end) - happened_by(without.data_step_at, end)
    if not users:
        return {}
    truth = {"lift": lift / users, "treated_final_users": users}
    if moved:
        truth["step_effect"] = lift / moved
    return truth
