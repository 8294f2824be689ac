"""Steps confirmed by experiment: the holdout as an instrument for doing the nudged step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from onboarding_pipeline.engagement.assets import steps_done_in_follow_up
from onboarding_pipeline.engagement.step_effects import (
    confirmed_events,
    instrumental_effect,
    step_experiments,
)
from onboarding_pipeline.warehouse import WarehouseResource


def confounded_world(step_effect: float, seed: int, users: int = 3000, push: float = 1.2):
    """An engagement trait drives both doing the step and activating; the nudge (not held
    out) makes the step likelier; the step adds `step_effect` to activation."""
    rng = np.random.default_rng(seed)
    treated = rng.random(users) > 0.2
    trait = rng.normal(size=users)
    did = rng.random(users) < 1 / (1 + np.exp(-(-1 + push * treated + trait)))
    activated = rng.random(users) < np.clip(0.1 + step_effect * did + 0.15 * (trait > 0), 0, 1)
    return pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(users)],
            "target_step": "connect_data",
            "holdout": ~treated,
            "final": True,
            "did_step": did,
            "activated": activated.astype(float),
        }
    )


def test_the_planted_step_effect_is_recovered_where_the_association_is_biased() -> None:
    world = confounded_world(0.3, seed=1)
    row = step_experiments(world, {"connect_data": ["data_source_connected"]}).iloc[0]
    assert row.ci_low < 0.3 < row.ci_high and row.evidence == "experiment"
    assert row.first_stage_f > 10 and row.step_itt > 0.1
    association = world.activated[world.did_step].mean() - world.activated[~world.did_step].mean()
    assert association > 0.3 + 0.04  # confounded upwards by the trait
    assert confirmed_events(pd.DataFrame([row])) == {"data_source_connected"}


def test_a_step_without_effect_is_not_confirmed() -> None:
    row = step_experiments(confounded_world(0.0, seed=2), {"connect_data": ["x"]}).iloc[0]
    assert row.ci_low < 0 < row.ci_high and row.evidence == "not_confirmed"


def test_a_nudge_that_does_not_move_the_step_gives_no_ratio() -> None:
    world = confounded_world(0.3, seed=3, push=0.0)
    row = step_experiments(world, {"connect_data": ["x"]}).iloc[0]
    assert pd.isna(row.step_effect) and row.evidence == "not_estimated"
    assert "first-stage F" in row.note or "did not change" in row.note


def test_too_few_users_per_arm_says_so() -> None:
    row = step_experiments(confounded_world(0.3, seed=4, users=60), {}, min_users=30).iloc[0]
    assert row.evidence == "not_estimated" and "interventions.min_subgroup_users" in row.note


def test_one_arm_only_is_not_an_estimate() -> None:
    outcome = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    assert isinstance(instrumental_effect(outcome, outcome, np.ones(5, dtype=bool)), str)


def test_steps_done_are_read_between_assignment_and_follow_up_end(tmp_path: Path) -> None:
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'w.duckdb'}")
    stamp = pa.timestamp("us", tz="UTC")
    warehouse.replace_all(
        "raw_events",
        pa.table(
            {
                "event_id": ["1", "2", "3", "4"],
                "user_id": ["in", "before", "after", "other_event"],
                "event_name": ["connect", "connect", "connect", "login"],
                "timestamp": pa.array(
                    pd.to_datetime(
                        ["2026-05-05", "2026-04-20", "2026-06-20", "2026-05-05"], utc=True
                    ),
                    stamp,
                ),
                "account_id": pa.array([None] * 4, pa.string()),
                "session_id": pa.array([None] * 4, pa.string()),
                "properties": pa.array([None] * 4, pa.string()),
                "source": ["f"] * 4,
                "row_number": [1, 2, 3, 4],
            }
        ),
    )
    outcomes = pd.DataFrame(
        {
            "user_id": ["in", "before", "after", "other_event", "pending"],
            "target_step": ["connect"] * 5,
            "final": [True, True, True, True, False],
            "queued_at": pd.to_datetime(["2026-05-01"] * 5, utc=True),
            "follow_up_end": pd.to_datetime(["2026-05-15"] * 5, utc=True),
        }
    )
    done = steps_done_in_follow_up(warehouse, outcomes, {"connect": ["connect"]})
    assert list(done) == [True, False, False, False, False]
    warehouse.close()
