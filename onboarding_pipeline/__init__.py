"""onboarding-pipeline: Dagster assets from product events to onboarding decisions."""
