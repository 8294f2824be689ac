"""The ingestion assets' public signatures are fully typed (mypy checks their bodies; this
keeps the hints themselves from going missing or generic-incomplete)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterator

from dagster import AssetCheckResult, AssetsDefinition, MaterializeResult

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.ingestion.assets import build_raw_events, raw_users
from onboarding_pipeline.partitions import event_partitions

RESULTS = Iterator[MaterializeResult[None] | AssetCheckResult]


def compute_function(asset: AssetsDefinition) -> typing.Callable[..., object]:
    return asset.op.compute_fn.decorated_fn  # type: ignore[union-attr]


def test_build_raw_events_is_fully_annotated() -> None:
    hints = typing.get_type_hints(build_raw_events)
    assert set(hints) == {"partitions", "return"} and hints["return"] is AssetsDefinition
    asset = build_raw_events(event_partitions(ProductConfig(aha_events=["a"])))
    for function in (compute_function(asset), compute_function(raw_users)):
        parameters = inspect.signature(function).parameters
        hints = typing.get_type_hints(function)
        assert set(parameters) <= set(hints), f"{function.__name__}: unannotated parameters"
        assert hints["return"] == RESULTS
