"""Where the pipeline reads and writes: four settings shared by the CLI and `dagster dev`."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA_DIR = PROJECT_ROOT / "sample_data"

ENV_DATA_DIR = "ONBOARDING_DATA_DIR"
ENV_CONFIG = "ONBOARDING_CONFIG"
ENV_WAREHOUSE_URL = "ONBOARDING_WAREHOUSE_URL"
ENV_OUTPUT_DIR = "ONBOARDING_OUTPUT_DIR"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    config_path: Path
    warehouse_url: str
    output_dir: Path

    @classmethod
    def defaults(cls) -> Settings:
        """The settings with no environment variable or option set (the bundled sample)."""
        output_dir = (PROJECT_ROOT / "output").resolve()
        data_dir = SAMPLE_DATA_DIR.resolve()
        return cls(
            data_dir, data_dir / "onboarding.yaml", default_warehouse_url(output_dir), output_dir
        )

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from the environment, with the bundled sample data as the default."""
        data_dir = Path(os.environ.get(ENV_DATA_DIR) or SAMPLE_DATA_DIR).resolve()
        output_dir = Path(os.environ.get(ENV_OUTPUT_DIR) or PROJECT_ROOT / "output").resolve()
        config_path = Path(os.environ.get(ENV_CONFIG) or data_dir / "onboarding.yaml").resolve()
        warehouse_url = os.environ.get(ENV_WAREHOUSE_URL) or default_warehouse_url(output_dir)
        return cls(data_dir, config_path, warehouse_url, output_dir)

    def with_overrides(
        self,
        *,
        data_dir: Path | None = None,
        config_path: Path | None = None,
        warehouse_url: str | None = None,
        output_dir: Path | None = None,
    ) -> Settings:
        """Apply CLI options; a new data dir brings its own onboarding.yaml unless one is given."""
        updated = self
        if data_dir is not None:
            data_dir = data_dir.resolve()
            updated = replace(updated, data_dir=data_dir)
            if config_path is None and ENV_CONFIG not in os.environ:
                updated = replace(updated, config_path=data_dir / "onboarding.yaml")
        if config_path is not None:
            updated = replace(updated, config_path=config_path.resolve())
        if output_dir is not None:
            output_dir = output_dir.resolve()
            if warehouse_url is None and ENV_WAREHOUSE_URL not in os.environ:
                updated = replace(updated, warehouse_url=default_warehouse_url(output_dir))
            updated = replace(updated, output_dir=output_dir)
        if warehouse_url is not None:
            updated = replace(updated, warehouse_url=warehouse_url)
        return updated


def default_warehouse_url(output_dir: Path) -> str:
    # Not `onboarding.duckdb`: a DuckDB file named like the schema makes names ambiguous.
    return f"duckdb:///{output_dir / 'warehouse.duckdb'}"
