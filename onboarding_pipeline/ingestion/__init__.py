"""Ingestion: files (and later connectors) into raw_users, raw_events and quarantine."""
