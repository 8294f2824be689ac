"""`OutreachResource`: the in-app webhook and the unsubscribe-link secret, from the environment.

Email and Slack reuse the report's `EmailResource` (SMTP_*) and `SlackResource`
(SLACK_BOT_TOKEN); only what they do not cover is here."""

from __future__ import annotations

import hashlib
import hmac
import os

import requests
from dagster import ConfigurableResource, EnvVar
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

ENV_INAPP_WEBHOOK_URL = "ONBOARDING_INAPP_WEBHOOK_URL"
ENV_INAPP_WEBHOOK_SECRET = "ONBOARDING_INAPP_WEBHOOK_SECRET"
ENV_UNSUBSCRIBE_SECRET = "ONBOARDING_UNSUBSCRIBE_SECRET"
# Retried statuses: the receiver (or a proxy in front of it) had a problem, not the request.
RETRY_STATUSES = (500, 502, 503, 504)


class OutreachResource(ConfigurableResource):
    """`inapp_webhook_url` + `inapp_webhook_secret`: where in-app nudges are POSTed, signed;
    without both, in-app rows go to the outbox. `unsubscribe_secret` signs the token of the
    unsubscribe links (`{token}` in `interventions.delivery.unsubscribe_url`)."""

    inapp_webhook_url: str | None = None
    inapp_webhook_secret: str | None = None
    unsubscribe_secret: str | None = None
    timeout_seconds: float = 10.0
    # urllib3 retries per request, on connection errors, timeouts and 5xx: backoff_factor x
    # 2^(retry-1) seconds between them (0.5, 1, 2 s), honouring Retry-After.
    max_retries: int = 3
    backoff_factor: float = 0.5

    @property
    def inapp_configured(self) -> bool:
        return bool(self.inapp_webhook_url and self.inapp_webhook_secret)

    def webhook_session(self) -> requests.Session:
        """A session whose POSTs are retried: safe, since every request carries its
        Idempotency-Key and the receiver keeps one delivery per key."""
        retry = Retry(
            total=self.max_retries,
            connect=self.max_retries,
            read=self.max_retries,
            status=self.max_retries,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"POST"}),
            backoff_factor=self.backoff_factor,
            respect_retry_after_header=True,
            raise_on_status=False,  # the last 5xx comes back as a response: recorded as failed
        )
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def unsubscribe_token(self, user_id: str) -> str | None:
        """HMAC-SHA256 of the user id under the secret (the receiving page checks it), or None
        without a secret."""
        if not self.unsubscribe_secret:
            return None
        digest = hmac.new(self.unsubscribe_secret.encode(), user_id.encode(), hashlib.sha256)
        return digest.hexdigest()[:32]


def outreach_resource_from_env() -> OutreachResource:
    """The resource for `Definitions`: each setting as an `EnvVar` when set (resolved at run
    time, never in metadata or logs), else none (in-app rows go to the outbox)."""
    names = {
        "inapp_webhook_url": ENV_INAPP_WEBHOOK_URL,
        "inapp_webhook_secret": ENV_INAPP_WEBHOOK_SECRET,
        "unsubscribe_secret": ENV_UNSUBSCRIBE_SECRET,
    }
    settings = {field: EnvVar(name) for field, name in names.items() if os.environ.get(name)}
    return OutreachResource(**settings)  # type: ignore[arg-type]
