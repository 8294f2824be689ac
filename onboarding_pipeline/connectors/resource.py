"""Build the `source` resource from the `source` section of `onboarding.yaml`."""

from __future__ import annotations

from typing import Any

from dagster import EnvVar

from onboarding_pipeline.config.product import ProductConfig
from onboarding_pipeline.connectors import amplitude, mixpanel, posthog
from onboarding_pipeline.connectors.config import (
    AmplitudeSettings,
    ConnectorSettings,
    MixpanelSettings,
    PostHogSettings,
)
from onboarding_pipeline.ingestion.sources import FileSource, SourceResource
from onboarding_pipeline.settings import Settings


def source_resource(config: ProductConfig, settings: Settings) -> SourceResource:
    """The configured source; credentials are `EnvVar`s, read only when a run starts."""
    chosen = config.source
    if isinstance(chosen, MixpanelSettings):
        if chosen.auth == "service_account":
            credentials: dict[str, Any] = {
                "username": EnvVar(mixpanel.ENV_USERNAME),
                "secret": EnvVar(mixpanel.ENV_SECRET),
                "credentials_env": f"{mixpanel.ENV_USERNAME} / {mixpanel.ENV_SECRET}",
            }
        else:
            credentials = {
                "secret": EnvVar(mixpanel.ENV_API_SECRET),
                "credentials_env": mixpanel.ENV_API_SECRET,
            }
        return mixpanel.MixpanelSource(
            **_common(chosen, config, settings, mixpanel.HOSTS[chosen.region]),
            project_id=chosen.project_id,
            project_timezone=chosen.project_timezone,
            **credentials,
        )
    if isinstance(chosen, AmplitudeSettings):
        return amplitude.AmplitudeSource(
            **_common(chosen, config, settings, amplitude.HOSTS[chosen.region]),
            api_key=EnvVar(amplitude.ENV_API_KEY),
            secret_key=EnvVar(amplitude.ENV_SECRET_KEY),
        )
    if isinstance(chosen, PostHogSettings):
        return posthog.PostHogSource(
            **_common(chosen, config, settings, chosen.host),
            project_id=chosen.project_id,
            api_key=EnvVar(posthog.ENV_API_KEY),
            user_id_column=chosen.user_id,
            page_size=chosen.page_size,
        )
    return FileSource(data_dir=str(settings.data_dir))


def _common(
    chosen: ConnectorSettings, config: ProductConfig, settings: Settings, default_host: str
) -> dict[str, Any]:
    # Paths in onboarding.yaml are relative to the file, like the data it describes.
    base = settings.config_path.parent
    end = chosen.end_date or (config.as_of.date() if config.as_of else None)
    return {
        "landing_dir": str(
            base / chosen.landing_dir
            if chosen.landing_dir
            else settings.output_dir / "landing" / chosen.type
        ),
        "start_date": (chosen.start_date or config.partitions_start_date).isoformat(),
        "end_date": end.isoformat() if end else None,
        "overlap_days": chosen.overlap_days,
        "signup_event": chosen.signup_event,
        "users_file": str(base / chosen.users_file) if chosen.users_file else None,
        "base_url": chosen.base_url or default_host,
        "timeout_seconds": chosen.timeout_seconds,
        "max_attempts": chosen.max_attempts,
        "backoff_seconds": chosen.backoff_seconds,
    }
