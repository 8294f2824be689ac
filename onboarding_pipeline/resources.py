"""Resources shared by every domain."""

from __future__ import annotations

from dagster import ConfigurableResource

from onboarding_pipeline.config import ProductConfig, load_config


class ProductConfigResource(ConfigurableResource):
    """The product's `onboarding.yaml`, validated when a run starts."""

    path: str

    def load(self) -> ProductConfig:
        return load_config(self.path)
