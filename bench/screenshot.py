"""Screenshot of the asset lineage page of the Dagster UI, for the docs.

    .venv/bin/python bench/screenshot.py [--out docs/asset-lineage.png]

Starts `dagster-webserver` on 127.0.0.1 with a temporary DAGSTER_HOME (no pop-ups), waits until
it serves the code location, takes a headless Chromium screenshot of the global asset lineage
and stops the server. Needs Chromium (`apt-get install -y chromium`); the tests do not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
ASSET_QUERY = '{"query": "{ assetNodes { assetKey { path } groupName } }"}'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_assets(url: str, timeout: float = 180) -> tuple[int, list[str]]:
    """Wait until the webserver answers GraphQL with the code location's assets."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(
                f"{url}/graphql",
                data=ASSET_QUERY.encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                nodes = json.load(response)["data"]["assetNodes"]
                if nodes:
                    return len(nodes), sorted({node["groupName"] for node in nodes})
        except (OSError, KeyError, TypeError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not serve the asset graph within {timeout:.0f} s")
        time.sleep(1)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise SystemExit("Chromium not found: apt-get install -y chromium")


def screenshot(url: str, out: Path, workdir: Path) -> None:
    subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={workdir / 'chromium'}",
            f"--screenshot={out}",
            "--window-size=1800,1050",
            "--virtual-time-budget=20000",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT / "docs" / "asset-lineage.png")
    parser.add_argument("--path", default="/asset-groups", help="UI page, e.g. /asset-groups")
    args = parser.parse_args()
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshot-") as tmp:
        home = Path(tmp)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
        port = free_port()
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "ONBOARDING_OUTPUT_DIR": str(home / "output"),
            "TMPDIR": str(home),  # the webserver's sockets stay in the temp folder
        }
        server = subprocess.Popen(
            [
                Path(sys.executable).parent / "dagster-webserver",
                "-w",
                "workspace.yaml",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its code server stops with it
        )
        url = f"http://127.0.0.1:{port}"
        try:
            assets, groups = wait_for_assets(url)
            # Every group expanded (the UI collapses groups in a graph this size).
            expanded = ",".join(f"global@global:{group}" for group in groups)
            screenshot(f"{url}{args.path}?expanded={expanded}", out, home)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    print(f"{out} ({out.stat().st_size // 1024} KiB, {assets} assets in the graph)")


if __name__ == "__main__":
    main()
