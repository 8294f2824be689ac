"""The closed-loop simulation: a small world replayed through the real daily job (deliveries
to the local in-app stub, the world reacting), and the read-outs' error rates over repeated
seeds of the same world with a stand-in queue."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from onboarding_pipeline.cli import main
from onboarding_pipeline.simulation.calibration import run_world
from onboarding_pipeline.simulation.loop import SUMMARY_FILE, Simulation, simulate
from onboarding_pipeline.simulation.world import WorldSpec, life, people


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Simulation:
    spec = WorldSpec(users=80, days=5, signup_days=2, seed=3)
    return simulate(spec, tmp_path_factory.mktemp("simulation"), echo=lambda line: None)


def test_every_day_runs_the_daily_job_and_nudges_reach_the_stub(loop: Simulation) -> None:
    assert loop.failures == {}
    assert loop.days_run == 5
    checks = loop.checks()
    assert checks["deliveries"] > 0
    assert checks["rejected_webhooks"] == 0  # every payload was signed
    assert {d["type"] for d in loop.deliveries} == {"onboarding.intervention"}


def test_the_holdout_gets_nothing_and_nobody_is_messaged_too_often(loop: Simulation) -> None:
    checks = loop.checks()
    held = loop.ledger[loop.ledger.holdout.astype(bool)]
    assert len(held) > 0 and (~loop.ledger.holdout.astype(bool)).any()  # both arms exist
    assert checks["holdout_users_messaged"] == 0
    assert checks["messages_inside_cooldown"] == 0
    assert checks["same_step_messaged_twice"] == 0


def test_the_world_reacts_to_what_was_delivered(loop: Simulation) -> None:
    spec = loop.spec
    nudged: dict[str, dict[str, str]] = {}
    for delivery in loop.deliveries:
        nudged.setdefault(delivery["user_id"], {})[delivery["day"]] = delivery["next_action"]
    persons = {p.user_id: p for p in people(spec) if p.user_id in nudged}
    moved = 0
    for user, person in persons.items():
        schedule = {date.fromisoformat(day): action for day, action in nudged[user].items()}
        with_nudges, without = life(person, spec, schedule), life(person, spec, {})
        moved += with_nudges.events != without.events
    assert moved > 0  # some nudged user did something they would not have done


def test_a_world_without_effect_shows_none_at_the_nominal_rate_over_twenty_seeds() -> None:
    false_lifts = false_steps = 0
    for seed in range(20):
        readout = run_world(WorldSpec(users=200, seed=seed, step_boost=1.0))
        overall = readout.effectiveness[readout.effectiveness.segment_type == "overall"].iloc[0]
        false_lifts += overall.adjusted_ci_low > 0 or overall.adjusted_ci_high < 0
        false_steps += bool((readout.steps.evidence == "experiment").any())
    # alpha = 0.05: one in 20 may; four or more would happen by chance 1.6 % of the time.
    assert false_lifts <= 3
    assert false_steps <= 3


def test_a_planted_effect_is_recovered_and_cupac_narrows_the_interval() -> None:
    readout = run_world(WorldSpec(users=1000, seed=11))
    overall = readout.effectiveness[readout.effectiveness.segment_type == "overall"].iloc[0]
    assert overall.adjusted_ci_low <= readout.true_lift <= overall.adjusted_ci_high
    assert overall.adjusted_ci_low > 0  # the lift is found, not only covered
    plain = overall.ci_high - overall.ci_low
    assert overall.adjusted_ci_high - overall.adjusted_ci_low < plain
    (step,) = readout.steps.itertuples()
    assert readout.true_step_effect is not None
    assert step.ci_low <= readout.true_step_effect <= step.ci_high
    assert step.evidence == "experiment"


def test_the_command_refuses_a_folder_that_holds_something(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not empty: a simulation needs a folder of its own" in result.output


def test_a_terminated_run_finishes_its_day_writes_what_it_measured_and_exits_143(
    tmp_path: Path,
) -> None:
    """SIGTERM once the first day is done: the loop stops after the day in progress (which
    completes, not half-done), the summary says INTERRUPTED and the exit status is 128 + 15."""
    command = [sys.executable, "-m", "onboarding_pipeline.cli", "simulate", "--users", "10"]
    command += ["--days", "4", "--signup-days", "1", "--out", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("day 1/4"):
            process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=600) == 143, "".join(output)
    summary = (tmp_path / SUMMARY_FILE).read_text(encoding="utf-8")
    first, second = summary.splitlines()[:2]
    assert first.startswith("INTERRUPTED by SIGTERM after ")
    days_run = int(first.split(" after ")[1].split(" of ")[0])
    assert 1 <= days_run < 4 and second.startswith(f"simulated {days_run} days")
    assert "FAILED" not in summary  # the day the signal came in ran to its end
    assert any(line.startswith("SIGTERM: stopping after day") for line in output)


def test_the_summary_says_why_a_figure_is_missing_instead_of_printing_nan() -> None:
    from onboarding_pipeline.simulation.loop import _interval, _planted

    assert _planted(float("nan")) == "not yet known (no treated user's follow-up is over)"
    assert _planted(0.25) == "+0.250"
    weak = {"step_effect": None, "ci_low": -0.2, "ci_high": 0.9, "note": "weak"}
    assert (
        _interval(weak, "step_effect", "ci_low", "ci_high") == "no point estimate [-0.200, +0.900]"
    )
    none = {"step_effect": None, "ci_low": float("nan"), "note": "too few of each outcome"}
    assert _interval(none, "step_effect", "ci_low", "ci_high") == (
        "not estimated (too few of each outcome)"
    )
