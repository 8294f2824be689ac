"""The warehouse: where relational work runs, written once as Ibis expressions."""

from onboarding_pipeline.warehouse.resource import WarehouseResource
from onboarding_pipeline.warehouse.tables import TABLES, TableSpec

__all__ = ["TABLES", "TableSpec", "WarehouseResource"]
