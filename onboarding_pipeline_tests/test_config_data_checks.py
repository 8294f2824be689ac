"""onboarding.yaml checked against the event names the data holds."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from onboarding_pipeline.config import load_config
from onboarding_pipeline.config.data_checks import (
    ConfigDataError,
    config_event_errors,
    config_event_warnings,
    event_name_counts,
    require_config_events,
    unseen_config_events,
)
from onboarding_pipeline.warehouse import WarehouseResource
from onboarding_pipeline_tests.conftest import write

OBSERVED = {
    "signed_up": 40,
    "dashboard_shared": 12,
    "dashboard_created": 20,
    "data_source_connected": 25,
    "teammate_invited": 5,
    "page_viewed": 300,
}


def config_from(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    return load_config(write(tmp_path, "onboarding.yaml", text))


def test_a_typo_in_aha_events_or_funnel_steps_is_an_error_naming_key_value_and_closest(
    tmp_path: Path,
) -> None:
    config = config_from(
        tmp_path,
        """
        aha_events: [dashbord_shared]
        funnel_steps: [signed_up, Data_Source_Connected, dashbord_shared]
        """,
    )
    errors = config_event_errors(config, OBSERVED)
    assert [(e.key, e.value) for e in errors] == [("aha_events[0]", "dashbord_shared")]
    assert errors[0].closest[0] == "dashboard_shared"
    # A funnel step nobody did is legal (a small export): a warning with the closest names.
    steps = config_event_warnings(config, OBSERVED, ("funnel_steps",))
    assert [(w.key, w.value) for w in steps] == [
        ("funnel_steps[1]", "Data_Source_Connected"),
        ("funnel_steps[2]", "dashbord_shared"),
    ]
    assert steps[0].closest == ("data_source_connected",)  # case does not hide the match
    with pytest.raises(ConfigDataError) as raised:
        require_config_events(config, OBSERVED, source=str(tmp_path / "onboarding.yaml"))
    message = str(raised.value)
    assert (
        f"{tmp_path / 'onboarding.yaml'}: aha_events[0]: 'dashbord_shared' never occurs in "
        "raw_events; closest observed event names: 'dashboard_shared'"
    ) in message
    assert len(raised.value.problems) == 1


def test_a_name_like_nothing_observed_offers_the_most_common_events(tmp_path: Path) -> None:
    config = config_from(tmp_path, "aha_events: [zzz]\n")
    (error,) = config_event_errors(config, OBSERVED)
    assert error.closest == ()
    assert error.most_common == ("page_viewed", "signed_up", "data_source_connected")
    assert "no observed event name is similar (most common: 'page_viewed'" in error.message()


def test_correct_names_and_an_empty_window_pass(tmp_path: Path) -> None:
    config = config_from(tmp_path, "aha_events: [dashboard_shared]\nfunnel_steps: [signed_up]\n")
    require_config_events(config, OBSERVED)  # no error
    require_config_events(config, list(OBSERVED))  # names alone will do
    # No events at all (an empty window) is a normal state, not a config error.
    typo = config_from(tmp_path, "aha_events: [dashbord_shared]\n")
    require_config_events(typo, {})
    require_config_events(typo, {"dashboard_shared": 0})
    assert unseen_config_events(typo, []) == []


def test_milestone_adoption_invite_and_stall_events_that_never_occur_are_warnings(
    tmp_path: Path,
) -> None:
    config = config_from(
        tmp_path,
        """
        aha_events: [dashboard_shared]
        paths:
          standard:
            milestones:
              - {name: data, events: [data_source_conected], started_by: [integration_failed]}
              - {name: build, events: [dashboard_created]}
        health:
          adoption_events: [dashboard_created, templates_used]
        invite_events:
          sent: [teammate_invite]
        interventions:
          stall:
            tour_events: [tour_done]
        """,
    )
    assert config_event_errors(config, OBSERVED) == []
    warnings = config_event_warnings(config, OBSERVED)
    assert [(w.key, w.value) for w in warnings] == [
        ("paths.standard.milestones[0].events[0]", "data_source_conected"),
        ("paths.standard.milestones[0].started_by[0]", "integration_failed"),
        ("health.adoption_events[1]", "templates_used"),
        ("invite_events.sent[0]", "teammate_invite"),
        ("interventions.stall.tour_events[0]", "tour_done"),
    ]
    assert warnings[0].closest[0] == "data_source_connected"
    assert warnings[3].closest[0] == "teammate_invited"
    assert "closest observed event names: 'data_source_connected'" in warnings[0].message()
    # Defaults nobody wrote are notes: the pipeline cannot blame the user for them.
    notes = config_event_warnings(config, OBSERVED, include_notes=True)
    defaults = [(n.key, n.value) for n in notes if n.severity == "note"]
    assert defaults == [
        ("invite_events.accepted[0]", "invite_accepted"),
        ("interventions.stall.permission_events[0]", "permission_error"),
    ]
    only_stall = config_event_warnings(config, OBSERVED, ("interventions.stall.",))
    assert [w.key for w in only_stall] == ["interventions.stall.tour_events[0]"]


def test_observed_counts_come_from_the_warehouse(tmp_path: Path) -> None:
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'w.duckdb'}")
    con = warehouse.connect()
    con.create_table("events", pa.table({"event_name": ["a", "b", "a"]}))
    frame = warehouse.execute(event_name_counts(con.table("events")))
    assert dict(zip(frame.event_name, frame.events, strict=True)) == {"a": 2, "b": 1}
    warehouse.close()


def test_young_data_without_the_aha_yet_is_a_warning_until_the_window_has_passed(
    tmp_path: Path,
) -> None:
    launch = config_from(tmp_path, "aha_events: [report_exported]\nfunnel_steps: [signed_up]\n")
    # Two days of data (the window is 14): nobody may have exported a report yet.
    (waiting,) = require_config_events(launch, OBSERVED, data_days=2)
    assert waiting.key == "aha_events[0]"
    with pytest.raises(ConfigDataError):
        require_config_events(launch, OBSERVED, data_days=20)  # old enough: an error
