"""Activation intelligence: features, model, critical path, funnel, KPIs, friction."""
