"""Connectors that land PostHog, Mixpanel and Amplitude events where ingestion reads them."""
