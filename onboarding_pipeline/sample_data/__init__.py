"""Synthetic onboarding data with planted truth (see ``generator`` for the generative story)."""

from onboarding_pipeline.sample_data.generator import GenerationSummary, generate_sample

__all__ = ["GenerationSummary", "generate_sample"]
