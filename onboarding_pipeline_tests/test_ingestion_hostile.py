"""A corpus of hostile input files: each case asserts the reconciliation (rows read = accepted
+ duplicates + quarantined), the quarantine reason and the named row (file, row number), and
that every valid row next to the bad one lands. Files are written by each test, byte for
byte, so the damage is visible next to its assertion."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import ibis
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onboarding_pipeline.config import ProductConfig
from onboarding_pipeline.ingestion.load import IngestionReport, ingest_events, ingest_users
from onboarding_pipeline.ingestion.readers import MAX_RECORD_BYTES, InputError
from onboarding_pipeline.ingestion.sources import FileSource
from onboarding_pipeline.warehouse import WarehouseResource

CLOCK = datetime(2026, 11, 1, tzinfo=UTC)
ALL_TIME = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))
USERS = b"user_id,signup_at\nu1,2026-01-01T00:00:00Z\nu2,2026-01-01T00:00:00Z\n"
HEADER = b"user_id,event_name,timestamp\n"


@dataclass
class Outcome:
    users: IngestionReport
    events: IngestionReport
    quarantine: pd.DataFrame
    raw_events: pd.DataFrame
    raw_users: pd.DataFrame

    def reason_at(self, source: str, row: int) -> tuple[str, str | None]:
        found = self.quarantine[
            (self.quarantine.source == source) & (self.quarantine.row_number == row)
        ]
        assert len(found) == 1, f"{source} row {row} not quarantined once: {found}"
        field = found.field.item()
        return found.reason.item(), field if isinstance(field, str) else None

    def landed(self) -> list[str]:
        return sorted(self.raw_events.event_name)


def assert_reconciled(report: IngestionReport) -> None:
    assert report.rows_read == report.accepted + report.duplicates + report.quarantined
    for source, counts in report.by_source.items():
        outcomes = sum(v for k, v in counts.items() if k not in ("read", "blank_records"))
        assert counts["read"] == outcomes, source


@pytest.fixture
def config() -> ProductConfig:
    return ProductConfig(aha_events=["a"], partitions_start_date="2026-01-01")


def run(
    warehouse: WarehouseResource,
    directory: Path,
    files: dict[str, bytes],
    config: ProductConfig,
    window: tuple[datetime, datetime] = ALL_TIME,
) -> Outcome:
    """Write `files` (users.csv by default) into `directory` and ingest it all."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in {"users.csv": USERS, **files}.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(content)
    source = FileSource(data_dir=str(directory))
    users = ingest_users(warehouse, source, config, clock=CLOCK)
    events = ingest_events(warehouse, source, config, *window, clock=CLOCK)
    assert_reconciled(users)
    assert_reconciled(events)
    return Outcome(
        users,
        events,
        warehouse.execute(warehouse.table("quarantine")),
        warehouse.execute(warehouse.table("raw_events")),
        warehouse.execute(warehouse.table("raw_users")),
    )


# -- zero rows are normal -----------------------------------------------------------------------


def test_header_only_file_is_an_empty_success(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    outcome = run(warehouse, tmp_path, {"events.csv": HEADER}, config)
    assert (outcome.events.rows_read, outcome.events.accepted) == (0, 0)
    assert outcome.events.empty_note() == "the input holds no rows (header-only or skipped files)"


def test_every_row_quarantined_is_an_empty_success(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    events = HEADER + b"u1,a,not-a-time\n,b,2026-01-02T00:00:00Z\n"
    outcome = run(warehouse, tmp_path, {"events.csv": events}, config)
    assert outcome.events.accepted == 0 and outcome.events.quarantined == 2
    assert outcome.reason_at("events.csv", 1) == ("unparseable_timestamp", "timestamp")
    assert outcome.reason_at("events.csv", 2) == ("missing_user_id", "user_id")
    assert "no row accepted" in (outcome.events.empty_note() or "")


def test_a_window_without_events_is_an_empty_success(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    quiet_day = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    events = HEADER + b"u1,a,2026-01-02T00:00:00Z\n"
    outcome = run(warehouse, tmp_path, {"events.csv": events}, config, window=quiet_day)
    assert outcome.events.accepted == 1 and outcome.events.rows_written == 0
    assert outcome.events.empty_note() == "no accepted event falls in this partition window"


def test_a_zero_byte_file_is_skipped_with_a_warning(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    files = {"events.csv": HEADER + b"u1,a,2026-01-02T00:00:00Z\n", "events/late.csv": b""}
    outcome = run(warehouse, tmp_path, files, config)
    assert outcome.landed() == ["a"]
    assert outcome.events.skipped_files == ["events/late.csv"]
    assert any(
        "events/late.csv: empty file (0 bytes), skipped" in w for w in outcome.events.warnings
    )
    manifest = warehouse.execute(warehouse.table("ingestion_manifest")).set_index("source")
    assert manifest.loc["events/late.csv", "status"] == "skipped_empty"
    assert manifest.loc["events.csv", "rows_accepted"] == 1


# -- a bad row never blocks good rows ----------------------------------------------------------


def test_a_latin1_byte_quarantines_its_row_naming_the_column(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    events = (
        HEADER + b"u1,a,2026-01-02T00:00:00Z\nu1,caf\xe9,2026-01-02T00:00:00Z\nu2,b,2026-01-03\n"
    )
    outcome = run(warehouse, tmp_path, {"events.csv": events}, config)
    assert outcome.reason_at("events.csv", 2) == ("malformed_row", "event_name")
    bad = outcome.quarantine[outcome.quarantine.row_number == 2].iloc[0]
    assert bad.raw == "u1,caf\\xe9,2026-01-02T00:00:00Z"  # the byte kept, visibly
    assert "not UTF-8" in bad.detail
    assert outcome.landed() == ["a", "b"]


def test_a_bom_before_a_numeric_first_column(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    users = b"\xef\xbb\xbfuser_id,signup_at\n1,2026-01-01T00:00:00Z\n2,2026-01-01T00:00:00Z\n"
    events = b"\xef\xbb\xbfuser_id,event_name,timestamp\n1,a,2026-01-02T00:00:00Z\n2,b,2026-01-02\n"
    outcome = run(warehouse, tmp_path, {"users.csv": users, "events.csv": events}, config)
    assert sorted(outcome.raw_users.user_id) == ["1", "2"]
    assert outcome.landed() == ["a", "b"] and outcome.events.quarantined == 0


def test_repeated_extra_header_names_are_renamed(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    users = b"user_id,signup_at,team,team,\nu1,2026-01-01T00:00:00Z,red,blue,x\n"
    outcome = run(warehouse, tmp_path, {"users.csv": users, "events.csv": HEADER}, config)
    attributes = json.loads(outcome.raw_users.attributes.item())
    assert attributes == {"team": "red", "team_2": "blue", "column_5": "x"}
    assert any("column 4 ('team') read as 'team_2'" in w for w in outcome.users.warnings)


def test_a_repeated_contract_column_is_an_input_error_naming_file_and_column(
    tmp_path: Path,
) -> None:
    (tmp_path / "users.csv").write_bytes(USERS)
    (tmp_path / "events.csv").write_bytes(b"user_id,event_name,timestamp,timestamp\nu1,a,1,2\n")
    with pytest.raises(InputError) as raised:
        FileSource(data_dir=str(tmp_path)).read_events({})
    message = str(raised.value)
    assert "events.csv" in message and "'timestamp' appears 2 times" in message
    assert "columns 3 ('timestamp'), 4 ('timestamp')" in message


def test_an_unbalanced_quote_costs_one_record_and_reading_resumes(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    events = (
        HEADER
        + b'u1,"a,2026-01-02T00:00:00Z\n'  # row 1: the quote never closes
        + b"u1,b,2026-01-02T00:00:00Z\n"
        + b'u2,"multi\nline",2026-01-02T00:00:00Z\n'  # rows 3-4: a real quoted line break
        + b"u2,c,2026-01-03T00:00:00Z\n"
    )
    outcome = run(warehouse, tmp_path, {"events.csv": events}, config)
    assert outcome.reason_at("events.csv", 1) == ("malformed_row", None)
    bad = outcome.quarantine.iloc[0]
    assert bad.raw == 'u1,"a,2026-01-02T00:00:00Z' and "unbalanced quote" in bad.detail
    # The records it would have swallowed land, each on its own row number.
    assert outcome.landed() == ["b", "c", "multi\nline"]
    rows = outcome.raw_events.set_index("event_name").row_number
    assert (rows["b"], rows["multi\nline"], rows["c"]) == (2, 3, 5)


def test_a_bad_quote_closed_mid_field_on_a_later_line_swallows_nothing(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    # Row 1's quote never closes; row 2 opens one of its own, so read together the two lines
    # "close" mid-field into one broken record that would have swallowed row 2.
    events = (
        HEADER
        + b'u1,"a,2026-01-02T00:00:00Z\n'
        + b'u1,"b,2026-01-02T00:00:00Z\n'
        + b"u1,c,2026-01-02T00:00:00Z\n"
    )
    outcome = run(warehouse, tmp_path, {"events.csv": events}, config)
    assert outcome.reason_at("events.csv", 1) == ("malformed_row", None)
    assert outcome.reason_at("events.csv", 2) == ("malformed_row", None)
    assert outcome.quarantine.set_index("row_number").raw[2] == 'u1,"b,2026-01-02T00:00:00Z'
    assert outcome.landed() == ["c"] and outcome.events.rows_read == 3


def test_a_short_record_is_malformed_and_the_rest_lands(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    events = HEADER + b"u1,a\nu1,b,2026-01-02T00:00:00Z\n\n,,\nu2,c,2026-01-02T00:00:00Z\n"
    outcome = run(warehouse, tmp_path, {"events.csv": events}, config)
    assert outcome.reason_at("events.csv", 1) == ("malformed_row", None)
    assert outcome.landed() == ["b", "c"]
    # Blank lines hold no data: counted, not rows, and the row numbers stay true to the file.
    assert outcome.events.blank_records == 2 and outcome.events.rows_read == 3
    assert outcome.raw_events.set_index("event_name").row_number["c"] == 5


def test_json_lines_too_deep_too_long_or_undecodable(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    good = b'{"user_id": "u1", "event_name": "%s", "timestamp": "2026-01-02T00:00:00Z"}\n'
    deep = (
        b'{"user_id": "u1", "event_name": "x", "properties": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    )
    nested_70 = b'{"user_id": "u1", "event_name": "y", "p": ' + b"[" * 70 + b"]" * 70 + b"}\n"
    long = b'{"user_id": "u1", "event_name": "' + b"z" * (MAX_RECORD_BYTES + 10) + b'"}\n'
    latin1 = b'{"user_id": "u1", "event_name": "caf\xe9"}\n'
    lines = [good % b"a", deep, nested_70, long, latin1, b"[1, 2]\n", good % b"b"]
    outcome = run(warehouse, tmp_path, {"events.jsonl": b"".join(lines)}, config)
    for row in (2, 3, 4, 5, 6):
        assert outcome.reason_at("events.jsonl", row) == ("malformed_row", None)
    details = outcome.quarantine.set_index("row_number").detail
    assert "deeper than 64" in details[2] and "deeper than 64" in details[3]
    assert f"longer than {MAX_RECORD_BYTES} bytes" in details[4]
    assert len(outcome.quarantine.set_index("row_number").raw[4]) < 20_000  # clipped
    assert "not UTF-8" in details[5]
    assert outcome.landed() == ["a", "b"]


def test_parquet_binary_that_is_not_utf8_and_wrong_types(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    table = pa.table(
        {
            "user_id": pa.array([b"u1", b"u\xff", b"u2"], pa.binary()),
            "event_name": ["a", "b", "c"],
            # Epoch seconds as integers, not a timestamp type.
            "timestamp": pa.array([1767312000, 1767312000, 1767398400], pa.int64()),
            "properties": pa.array([{"k": 1}, {"k": 2}, None], pa.struct([("k", pa.int64())])),
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    outcome = run(warehouse, tmp_path, {}, config)
    assert outcome.reason_at("events.parquet", 2) == ("malformed_row", "user_id")
    assert "not UTF-8" in outcome.quarantine.detail.item()
    events = outcome.raw_events.set_index("event_name")
    assert list(events.index.sort_values()) == ["a", "c"]
    assert events.loc["a", "timestamp"] == pd.Timestamp("2026-01-02T00:00:00Z")
    assert json.loads(events.loc["a", "properties"]) == {"k": 1}


def test_an_unreadable_parquet_file_is_an_input_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "users.csv").write_bytes(USERS)
    (tmp_path / "events.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match=r"events\.parquet: not a readable Parquet file"):
        FileSource(data_dir=str(tmp_path)).read_events({})


# -- validate before you commit ----------------------------------------------------------------


def test_values_that_parse_but_cannot_be_stored_are_out_of_range(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    users = USERS + (
        b"u3,294247-01-10T04:00:54.775806Z\n"  # row 3: beyond any engine's range
        b"u4,infinity\n"
        b"u5,1985-06-01T00:00:00Z\n"  # before ingestion.min_timestamp
        b"u6,2027-06-01T00:00:00Z\n"  # after the clock plus the tolerance
    )
    events = HEADER + (
        b"u1,a,infinity\n"
        b"u1,b,-infinity\n"
        b"u1,c,300000-01-01T00:00:00Z\n"
        b"u1,d,1e30\n"
        b"u1,e,2026-01-02T00:00:00Z\n"
        b"u1,f,0\n"  # epoch zero: 1970, before min_timestamp
    )
    outcome = run(warehouse, tmp_path, {"users.csv": users, "events.csv": events}, config)
    for row in (3, 4, 5):
        assert outcome.reason_at("users.csv", row) == ("out_of_range_timestamp", "signup_at")
    assert outcome.reason_at("users.csv", 6) == ("future_timestamp", "signup_at")
    for row in (1, 2, 3, 4, 6):
        assert outcome.reason_at("events.csv", row) == ("out_of_range_timestamp", "timestamp")
    assert outcome.landed() == ["e"]
    assert sorted(outcome.raw_users.user_id) == ["u1", "u2"]


def test_an_error_inside_ingestion_leaves_the_previous_tables_untouched(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    first = run(
        warehouse, tmp_path, {"events.csv": HEADER + b"u1,a,2026-01-02T00:00:00Z\n"}, config
    )
    # Schema drift: someone rebuilt the quarantine with `raw` as an integer column, so the
    # quarantine insert fails after the raw tables' new rows were already queued.
    con = warehouse.connect()
    con.drop_table("quarantine", database="onboarding")
    con.create_table(
        "quarantine",
        schema=ibis.schema(
            {
                "source": "string",
                "row_number": "int64",
                "reason": "string",
                "field": "string",
                "raw": "int64",
                "kind": "string",
                "event_date": "date",
                "detail": "string",
            }
        ),
        database="onboarding",
    )
    changed = HEADER + b"u1,b,2026-01-03T00:00:00Z\nu1,c,bad\n"
    (tmp_path / "events.csv").write_bytes(changed)
    (tmp_path / "users.csv").write_bytes(USERS + b"u3,2026-01-01T00:00:00Z\nu4,bad\n")
    source = FileSource(data_dir=str(tmp_path))
    with pytest.raises(Exception):  # noqa: B017 - the engine's own conversion error
        ingest_users(warehouse, source, config, clock=CLOCK)
    with pytest.raises(Exception):  # noqa: B017
        ingest_events(warehouse, source, config, *ALL_TIME, clock=CLOCK)
    assert sorted(warehouse.execute(warehouse.table("raw_users")).user_id) == ["u1", "u2"]
    assert sorted(warehouse.execute(warehouse.table("raw_events")).event_name) == first.landed()
    manifest = warehouse.execute(warehouse.table("ingestion_manifest"))
    assert set(manifest.rows_read) == {1, 2}  # still the first run's file versions


# -- timestamps as real exports write them -----------------------------------------------------


def test_iso_epoch_seconds_and_milliseconds_are_read_automatically(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    events = HEADER + (
        b"u1,iso_z,2026-01-02T10:00:00Z\n"
        b"u1,offset,2026-01-02T12:00:00+02:00\n"
        b"u1,naive,2026-01-02 10:00:00\n"
        b"u1,date_only,2026-01-02\n"
        b"u1,seconds,1767348000\n"
        b"u1,seconds_fraction,1767348000.5\n"
        b"u1,millis,1767348000000\n"
    )
    jsonl = (
        b'{"user_id": "u1", "event_name": "json_seconds", "timestamp": 1767348000}\n'
        b'{"user_id": "u1", "event_name": "json_millis", "timestamp": 1767348000250}\n'
        b'{"user_id": "u1", "event_name": "json_text_millis", "timestamp": "1767348000000"}\n'
    )
    outcome = run(warehouse, tmp_path, {"events.csv": events, "events.jsonl": jsonl}, config)
    stamps = outcome.raw_events.set_index("event_name").timestamp
    ten = pd.Timestamp("2026-01-02T10:00:00Z")
    for name in (
        "iso_z",
        "offset",
        "naive",
        "seconds",
        "millis",
        "json_seconds",
        "json_text_millis",
    ):
        assert stamps[name] == ten, name
    assert stamps["date_only"] == pd.Timestamp("2026-01-02T00:00:00Z")  # midnight UTC
    assert stamps["seconds_fraction"] == ten + pd.Timedelta(milliseconds=500)
    assert stamps["json_millis"] == ten + pd.Timedelta(milliseconds=250)
    assert outcome.events.quarantined == 0


def test_timestamp_format_per_column(warehouse: WarehouseResource, tmp_path: Path) -> None:
    config = ProductConfig(
        aha_events=["a"],
        partitions_start_date="2026-01-01",
        ingestion={
            "timestamp_format": "iso",
            "timestamp_formats": {"events.timestamp": "epoch_ms"},
        },
    )
    users = b"user_id,signup_at\nu1,2026-01-01T00:00:00Z\nu2,1767225600\n"
    events = HEADER + b"u1,a,1767348000000\nu1,b,2026-01-02T10:00:00Z\nu1,c,1767348000\n"
    outcome = run(warehouse, tmp_path, {"users.csv": users, "events.csv": events}, config)
    # iso for signups: a number is not accepted.
    assert outcome.reason_at("users.csv", 2) == ("unparseable_signup_at", "signup_at")
    stamps = outcome.raw_events.set_index("event_name").timestamp
    assert stamps["a"] == stamps["b"] == pd.Timestamp("2026-01-02T10:00:00Z")
    # epoch_ms forced: 1767348000 ms is in January 1970, before min_timestamp.
    assert outcome.reason_at("events.csv", 3) == ("out_of_range_timestamp", "timestamp")


def test_min_timestamp_is_configurable(warehouse: WarehouseResource, tmp_path: Path) -> None:
    config = ProductConfig(
        aha_events=["a"],
        partitions_start_date="2026-01-01",
        ingestion={"min_timestamp": "2026-01-01"},
    )
    users = USERS + b"u3,2025-12-31T23:59:59Z\n"
    outcome = run(warehouse, tmp_path, {"users.csv": users, "events.csv": HEADER}, config)
    assert outcome.reason_at("users.csv", 3) == ("out_of_range_timestamp", "signup_at")


# -- the file set is reconciled ----------------------------------------------------------------


def test_a_removed_file_has_its_rows_removed_on_every_date(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    early = b"event_id,user_id,event_name,timestamp\ne1,u1,a,2026-01-02T00:00:00Z\n"
    later = (
        b"event_id,user_id,event_name,timestamp\n"
        b"e1,u1,a,2026-01-02T00:00:00Z\n"  # a duplicate of the early file's row
        b"e2,u1,b,2026-02-02T00:00:00Z\n"
    )
    extra = b"event_id,user_id,event_name,timestamp\ne3,u2,c,2026-01-05T00:00:00Z\n"
    run(
        warehouse,
        tmp_path,
        {"events/a.csv": early, "events/b.csv": later, "events/c.csv": extra},
        config,
    )
    # The next daily run covers February only; the files a.csv and c.csv are gone.
    february = (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    outcome = run(
        warehouse, tmp_path, {"events/a.csv": None, "events/c.csv": None}, config, window=february
    )
    assert outcome.events.removed_files == {"events/a.csv": 1, "events/c.csv": 1}
    # e1 now comes from b.csv, although January is outside this run's window; e3 is gone.
    kept = outcome.raw_events.set_index("event_id")
    assert sorted(kept.index) == ["e1", "e2"]
    assert (kept.loc["e1", "source"], kept.loc["e1", "row_number"]) == ("events/b.csv", 1)
    assert outcome.events.restored_rows == 1
    assert any("events/a.csv (1 rows)" in w for w in outcome.events.warnings)
    manifest = warehouse.execute(warehouse.table("ingestion_manifest"))
    assert sorted(manifest[manifest.kind == "events"].source) == ["events/b.csv"]


# -- conflicting ids are visible ---------------------------------------------------------------


def test_conflicting_event_ids_are_quarantined_with_both_rows(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    events = (
        b"event_id,user_id,event_name,timestamp\n"
        b"e1,u1,a,2026-01-02T00:00:00Z\n"
        b"e1,u2,a,2026-01-02T00:00:00Z\n"  # row 2: same id, another user
        b"e1,u1,a,2026-01-02T00:00:00Z\n"  # row 3: an identical repeat
        b",u1,b,2026-01-03T00:00:00Z\n"
        b",u1,b,2026-01-03T00:00:00Z\n"  # row 5: identical, no event_id
        b",u1,b,2026-01-03T00:00:00Z\n"
    )
    late = b"event_id,user_id,event_name,timestamp\ne1,u1,a,2026-01-02T09:00:00+09:00\ne1,u1,z,2026-01-02T00:00:00Z\n"
    outcome = run(warehouse, tmp_path, {"events.csv": events, "events/late.csv": late}, config)
    assert outcome.reason_at("events.csv", 2) == ("conflicting_event_id", "event_id")
    assert outcome.reason_at("events/late.csv", 2) == ("conflicting_event_id", "event_id")
    details = outcome.quarantine.set_index(["source", "row_number"]).detail
    assert (
        details["events.csv", 2]
        == "event_id 'e1' also at events.csv row 1 (kept); differs in user_id"
    )
    assert "differs in event_name" in details["events/late.csv", 2]
    raw = json.loads(outcome.quarantine.set_index(["source", "row_number"]).raw["events.csv", 2])
    assert raw["user_id"] == "u2" and raw["timestamp"] == "2026-01-02T00:00:00Z"
    # The same instant written another way is the same content: a duplicate.
    assert outcome.events.duplicates == 4
    assert outcome.events.identical_rows_collapsed == 2
    assert outcome.landed() == ["a", "b"]


# -- anonymous events --------------------------------------------------------------------------


def test_anonymous_events_are_counted_apart(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    events = (
        HEADER + b",a,2026-01-02T00:00:00Z\n,a,2026-01-02T00:00:00Z\nu1,b,bad\nu1,c,2026-01-02\n"
    )
    outcome = run(warehouse, tmp_path, {"events.csv": events}, config)
    assert outcome.events.anonymous == 2 and outcome.events.malformed == 1
    assert outcome.reason_at("events.csv", 1) == ("missing_user_id", "user_id")


# -- no users file: signup = first seen --------------------------------------------------------


def test_without_a_users_file_signup_is_the_first_event(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    events = HEADER + (
        b"u1,b,2026-01-03T00:00:00Z\n"
        b"u1,a,2026-01-02T00:00:00Z\n"
        b"u2,a,not-a-time\n"
        b"u2,a,2026-01-04T00:00:00Z\n"
        b",a,2026-01-01T00:00:00Z\n"
    )
    outcome = run(warehouse, tmp_path, {"users.csv": None, "events.csv": events}, config)
    users = outcome.raw_users.set_index("user_id")
    assert users.signup_at.to_dict() == {
        "u1": pd.Timestamp("2026-01-02T00:00:00Z"),
        "u2": pd.Timestamp("2026-01-04T00:00:00Z"),
    }
    assert (users.loc["u1", "source"], users.loc["u1", "row_number"]) == ("events.csv", 2)
    assert outcome.users.signup_source == "first_event"
    assert outcome.landed() == ["a", "a", "b"]


# -- the assets: empty input succeeds, every blocking check names its setting -------------------


def materialize_ingestion(
    warehouse: WarehouseResource, data_dir: Path, config_yaml: str, day: str
) -> dg.ExecuteInProcessResult:
    from onboarding_pipeline.ingestion.assets import build_raw_events, raw_users
    from onboarding_pipeline.resources import ProductConfigResource

    (data_dir / "onboarding.yaml").write_text(config_yaml)
    partitions = dg.DailyPartitionsDefinition(start_date="2026-01-01")
    return dg.materialize(
        [raw_users, build_raw_events(partitions)],
        resources={
            "warehouse": warehouse,
            "source": FileSource(data_dir=str(data_dir)),
            "product_config": ProductConfigResource(path=str(data_dir / "onboarding.yaml")),
        },
        partition_key=day,
        raise_on_error=False,
    )


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_assets_succeed_on_a_header_only_export_and_say_so(
    warehouse: WarehouseResource, tmp_path: Path
) -> None:
    (tmp_path / "users.csv").write_bytes(b"user_id,signup_at\n")
    (tmp_path / "events.csv").write_bytes(HEADER)
    result = materialize_ingestion(
        warehouse, tmp_path, "aha_events: [a]\npartitions_start_date: 2026-01-01\n", "2026-01-02"
    )
    assert result.success
    assert all(check.passed for check in checks_of(result).values())
    metadata = {
        m.asset_key.to_user_string(): m.metadata
        for m in result.asset_materializations_for_node("raw_events")
    }["raw_events"]
    assert metadata["empty"].value is True
    assert metadata["empty_reason"].value.startswith("the input holds no rows")


def test_blocking_share_checks_name_their_setting_and_the_rows(
    warehouse: WarehouseResource, tmp_path: Path
) -> None:
    (tmp_path / "users.csv").write_bytes(USERS)
    # 3 anonymous rows of 6; of the 3 identified rows, 1 is bad.
    events = HEADER + (
        b",a,2026-01-02T00:00:00Z\n" * 3 + b"u1,a,2026-01-02T00:00:00Z\nu1,b,2026-01-02\nu1,c,x\n"
    )
    (tmp_path / "events.csv").write_bytes(events)
    config = (
        "aha_events: [a]\npartitions_start_date: 2026-01-01\n"
        "ingestion: {max_quarantine_share: 0.5, max_anonymous_share: 0.4}\n"
    )
    checks = checks_of(materialize_ingestion(warehouse, tmp_path, config, "2026-01-02"))
    # 1 of 3 identified rows is under 50%: anonymous traffic does not count as malformed.
    assert checks["quarantine_share_under_threshold"].passed
    anonymous = checks["anonymous_share_under_threshold"]
    assert not anonymous.passed
    assert anonymous.description is not None
    assert "`ingestion.max_anonymous_share`" in anonymous.description
    assert "3 of 6" in anonymous.description
    assert "FROM onboarding.quarantine WHERE kind = 'events' AND reason = 'missing_user_id'" in (
        anonymous.description
    )

    strict = config.replace("0.5", "0.2").replace("0.4", "1.0")
    checks = checks_of(materialize_ingestion(warehouse, tmp_path, strict, "2026-01-02"))
    malformed = checks["quarantine_share_under_threshold"]
    assert not malformed.passed and checks["anonymous_share_under_threshold"].passed
    assert "`ingestion.max_quarantine_share`" in (malformed.description or "")
    assert "1 of 3 identified event rows" in (malformed.description or "")
    assert "unparseable_timestamp 1" in (malformed.description or "")


def test_the_run_spans_the_days_of_epoch_and_iso_events(
    tmp_path: Path, config: ProductConfig
) -> None:
    from onboarding_pipeline.ingestion.load import event_date_span

    (tmp_path / "users.csv").write_bytes(USERS)
    (tmp_path / "events.csv").write_bytes(
        HEADER + b"u1,a,1767348000000\nu1,b,2026-03-04\nu1,c,infinity\nu1,d,2099-01-01\n"
    )
    files = FileSource(data_dir=str(tmp_path)).read_events({})
    assert event_date_span(files, config, clock=CLOCK) == (
        datetime(2026, 1, 2).date(),
        datetime(2026, 3, 4).date(),
    )


def test_a_warehouse_from_before_the_detail_column_gets_it(
    tmp_path: Path, config: ProductConfig
) -> None:
    url = f"duckdb:///{tmp_path / 'old.duckdb'}"
    old = ibis.duckdb.connect(str(tmp_path / "old.duckdb"))
    old.create_database("onboarding")
    old.create_table(
        "quarantine",
        schema=ibis.schema(
            {
                "source": "!string",
                "row_number": "int64",
                "reason": "!string",
                "field": "string",
                "raw": "string",
                "kind": "!string",
                "event_date": "date",
            }
        ),
        database="onboarding",
    )
    old.disconnect()
    warehouse = WarehouseResource(url=url)
    try:
        outcome = run(warehouse, tmp_path / "data", {"events.csv": HEADER + b"u1,a,x\n"}, config)
        assert outcome.quarantine.detail.item().startswith("not ISO-8601 text")
    finally:
        warehouse.close()


NUL_EVENTS = (
    HEADER + b"u1,a,2026-01-02T00:00:00Z\nu1,pro\x00file,2026-01-02T00:00:00Z\nu2,b,2026-01-03\n"
)


def assert_nul_row_quarantined(outcome: Outcome) -> None:
    assert outcome.reason_at("events.csv", 2) == ("malformed_row", "event_name")
    bad = outcome.quarantine[outcome.quarantine.row_number == 2].iloc[0]
    assert "\x00" not in bad.raw and "pro\\x00file" in bad.raw  # kept, visibly
    assert "NUL byte" in bad.detail
    assert outcome.landed() == ["a", "b"]


def test_a_nul_byte_quarantines_its_row_naming_the_field(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    assert_nul_row_quarantined(run(warehouse, tmp_path, {"events.csv": NUL_EVENTS}, config))


@pytest.mark.postgres
def test_a_nul_byte_does_not_block_a_postgres_load(tmp_path: Path, config: ProductConfig) -> None:
    """PostgreSQL cannot store NUL in text: one such row used to fail the whole load there."""
    import uuid

    from onboarding_pipeline_tests.conftest import POSTGRES_URL

    schema = f"onboarding_nul_{uuid.uuid4().hex[:8]}"
    postgres = WarehouseResource(url=POSTGRES_URL, schema_name=schema)
    try:
        assert_nul_row_quarantined(run(postgres, tmp_path, {"events.csv": NUL_EVENTS}, config))
    finally:
        postgres.connect().drop_database(schema, force=True, cascade=True)
        postgres.close()


@pytest.mark.parametrize("users", [b"", b"user_id,signup_at\n"], ids=["0-byte", "header-only"])
def test_an_empty_users_file_takes_signups_from_first_events(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig, users: bytes
) -> None:
    events = HEADER + b"u1,a,2026-01-02T05:00:00Z\nu1,b,2026-01-03T00:00:00Z\nu2,a,2026-01-04\n"
    outcome = run(warehouse, tmp_path, {"users.csv": users, "events.csv": events}, config)
    assert outcome.users.signup_source == "first_event"
    assert any("the users file holds no rows (users.csv)" in w for w in outcome.users.warnings)
    signups = outcome.raw_users.set_index("user_id").signup_at
    assert signups["u1"] == pd.Timestamp("2026-01-02T05:00:00Z")
    assert outcome.landed() == ["a", "a", "b"] and outcome.events.quarantined == 0


def test_events_of_quarantined_users_point_at_the_users_file(
    warehouse: WarehouseResource, tmp_path: Path
) -> None:
    (tmp_path / "users.csv").write_bytes(b"user_id,signup_at\nu1,garbage\nu2,garbage\n")
    (tmp_path / "events.csv").write_bytes(HEADER + b"u1,a,2026-01-02T00:00:00Z\nu2,a,2026-01-02\n")
    config = "aha_events: [a]\npartitions_start_date: 2026-01-01\n"
    check = checks_of(materialize_ingestion(warehouse, tmp_path, config, "2026-01-02"))[
        "quarantine_share_under_threshold"
    ]
    assert not check.passed
    description = check.description or ""
    assert (
        "Most are unknown_user" in description and "raw_users, which holds 0 users" in description
    )
    assert "2 users rows quarantined: unparseable_signup_at 2" in description
    assert "WHERE kind = 'users'" in description


def test_a_zone_name_is_quarantined_and_shifts_no_other_row(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    # DuckDB's cast remembers the last zone name it read and applies it to the naive rows
    # after it: a name is refused, so every other row keeps its own meaning.
    events = HEADER + (
        b"u1,a,2026-01-05 10:00:00\n"
        b"u1,b,2026-01-05 10:00:00 America/New_York\n"
        b"u1,c,2026-01-05 11:00:00\n"
        b"u1,d,2026-01-06\n"
        b"u1,e,2026-01-06 08:00:00 UTC\n"
    )
    outcome = run(warehouse, tmp_path, {"events.csv": events}, config)
    assert outcome.reason_at("events.csv", 2) == ("unparseable_timestamp", "timestamp")
    stamps = outcome.raw_events.set_index("event_name").timestamp
    assert stamps["c"] == pd.Timestamp("2026-01-05T11:00:00Z")
    assert stamps["d"] == pd.Timestamp("2026-01-06T00:00:00Z")
    assert stamps["e"] == pd.Timestamp("2026-01-06T08:00:00Z")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("user_id,event_name,timestamp\nu1,a,2026-01-02\n".encode("utf-16"), "UTF-16 text"),
        ("user_id,event_name,timestamp\nu1,a,2026-01-02\n".encode("utf-16-le"), "UTF-16 text"),
        (b"user_id;event_name;timestamp\nu1;a;2026-01-02\n", "separated by semicolons"),
        (b"user_id\tevent_name\ttimestamp\nu1\ta\t2026-01-02\n", "separated by tabs"),
    ],
    ids=["utf-16", "utf-16-no-bom", "semicolons", "tabs"],
)
def test_another_encoding_or_delimiter_says_what_to_do(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "users.csv").write_bytes(USERS)
    (tmp_path / "events.csv").write_bytes(content)
    with pytest.raises(InputError) as raised:
        FileSource(data_dir=str(tmp_path)).read_events({})
    assert message in str(raised.value) and "events.csv" in str(raised.value)
    assert "\x00" not in str(raised.value)


def test_a_line_of_spaces_is_blank_not_malformed(
    warehouse: WarehouseResource, tmp_path: Path, config: ProductConfig
) -> None:
    events = HEADER + b"u1,a,2026-01-02T00:00:00Z\n   \nu1,b,2026-01-02T00:00:00Z\n"
    outcome = run(warehouse, tmp_path, {"events.csv": events}, config)
    assert outcome.events.quarantined == 0 and outcome.events.blank_records == 1
    assert outcome.raw_events.set_index("event_name").row_number["b"] == 3
