from pathlib import Path

import pytest

from onboarding_pipeline.config import ConfigError, load_config
from onboarding_pipeline.settings import SAMPLE_DATA_DIR
from onboarding_pipeline_tests.conftest import write


def error_for(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, "onboarding.yaml", text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    return str(raised.value)


def test_sample_config_loads_with_defaults() -> None:
    config = load_config(SAMPLE_DATA_DIR / "onboarding.yaml")
    assert config.aha_events == ["dashboard_shared"]
    assert config.activation_window_days == 14
    assert config.session_timeout_minutes == 30
    assert config.funnel_steps[-1] == "dashboard_shared"


def test_only_aha_events_is_required(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "onboarding.yaml", "aha_events: [x]\n"))
    assert (config.activation_window_days, config.observation_hours) == (14, 72)
    assert config.ingestion.max_quarantine_share == 0.05


def test_missing_aha_events_names_file_and_key(tmp_path: Path) -> None:
    message = error_for(tmp_path, "activation_window_days: 7\n")
    assert str(tmp_path / "onboarding.yaml") in message
    assert "aha_events" in message and "Field required" in message


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    message = error_for(tmp_path, "aha_events: [x]\nactivation_window_day: 7\n")
    assert "activation_window_day: unknown key" in message


def test_unknown_nested_key_names_its_path(tmp_path: Path) -> None:
    message = error_for(tmp_path, "aha_events: [x]\ningestion:\n  max_quarantine: 0.1\n")
    assert "ingestion.max_quarantine: unknown key" in message


def test_wrong_type_names_key_and_problem(tmp_path: Path) -> None:
    message = error_for(tmp_path, "aha_events: [x]\nactivation_window_days: soon\n")
    assert "activation_window_days" in message and "integer" in message


def test_session_timeout_must_stay_below_a_day(tmp_path: Path) -> None:
    message = error_for(tmp_path, "aha_events: [x]\nsession_timeout_minutes: 1440\n")
    assert "session_timeout_minutes" in message


def test_column_mapping_target_must_be_a_contract_column(tmp_path: Path) -> None:
    message = error_for(
        tmp_path, "aha_events: [x]\ncolumn_mapping:\n  events:\n    clientId: customer\n"
    )
    assert "column_mapping" in message and "clientId" in message and "customer" in message


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    assert "not valid YAML" in error_for(tmp_path, "aha_events: [x\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")


def test_duplicate_event_names_rejected(tmp_path: Path) -> None:
    assert "unique" in error_for(tmp_path, "aha_events: [x, x]\n")


def test_a_terminal_event_cannot_be_progress_or_a_stall_signal(tmp_path: Path) -> None:
    base = "aha_events: [x]\nterminal_events: [account_deleted]\n"
    message = error_for(tmp_path, base + "funnel_steps: [signup, account_deleted, x]\n")
    assert "terminal_events and funnel_steps both name 'account_deleted'" in message
    milestone = (
        "paths:\n  standard:\n    milestones:\n"
        "      - {name: setup, events: [project_created], started_by: [account_deleted]}\n"
    )
    message = error_for(tmp_path, base + milestone)
    assert "terminal_events and paths milestone events both name 'account_deleted'" in message
    stall = "interventions:\n  stall:\n    permission_events: [account_deleted]\n"
    message = error_for(tmp_path, base + stall)
    assert "interventions.stall.permission_events both name 'account_deleted'" in message
    # Leaving may also unsubscribe from email: the two lists overlap by design.
    both = base + "interventions:\n  delivery:\n    unsubscribe_events: [account_deleted]\n"
    assert load_config(write(tmp_path, "onboarding.yaml", both)).terminal_events
