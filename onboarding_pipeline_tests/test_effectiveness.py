"""Intervention effectiveness: a fixed follow-up for both arms, CUPAC, anytime-valid intervals,
subgroups with multiplicity control, and the sample-ratio check. Small planted worlds, no
pipeline run."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from onboarding_pipeline.engagement.effectiveness import (
    anytime_valid_effect,
    compare_arms,
    final_outcomes,
    first_assignments,
    measured_uplift,
    sample_ratio_p_value,
)

NOW = pd.Timestamp("2026-06-01", tz="UTC")


def planted(lift: float, seed: int, users: int = 4000, predictive: bool = False) -> pd.DataFrame:
    """Final outcomes of `users` assigned users: 20% holdout; activation probability at
    assignment drives the outcome when `predictive`."""
    rng = np.random.default_rng(seed)
    holdout = rng.random(users) < 0.2
    probability = rng.beta(0.5, 1.5, users) if predictive else np.full(users, 0.25)
    activated = rng.random(users) < np.clip(probability + np.where(holdout, 0, lift), 0, 1)
    return pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(users)],
            "holdout": holdout,
            "final": True,
            "activated": activated.astype(float),
            "activation_probability": probability,
            "intervention_type": np.where(np.arange(users) % 2 == 0, "nudge", "urgent"),
            "failure_label": "other",
        }
    )


def test_a_planted_lift_is_found_and_none_where_none_was_planted() -> None:
    lifted = compare_arms(planted(0.08, seed=1)).set_index("segment").loc["all"]
    for low, high in [("ci_low", "ci_high"), ("adjusted_ci_low", "adjusted_ci_high")]:
        assert 0 < lifted[low] < 0.08 < lifted[high]
    assert lifted.p_value < 0.05
    flat = compare_arms(planted(0.0, seed=2)).set_index("segment").loc["all"]
    assert flat.ci_low < 0 < flat.ci_high and flat.p_value > 0.05


def test_cupac_narrows_the_interval_when_the_probability_predicts_the_outcome() -> None:
    row = compare_arms(planted(0.05, seed=3, predictive=True)).set_index("segment").loc["all"]
    assert row.variance_reduction > 0.2
    assert row.adjusted_ci_high - row.adjusted_ci_low < row.ci_high - row.ci_low
    # The same estimand: adjusted and plain agree up to noise.
    assert abs(row.adjusted_difference - row.difference) < 0.02


def test_intervals_stay_valid_when_read_every_week() -> None:
    """Null experiments read ten times as users accrue: the anytime-valid interval excludes 0
    at some read in at most alpha of them; a one-look interval read the same way does not."""
    rng = np.random.default_rng(4)
    trials, ever, ever_one_look = 300, 0, 0
    for _ in range(trials):
        treated = rng.random(1500) > 0.2
        outcome = (rng.random(1500) < 0.3).astype(float)
        excluded = one_look = False
        for read in range(1, 11):
            n = 150 * read
            effect = anytime_valid_effect(outcome[:n], treated[:n], None, alpha=0.05)
            assert not isinstance(effect, str)
            excluded |= effect.ci_low > 0 or effect.ci_high < 0
            one_look |= abs(effect.difference / effect.std_error) > 1.96
        ever += excluded
        ever_one_look += one_look
    assert ever / trials <= 0.05
    assert ever_one_look / trials > 0.08  # why the anytime-valid interval is needed


def test_outcomes_wait_for_a_fixed_follow_up_in_both_arms() -> None:
    """An early activator whose follow-up is not over is pending, not a success; activation
    after the follow-up is not a success; the window's close ends a follow-up early."""
    assignments = pd.DataFrame(
        {
            "user_id": ["early", "late", "closed", "quiet"],
            "queued_at": pd.to_datetime(
                ["2026-05-25", "2026-05-01", "2026-05-01", "2026-05-01"], utc=True
            ),
            "holdout": [False, False, True, True],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": ["early", "late", "closed", "quiet"],
            "signup_at": pd.to_datetime(
                ["2026-05-20", "2026-04-28", "2026-04-20", "2026-04-28"], utc=True
            ),
            "activation_at": pd.to_datetime(
                ["2026-05-26", "2026-05-20", "2026-05-03", None], utc=True
            ),
        }
    )
    outcomes = final_outcomes(assignments, users, NOW, follow_up_days=14, window_days=14)
    by_user = outcomes.set_index("user_id")
    assert not by_user.loc["early", "final"] and pd.isna(by_user.loc["early", "activated"])
    assert by_user.loc["late", "activated"] == 0  # activated after its follow-up ended
    # Signed up 2026-04-20: the window closed 2026-05-04, before assignment + 14 days.
    assert by_user.loc["closed", "follow_up_end"] == pd.Timestamp("2026-05-04", tz="UTC")
    assert by_user.loc["closed", "activated"] == 1 and by_user.loc["quiet", "activated"] == 0
    table = compare_arms(outcomes.assign(intervention_type="nudge", failure_label=None))
    overall = table.set_index("segment").loc["all"]
    assert overall.treated_users == 1 and overall.holdout_users == 2
    assert overall.pending_users == 1


def test_interim_reads_are_not_biased_upwards() -> None:
    """No effect, activations spread over the window, read mid-way: the old rule (count an
    activator at once, a non-activator at window close) overstates both rates; the fixed
    follow-up gives the true rate of activation within the follow-up."""
    rng = np.random.default_rng(5)
    n = 6000
    queued = NOW - pd.to_timedelta(rng.uniform(0, 28, n), unit="D")
    signup = queued - pd.to_timedelta(1, unit="D")
    takes = pd.to_timedelta(rng.uniform(0, 40, n), unit="D")
    activates = rng.random(n) < 0.4
    activation = pd.Series(queued + takes).where(activates)
    activation = activation.where(activation <= NOW)  # not seen yet
    assignments = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "queued_at": queued,
            "holdout": rng.random(n) < 0.5,
            "intervention_type": "nudge",
            "failure_label": None,
        }
    )
    users = pd.DataFrame(
        {"user_id": assignments.user_id, "signup_at": signup, "activation_at": activation}
    )
    outcomes = final_outcomes(assignments, users, NOW, follow_up_days=14, window_days=60)
    final = outcomes[outcomes.final]
    truth = 0.4 * 14 / 40  # activated within 14 days of assignment
    assert abs(final.activated.mean() - truth) < 0.03
    row = compare_arms(outcomes).set_index("segment").loc["all"]
    assert row.ci_low < 0 < row.ci_high
    # The biased rule, for contrast: activated-so-far counts at once.
    seen = users.activation_at.notna()
    biased_rate = seen.sum() / (seen | outcomes.final).sum()
    assert biased_rate > truth + 0.05


def test_subgroups_need_enough_users_and_get_q_values() -> None:
    frame = planted(0.08, seed=6, users=3000)
    frame.loc[:40, "failure_label"] = "access_block"  # a small subgroup
    table = compare_arms(frame, min_subgroup_users=30).set_index("segment")
    small = table.loc["access_block"]
    assert pd.isna(small.difference) and "interventions.min_subgroup_users" in small.note
    estimated = table[(table.segment_type != "overall") & table.adjusted_p_value.notna()]
    assert len(estimated) == 3
    assert (estimated.q_value >= estimated.adjusted_p_value - 1e-12).all()
    uplift = measured_uplift(table.reset_index())
    assert set(uplift) <= {"nudge", "urgent"} and all(0 < v < 0.2 for v in uplift.values())


def test_priorities_ignore_a_type_whose_interval_reaches_zero() -> None:
    table = compare_arms(planted(0.0, seed=7)).reset_index(drop=True)
    assert measured_uplift(table) == {}


@pytest.mark.parametrize(
    ("activated", "note"),
    [(1.0, "every user had the same outcome"), (0.0, "every user had the same outcome")],
)
def test_a_read_out_without_spread_says_why(activated: float, note: str) -> None:
    frame = planted(0.0, seed=8, users=200).assign(activated=activated)
    row = compare_arms(frame).set_index("segment").loc["all"]
    assert pd.isna(row.ci_low) and note in row.note


def test_nothing_assigned_is_an_empty_table() -> None:
    empty = planted(0.0, seed=9, users=10).iloc[0:0]
    assert compare_arms(empty).empty


def test_first_assignment_decides_the_arm() -> None:
    ledger = pd.DataFrame(
        {
            "user_id": ["a", "a", "b"],
            "queued_on": [date(2026, 1, 1), date(2026, 1, 5), date(2026, 1, 1)],
            "queued_at": pd.to_datetime(["2026-01-01", "2026-01-05", "2026-01-01"], utc=True),
            "holdout": [False, True, True],
            "outcome": [None, "activated", None],
            "intervention_type": ["nudge", "urgent", "nudge"],
        }
    )
    first = first_assignments(ledger).set_index("user_id")
    assert not first.loc["a", "holdout"] and first.loc["a", "intervention_type"] == "nudge"
    assert first.loc["a", "queued_at"] == pd.Timestamp("2026-01-01", tz="UTC")


def test_a_sample_ratio_mismatch_is_flagged() -> None:
    fair = pd.DataFrame({"holdout": np.arange(1000) % 10 == 0})
    assert sample_ratio_p_value(fair, 0.10) > 0.5
    skewed = pd.DataFrame({"holdout": np.arange(1000) % 5 == 0})
    assert sample_ratio_p_value(skewed, 0.10) < 1e-6


def test_a_covariate_that_adds_no_rank_is_left_out_and_counted() -> None:
    """A duplicated covariate is dropped (the model, its degrees of freedom and so its
    interval are those of the covariate once)."""
    frame = planted(0.05, seed=10, users=1000, predictive=True)
    outcome = frame.activated.to_numpy()
    treated = ~frame.holdout.to_numpy()
    probability = frame.activation_probability.to_numpy()[:, None]
    once = anytime_valid_effect(outcome, treated, probability, alpha=0.05)
    twice = anytime_valid_effect(outcome, treated, np.hstack([probability, 2 * probability]), 0.05)
    assert not isinstance(once, str) and not isinstance(twice, str)
    assert twice.dropped == 1 and once.dropped == 0
    assert twice.ci_low == pytest.approx(once.ci_low, rel=1e-9)
    assert twice.ci_high == pytest.approx(once.ci_high, rel=1e-9)


def test_covariates_that_determine_the_arm_leave_the_plain_difference_only() -> None:
    """An intervention-type dummy identical to the arm: adjusting for it would remove the
    treatment itself (a pseudo-inverse silently split it: +0.13 for a plain +0.10)."""
    frame = planted(0.08, seed=11, users=2000)
    frame["intervention_type"] = np.where(frame.holdout, "nudge", "urgent")
    row = compare_arms(frame).set_index("segment").loc["all"]
    assert 0 < row.ci_low < row.difference < row.ci_high  # the plain read-out stands
    assert pd.isna(row.adjusted_difference) and pd.isna(row.adjusted_ci_low)
    assert "linear combination of the covariates" in row.note


def test_a_single_arm_is_a_reason_not_an_estimate() -> None:
    outcome = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    assert anytime_valid_effect(outcome, np.ones(5, bool), None, alpha=0.05) == (
        "every user is in one arm: there is no comparison"
    )


def test_a_rare_outcome_in_a_small_holdout_gets_no_interval_until_each_arm_has_both() -> None:
    """Worlds without effect, 2 % activation, 5 % holdout, read ten times as users accrue:
    with 0-2 holdout activators the sandwich variance of that arm is (nearly) 0, and the
    interval excluded the true 0 at some read in a quarter of such worlds. No interval is
    given until each arm has MIN_OUTCOMES_PER_ARM of each outcome."""
    misses = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        users = 2000
        world = pd.DataFrame(
            {
                "holdout": rng.random(users) < 0.05,
                "final": True,
                "activated": (rng.random(users) < 0.02).astype(float),
                "activation_probability": rng.random(users),
                "intervention_type": "nudge",
                "failure_label": "other",
            }
        )
        for size in np.linspace(200, users, 10).astype(int):
            overall = compare_arms(world.iloc[:size]).iloc[0]
            if pd.notna(overall.ci_low) and (overall.ci_low > 0 or overall.ci_high < 0):
                misses += 1
                break
            if pd.isna(overall.ci_low) and overall.holdout_users >= 10:
                assert "too few of each outcome" in overall.note
    assert misses <= 2
