"""The product's own meaning: `onboarding.yaml`, validated."""

from onboarding_pipeline.config.product import (
    ColumnMapping,
    ConfigError,
    IngestionRules,
    ProductConfig,
    load_config,
)

__all__ = ["ColumnMapping", "ConfigError", "IngestionRules", "ProductConfig", "load_config"]
