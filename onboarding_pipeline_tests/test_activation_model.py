"""The activation model's column guard: what the booster is never given."""

from __future__ import annotations

import numpy as np
import pandas as pd

from onboarding_pipeline.activation.model import MIN_PRESENT_ROWS, usable_columns


def test_a_column_with_values_in_only_a_few_rows_is_dropped_with_the_reason() -> None:
    """A column the booster's early-stopping split could leave without a single value (it
    then fails the whole fit) is left out and named, not passed on."""
    rows = 500
    rare = np.full(rows, np.nan)
    rare[:3] = 1.0
    enough = np.full(rows, np.nan)
    enough[:MIN_PRESENT_ROWS] = 2.0
    train = pd.DataFrame(
        {"n_rare": rare, "n_enough": enough, "n_all": np.arange(rows), "n_none": np.nan}
    )
    columns, dropped = usable_columns(train, list(train.columns))
    assert columns == ["n_enough", "n_all"]
    assert "only 3 training rows" in dropped["n_rare"]
    assert "missing for every training user" in dropped["n_none"]
