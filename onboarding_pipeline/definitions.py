"""The Dagster code location (`dagster dev`, `dg`): settings come from the environment."""

from onboarding_pipeline.code_location import build_definitions
from onboarding_pipeline.settings import Settings

defs = build_definitions(Settings.from_env())
