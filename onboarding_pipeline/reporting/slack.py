"""`SlackResource`: a slack-sdk `WebClient` with retries, or None when no token is configured."""

from __future__ import annotations

import os

from dagster import ConfigurableResource, EnvVar
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

ENV_SLACK_TOKEN = "SLACK_BOT_TOKEN"
# Optional: another API root (a local stub in tests, or a proxy in front of Slack).
ENV_SLACK_BASE_URL = "SLACK_API_BASE_URL"
DEFAULT_CHANNEL = "#onboarding"


class SlackResource(ConfigurableResource):
    """Slack bot access. `token` comes from `SLACK_BOT_TOKEN`; without it `client()` is None
    and deliveries go to the outbox folder instead."""

    token: str | None = None
    # Root of the Web API, e.g. "http://127.0.0.1:8080/api/"; None = https://slack.com/api/.
    base_url: str | None = None
    channel: str = DEFAULT_CHANNEL
    # Retries per request on HTTP 429 (honours Retry-After) and on 5xx (exponential backoff).
    max_rate_limit_retries: int = 3
    max_server_error_retries: int = 2

    def client(self) -> WebClient | None:
        if not self.token:
            return None
        client = WebClient(
            token=self.token, base_url=self.base_url or WebClient.BASE_URL, timeout=30
        )
        # slack-sdk installs a connection-error handler by default; add 429 and 5xx handling.
        client.retry_handlers.append(
            RateLimitErrorRetryHandler(max_retry_count=self.max_rate_limit_retries)
        )
        client.retry_handlers.append(
            ServerErrorRetryHandler(max_retry_count=self.max_server_error_retries)
        )
        return client


def slack_resource_from_env(channel: str = DEFAULT_CHANNEL) -> SlackResource:
    """The resource for `Definitions`: the token as an `EnvVar` (resolved at run time, never
    stored in metadata) when `SLACK_BOT_TOKEN` is set, else no token (outbox mode).

    Dagster fails a run whose `EnvVar` is unset, so the optional token is only referenced
    when present when the code location loads."""
    return SlackResource(
        token=EnvVar(ENV_SLACK_TOKEN) if os.environ.get(ENV_SLACK_TOKEN) else None,
        base_url=EnvVar(ENV_SLACK_BASE_URL) if os.environ.get(ENV_SLACK_BASE_URL) else None,
        channel=channel,
    )
