"""Dagster metadata for warehouse tables: what analysts see in the UI."""

from __future__ import annotations

from typing import Any

import ibis.expr.types as ir
from dagster import MetadataValue, TableColumn, TableSchema

from onboarding_pipeline.warehouse.resource import WarehouseResource
from onboarding_pipeline.warehouse.tables import TableSpec


def table_definition_metadata(spec: TableSpec, schema_name: str = "onboarding") -> dict[str, Any]:
    """Static metadata: the table's name and documented columns, shown in the catalog."""
    return {
        "dagster/table_name": f"{schema_name}.{spec.name}",
        "dagster/column_schema": TableSchema(
            columns=[
                TableColumn(name, str(dtype), constraints=None)
                for name, dtype in spec.schema.items()
            ]
        ),
    }


def preview(warehouse: WarehouseResource, rows: ir.Table, limit: int = 10) -> MetadataValue:
    """The first rows as a Markdown table."""
    frame = warehouse.execute(rows.limit(limit))
    return MetadataValue.md(frame.to_markdown(index=False) if len(frame) else "_no rows_")
