"""Engagement: paths, health scores, stalls, interventions and nudges."""
