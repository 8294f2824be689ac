"""Delivery of the intervention queue: one adapter per ladder channel (email, in-app webhook,
Slack hand-off to a person), each message exactly once through the delivery ledger."""
