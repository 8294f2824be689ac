"""Modelling of accepted events: sessions and, later, per-user features."""
