"""The weekly report from a warehouse built by the real pipeline on generated data, from an
empty warehouse (a fresh install), and with hostile text in the data and the config."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from onboarding_pipeline.config import ConfigError, ProductConfig, load_config
from onboarding_pipeline.reporting.assets import watermark_week, weekly_partitions
from onboarding_pipeline.reporting.report import (
    NOT_ENOUGH_DATA,
    ReportData,
    base_rate_png,
    gather_report,
    render_html,
    render_markdown,
    review_items,
    write_report,
)
from onboarding_pipeline.runner import RunSummary, run_pipeline
from onboarding_pipeline.sample_data import generate_sample
from onboarding_pipeline.settings import SAMPLE_DATA_DIR, Settings, default_warehouse_url
from onboarding_pipeline.warehouse import WarehouseResource

PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Built:
    settings: Settings
    summary: RunSummary
    config: ProductConfig
    week: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """`onboarding-pipeline run` on a small generated sample with the bundled config."""
    root = tmp_path_factory.mktemp("report")
    data_dir = root / "data"
    generate_sample(data_dir, users=600, seed=8, progress=False)
    shutil.copy(SAMPLE_DATA_DIR / "onboarding.yaml", data_dir / "onboarding.yaml")
    output = root / "out"
    settings = Settings(
        data_dir, data_dir / "onboarding.yaml", default_warehouse_url(output), output
    )
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DAGSTER_HOME", "SLACK_BOT_TOKEN", "SMTP_HOST"):
            patch.delenv(name, raising=False)
        # The Monday after the data's last week: that week just ended, so it is delivered.
        patch.setenv("ONBOARDING_DELIVERY_CLOCK", "2026-11-02T09:00:00Z")
        summary = run_pipeline(settings, echo=lambda line: None)
    reports = sorted(path.name for path in (output / "reports").iterdir())
    yield Built(settings, summary, load_config(settings.config_path), reports[-1])


def test_run_writes_the_watermark_week_report_and_outbox(built: Built) -> None:
    assert built.summary.failures == {}
    # The week that holds the latest event (the generator's "now", 2026-10-31, a Saturday).
    assert built.week == "2026-10-26"
    folder = built.settings.output_dir / "reports" / built.week
    for name in ("report.html", "report.md", "report.json", "funnel.png", "base_rate.png"):
        assert (folder / name).stat().st_size > 0
    assert (folder / "funnel.png").read_bytes().startswith(PNG)
    lines = "\n".join(built.summary.lines())
    assert f"weekly report:      {folder / 'report.html'}" in lines
    outbox = built.settings.output_dir / "outbox" / built.week
    assert f"written to the outbox {outbox / 'email'}/ (no credentials)" in lines
    assert "stakeholders@example.com" in lines and "#onboarding" in lines
    # One message per recipient.
    assert (outbox / "email" / "stakeholders@example.com.eml").exists()
    assert (outbox / "email" / "growth-team@example.com.eml").exists()
    assert (outbox / "slack.json").exists()


def test_report_sections_come_from_the_pipeline_tables(built: Built) -> None:
    data = ReportData.from_json(
        (built.settings.output_dir / "reports" / built.week / "report.json").read_text()
    )
    kpis = {row["kpi"]: row for row in data.kpis or []}
    activation = kpis["activation_rate"]
    assert activation["target"] == built.config.kpi_targets.activation_rate
    assert (
        activation["cohort"] <= built.week and activation["previous_cohort"] < activation["cohort"]
    )
    assert activation["meets_target"] == (activation["value"] >= activation["target"])
    assert [row["step"] for row in data.funnel or []] == built.config.funnel_steps
    assert data.worst_drop is not None
    assert data.worst_drop["drop_off_rate"] == max(
        row["drop_off_rate"]
        for row in data.funnel[1:]  # type: ignore[index]
    )
    # The planted driver of the generator is found and reported.
    drivers = [row["event_name"] for row in (data.critical_path or {})["drivers"]]
    assert "data_source_connected" in drivers
    models = built.settings.output_dir / "models"
    if (models / "current.json").exists():
        current = json.loads((models / "current.json").read_text())
        assert data.model is not None and data.model["version"] == current["version"]
        assert data.drift is not None and data.drift["train_base_rate"] is not None
    else:
        # The quality gate refused the model: the section says why, the rest still renders.
        status = json.loads((models / "status.json").read_text())
        assert data.model is None and status["reason"] in data.missing.pop("model")
        assert data.drift is not None and data.drift["train_base_rate"] is None
    # Engagement tables exist after the run: stalled users per owner and the queue.
    assert data.at_risk and data.queue and data.queue["users"] > 0
    # Weekly review: 1-3 items, each with evidence and a named owner.
    assert 1 <= len(data.review) <= 3
    owners = {*built.config.report.owners.model_dump().values()}
    owners |= {row["owner"] for row in data.at_risk}
    for item in data.review:
        assert item["evidence"] and item["owner"] in owners
    html = (built.settings.output_dir / "reports" / built.week / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    # Right after the first run no intervention has measured outcomes yet.
    assert set(data.missing) <= {"effectiveness"}


def test_empty_warehouse_renders_not_enough_data(tmp_path: Path) -> None:
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    config = ProductConfig(aha_events=["dashboard_shared"], partitions_start_date="2026-06-01")
    data = gather_report(
        warehouse, config, tmp_path, "2026-10-26", generated_at=datetime(2026, 11, 2, tzinfo=UTC)
    )
    warehouse.close()
    sections = {
        "kpis", "funnel", "critical_path", "model", "base_rate", "at_risk", "queue",
        "effectiveness", "review",
    }  # fmt: skip
    assert set(data.missing) == sections
    files, charts = write_report(data, tmp_path / "reports" / "2026-10-26")
    assert charts == {} and files.charts == {}
    html = files.html.read_text()
    markdown = files.markdown.read_text()
    assert html.count(NOT_ENOUGH_DATA) == len(sections)
    assert markdown.count(NOT_ENOUGH_DATA) == len(sections)
    assert "Week of 2026-10-26 to 2026-11-01" in html


def test_hostile_text_is_escaped(tmp_path: Path) -> None:
    hostile = '<script>alert("x")</script> | <img src=x onerror=alert(1)>'
    config = ProductConfig(
        aha_events=["dashboard_shared"],
        report={"title": hostile, "owners": {"funnel": hostile}},
    )
    data = ReportData(
        title=config.report.title,
        week="2026-10-26",
        week_end="2026-11-01",
        watermark=None,
        generated_at="now",
        language="en",
        funnel=[
            {
                "step_index": 1,
                "step": hostile,
                "users_reached": 10,
                "conversion_from_start": 1.0,
                "users_at_previous": 10,
                "conversion_from_previous": 1.0,
                "dropped": 0,
                "drop_off_rate": 0.0,
                "median_hours_from_previous": None,
            },
            {
                "step_index": 2,
                "step": "next",
                "users_reached": 4,
                "conversion_from_start": 0.4,
                "users_at_previous": 10,
                "conversion_from_previous": 0.4,
                "dropped": 6,
                "drop_off_rate": 0.6,
                "median_hours_from_previous": 2.0,
            },
        ],
        worst_drop={
            "step": "next",
            "from_step": hostile,
            "drop_off_rate": 0.6,
            "dropped": 6,
            "users_at_previous": 10,
        },
    )
    data.review = review_items(data, config)
    assert data.review[0]["owner"] == hostile
    html = render_html(data, {})
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    markdown = render_markdown(data)
    # Markdown tables: a pipe from the data cannot open a new column.
    row = next(line for line in markdown.splitlines() if line.startswith("| 1 |"))
    assert re.sub(r"\\\|", "", row).count("|") == 7


IMG = "<img src=x onerror=alert(1)>"
IMG_ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"


def hostile_report() -> ReportData:
    """Every text field of every section carries markup, as a company, owner, event or
    segment name typed by a user or a config author could."""
    event = {
        "event_name": IMG,
        "users_with_event": 40,
        "activation_rate_with": 0.5,
        "activation_rate_without": 0.2,
        "lift": 2.5,
        "adjusted_effect": 0.3,
        "adjusted_q_value": 0.01,
    }
    return ReportData(
        title=IMG,
        week="2026-10-26",
        week_end="2026-11-01",
        watermark=IMG,
        generated_at="now",
        language="en",
        kpis=[
            {
                "kpi": "activation_rate",
                "label": IMG,
                "unit": "rate",
                "cohort": IMG,
                "value": 0.3,
                "users": 50,
                "ci_low": None,
                "ci_high": None,
                "previous_cohort": None,
                "previous_value": None,
                "change": None,
                "all_signups": None,
                "target": None,
                "meets_target": None,
            }
        ],
        critical_path={"drivers": [event], "prerequisites": [], "vanity": [], "blockers": []},
        model={
            "version": IMG,
            "roc_auc": 0.8,
            "roc_auc_ci_low": 0.7,
            "roc_auc_ci_high": 0.9,
            "pr_auc": 0.5,
            "brier": 0.1,
            "train_signups": IMG,
            "train_base_rate": 0.3,
            "validation_signups": IMG,
            "validation_base_rate": 0.3,
            "latest_attempt": IMG,
        },
        scoring_note=IMG,
        at_risk=[{"owner": IMG, "failure_label": IMG, "stalled": 3, "at_risk": 1, "users": 4}],
        queue={
            "users": 4,
            "holdout": 1,
            "by_type": [{"intervention_type": IMG, "channel": IMG, "users": 4, "holdout": 1}],
            "by_owner": [{"owner": IMG, "users": 4}],
        },
        effectiveness=[
            {
                "segment_type": IMG,
                "segment": IMG,
                "treated_users": 10,
                "treated_rate": 0.4,
                "holdout_users": 5,
                "holdout_rate": 0.2,
                "difference": 0.2,
                "ci_low": -0.1,
                "ci_high": 0.5,
                "p_value": 0.2,
                "adjusted_difference": 0.18,
                "adjusted_ci_low": -0.05,
                "adjusted_ci_high": 0.4,
                "variance_reduction": 0.3,
                "q_value": 0.25,
            }
        ],
        follow_up_days=14,
        review=[{"area": "kpis", "severity": 1.0, "title": IMG, "evidence": IMG, "owner": IMG}],
        missing={"funnel": IMG, "base_rate": IMG},
    )


# Fields of hostile_report() the HTML shows: title (<title> and <h1>), watermark, review
# title/evidence/owner, KPI label/cohort, two "not enough data" reasons, event name, model
# version/train/validation/latest attempt, scoring note, at-risk owner/label, queue
# type/channel/owner, effectiveness segment type/segment.
HTML_PLACES = 2 + 1 + 3 + 2 + 2 + 1 + 4 + 1 + 2 + 3 + 2


def test_every_html_section_and_the_email_escape_user_text() -> None:
    data = hostile_report()
    # The page (charts as data: URIs) and the email's HTML part (charts by Content-ID).
    for html in (render_html(data, {}), render_html(data, {}, images="cid")):
        assert "<img" not in html
        assert html.count(IMG_ESCAPED) == HTML_PLACES
    # Markdown is the email's plain-text part, a plain-text channel: the text as typed.
    markdown = render_markdown(data)
    assert IMG in markdown and IMG_ESCAPED not in markdown


def test_report_config_is_strict() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        ProductConfig(aha_events=["a"], report={"timezone": "Mars/Olympus"})
    with pytest.raises(ValueError, match="not an email address"):
        ProductConfig(aha_events=["a"], report={"recipients": ["nobody"]})
    with pytest.raises(ValueError, match="review_items"):
        ProductConfig(aha_events=["a"], report={"review_items": 4})


def test_unknown_report_key_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "onboarding.yaml"
    path.write_text("aha_events: [a]\nreport:\n  recipient: [a@example.com]\n")
    with pytest.raises(ConfigError, match=r"report\.recipient: unknown key"):
        load_config(path)


def test_watermark_week() -> None:
    config = ProductConfig(aha_events=["a"], partitions_start_date="2026-06-01")
    weeks = weekly_partitions(config)
    assert watermark_week(weeks, ("2026-06-13", "2026-10-31")) == "2026-10-26"
    assert watermark_week(weeks, ("2026-06-13", "2026-11-02")) == "2026-11-02"
    assert watermark_week(weeks, ("2020-01-01", "2020-01-05")) == "2026-06-01"  # clipped
    assert watermark_week(None, ("2026-06-13", "2026-10-31")) is None


def test_review_puts_a_kpi_miss_first_then_the_most_severe() -> None:
    owners = {"kpis": "Maria", "funnel": "Jonas", "critical_path": "Ada"}
    config = ProductConfig(aha_events=["a"], report={"owners": owners})
    miss = {
        "kpi": "activation_rate",
        "label": "Activation rate",
        "unit": "rate",
        "cohort": "2026-10-12",
        "value": 0.35,
        "users": 200,
        "previous_value": 0.36,
        "target": 0.4,
        "meets_target": False,
    }
    met = {
        **miss,
        "kpi": "retention_rate",
        "label": "Retention",
        "value": 0.5,
        "meets_target": True,
    }
    blocker = {
        "event_name": "permission_error",
        "users_with_event": 50,
        "activation_rate_with": 0.2,
        "activation_rate_without": 0.4,
        "adjusted_effect": -0.9,
        "adjusted_q_value": 0.001,
    }
    data = ReportData(
        title="t",
        week="2026-10-26",
        week_end="2026-11-01",
        watermark=None,
        generated_at="now",
        language="en",
        kpis=[met, miss],
        worst_drop={
            "step": "b",
            "from_step": "a",
            "drop_off_rate": 0.6,
            "dropped": 60,
            "users_at_previous": 100,
        },
        critical_path={"drivers": [], "vanity": [], "blockers": [blocker]},
    )
    items = review_items(data, config)
    # Shortfall 12.5% ranks below the 60% drop-off and the 50% blocker loss, but comes first.
    assert [item["area"] for item in items] == ["kpis", "funnel", "critical_path"]
    assert [item["owner"] for item in items] == ["Maria", "Jonas", "Ada"]
    assert "35.0% against a target of 40.0%" in items[0]["evidence"]
    assert "20.0% vs 40.0%" in items[2]["evidence"]
    one = ProductConfig(aha_events=["a"], report={"owners": owners, "review_items": 1})
    assert [item["title"] for item in review_items(data, one)] == [
        "Activation rate misses its target"
    ]


def test_base_rate_chart_survives_bounds_a_rounding_error_outside_the_rate() -> None:
    """Regression: a Wilson bound of 1e-17 above a rate of 0 (or just below a rate of 1) made a
    negative error bar, and matplotlib refused the chart ('yerr' must not contain negative)."""
    rows = [
        {"cohort": "2026-09-07", "rate": 0.0, "users": 20, "ci_low": 1e-17, "ci_high": 0.16},
        {"cohort": "2026-09-14", "rate": 1.0, "users": 5, "ci_low": 0.57, "ci_high": 1 - 1e-16},
        {"cohort": "2026-09-21", "rate": 0.5, "users": 8, "ci_low": -1e-17, "ci_high": 1.2},
        {"cohort": "2026-09-28", "rate": 0.3, "users": 0, "ci_low": None, "ci_high": None},
    ]
    assert base_rate_png(rows, train_rate=0.4).startswith(PNG)


def critical_path_rows(spec_schema: object, rows: list[dict[str, object]]) -> object:
    """Rows of the critical_path table as its TableSpec types them (unset columns empty)."""
    import pandas as pd

    from onboarding_pipeline.activation.assets import table_to_arrow

    frame = pd.DataFrame(rows)
    for name, dtype in spec_schema.items():  # type: ignore[attr-defined]
        if name not in frame:
            frame[name] = 0 if not dtype.nullable else None
    return table_to_arrow(frame[list(spec_schema.names)], spec_schema)  # type: ignore[attr-defined]


def test_report_reads_the_main_landmark_of_the_critical_path(tmp_path: Path) -> None:
    from onboarding_pipeline.warehouse.tables import CRITICAL_PATH

    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    config = ProductConfig(aha_events=["shared"], observation_hours=72, landmark_hours=[24])
    base = {"segment_type": "overall", "segment": "all", "users_with_event": 40}
    effect = "total_effect" if "total_effect" in CRITICAL_PATH.schema else "adjusted_effect"
    q_value = "total_q_value" if effect == "total_effect" else "adjusted_q_value"
    rows = [
        {**base, "event_name": "connected", "classification": "driver", effect: 0.9, q_value: 0.01},
        {**base, "event_name": "errored", "classification": "blocker", effect: -0.5, q_value: 0.02},
    ]
    if "landmark_hours" in CRITICAL_PATH.schema:
        rows = [{**row, "landmark_hours": 72} for row in rows]
        # The same event judged at an earlier landmark must not be shown twice.
        rows.append({**rows[0], "landmark_hours": 24, "event_name": "early_only"})
    warehouse.replace_all(CRITICAL_PATH.name, critical_path_rows(CRITICAL_PATH.schema, rows))
    data = gather_report(warehouse, config, tmp_path, "2026-10-26")
    warehouse.close()
    assert data.critical_path is not None
    assert [e["event_name"] for e in data.critical_path["drivers"]] == ["connected"]
    blocker = data.critical_path["blockers"][0]
    assert blocker["event_name"] == "errored" and blocker["adjusted_effect"] == -0.5
    assert "critical_path" in {item["area"] for item in data.review}


def test_a_refused_retraining_is_reported_next_to_the_model_in_use(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "current.json").write_text(json.dumps({"version": "v1"}))
    (models / "v1.json").write_text(json.dumps({"roc_auc": 0.71, "roc_auc_ci": [0.65, 0.77]}))
    reason = "ROC AUC 0.540 is below model.min_roc_auc=0.6"
    (models / "status.json").write_text(
        json.dumps({"accepted": False, "reason": reason, "version": "v2"})
    )
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    config = ProductConfig(aha_events=["shared"])
    data = gather_report(warehouse, config, tmp_path, "2026-10-26")
    warehouse.close()
    assert data.model is not None and data.model["version"] == "v1"
    assert "model" not in data.missing
    markdown = render_markdown(data)
    assert f"The latest training attempt was refused ({reason}); this model stays in use." in (
        markdown
    )
    assert "The latest training attempt was refused" in render_html(data, {})


def test_no_model_at_all_says_what_would_unlock_it(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    reason = (
        "need 200 users with a closed activation window, have 90: lower "
        "`model.min_training_users` or wait for more signups"
    )
    (models / "status.json").write_text(
        json.dumps({"accepted": False, "reason": reason, "version": None})
    )
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    data = gather_report(warehouse, ProductConfig(aha_events=["shared"]), tmp_path, "2026-10-26")
    warehouse.close()
    assert data.missing["model"] == f"no activation model has been accepted yet: {reason}"
    assert f"{NOT_ENOUGH_DATA}: no activation model has been accepted yet: {reason}." in (
        render_markdown(data)
    )


def test_strong_events_beyond_max_events_are_listed_apart_in_both_formats() -> None:
    import pandas as pd

    from onboarding_pipeline.activation.critical_path import BEYOND_MAX_EVENTS
    from onboarding_pipeline.reporting.report import _critical_path

    base = {
        "segment_type": "overall",
        "classification": "inconclusive",
        "users_with_event": 150,
        "activation_rate_with": 0.0,
        "activation_rate_without": 0.36,
        "lift": 0.0,
        "adjusted_effect": None,
        "adjusted_q_value": None,
        "works_through": None,
    }
    paths = pd.DataFrame(
        [
            {**base, "event_name": "sso_login_failed", "q_value": 1e-9, "note": BEYOND_MAX_EVENTS},
            {**base, "event_name": "faint", "q_value": 0.4, "note": BEYOND_MAX_EVENTS},
            {**base, "event_name": "judged", "q_value": 1e-9, "note": ""},
        ]
    )
    shown = _critical_path(paths, top=5, confirmed=set())
    assert shown is not None
    assert [e["event_name"] for e in shown["not_judged"]] == ["sso_login_failed"]
    data = ReportData(
        title="t",
        week="2026-10-26",
        week_end="2026-11-01",
        watermark=None,
        generated_at="now",
        language="en",
        critical_path=shown,
        critical_path_landmark_hours=72,
    )
    assert "Not judged (beyond" in render_html(data, {})
    assert "sso_login_failed" in render_markdown(data)
