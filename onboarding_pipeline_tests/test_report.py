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
    assert f"written to the outbox {outbox / 'email.eml'} (no credentials)" in lines
    assert "stakeholders@example.com" in lines and "#onboarding" in lines
    assert (outbox / "email.eml").exists() and (outbox / "slack.json").exists()


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
    current = json.loads((built.settings.output_dir / "models" / "current.json").read_text())
    assert data.model is not None and data.model["version"] == current["version"]
    assert data.drift is not None and data.drift["train_base_rate"] is not None
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
