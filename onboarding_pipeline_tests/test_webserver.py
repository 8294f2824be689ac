"""The real Dagster webserver serves the code location: what an analyst browses in the UI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT = Path(__file__).parents[1]
QUERY = """
{ assetNodes { assetKey { path } groupName description hasAssetChecks
  partitionDefinition { description } dependencyKeys { path } kinds } }
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    port = free_port()  # the webserver binds 127.0.0.1 by default
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "ONBOARDING_OUTPUT_DIR": str(home / "output"),
        "TMPDIR": str(home),
    }
    server = subprocess.Popen(
        [
            Path(sys.executable).parent / "dagster-webserver",
            "-w",
            "workspace.yaml",
            "-p",
            str(port),
        ],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so the code server it spawns stops with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("dagster-webserver did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def graphql(url: str, query: str) -> dict:  # type: ignore[type-arg]
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    deadline = time.monotonic() + 60
    while True:  # the code location may still be loading
        body = json.loads(urllib.request.urlopen(request, timeout=10).read())
        if body.get("data", {}).get("assetNodes") or time.monotonic() > deadline:
            return body
        time.sleep(1)


def test_ui_shows_the_asset_graph_with_groups_checks_and_lineage(webserver: str) -> None:
    nodes = {"/".join(node["assetKey"]["path"]): node for node in graph_nodes(webserver)}
    assert {"raw_users", "raw_events", "sessions", "activation_model", "critical_path"} <= set(
        nodes
    )
    assert nodes["raw_events"]["groupName"] == "ingestion"
    assert nodes["sessions"]["groupName"] == "modeling"
    assert nodes["critical_path"]["groupName"] == "activation"
    checked = {"raw_users", "raw_events", "sessions", "user_features", "activation_model"}
    assert all(nodes[name]["hasAssetChecks"] for name in checked)
    assert [d["path"] for d in nodes["sessions"]["dependencyKeys"]] == [["raw_events"]]
    assert "Daily" in nodes["raw_events"]["partitionDefinition"]["description"]
    assert "quarantine" in nodes["raw_events"]["description"]


def graph_nodes(url: str) -> list[dict]:  # type: ignore[type-arg]
    body = graphql(url, QUERY)
    assert "errors" not in body, body
    return body["data"]["assetNodes"]


CHECKS_QUERY = """
{ assetNodes { assetKey { path }
  assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }
"""


def test_ui_serves_every_asset_and_check_of_the_code_location(
    webserver: str, tmp_path: Path
) -> None:
    """What the analyst sees is the whole graph: every asset and check of the definitions."""
    from onboarding_pipeline.code_location import build_definitions
    from onboarding_pipeline_tests.test_definitions import sample_settings

    defs = build_definitions(sample_settings(tmp_path))
    graph = defs.resolve_asset_graph()
    expected_assets = {key.to_user_string() for key in graph.get_all_asset_keys()}
    expected_checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    body = graphql(webserver, CHECKS_QUERY)
    assert "errors" not in body, body
    nodes = body["data"]["assetNodes"]
    served_assets = {"/".join(node["assetKey"]["path"]) for node in nodes}
    served_checks = {
        ("/".join(node["assetKey"]["path"]), check["name"])
        for node in nodes
        for check in (node["assetChecksOrError"] or {}).get("checks", [])
    }
    assert served_assets == expected_assets
    assert served_checks == expected_checks
    assert {"intervention_queue", "weekly_report", "report_deliveries"} <= served_assets
    assert ("intervention_queue", "queue_users_unique") in served_checks
