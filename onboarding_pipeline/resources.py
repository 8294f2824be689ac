"""Resources shared by every domain."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from onboarding_pipeline.config import ProductConfig, load_config


class ProductConfigResource(ConfigurableResource):
    """The product's `onboarding.yaml`, validated when a run starts."""

    path: str

    def load(self) -> ProductConfig:
        return load_config(self.path)


class OutputDirResource(ConfigurableResource):
    """Files the pipeline keeps besides warehouse tables: models, charts, reports."""

    path: str

    def folder(self, name: str) -> Path:
        folder = Path(self.path) / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder
