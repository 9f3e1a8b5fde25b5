"""Expectation suites as code, one per raw source, versioned by `SUITE_VERSION`.

Row suites run on a *check frame*: the raw columns as strings plus `_typed_<col>` columns
(parsed values; NaN/NaT where the raw value does not parse, a placeholder where the raw value is
null so a missing value is reported once, as `<col>_null`), `_control_<col>` for string columns
(the value holds a C0 control character or DEL) and `_is_duplicate`. Every expectation
carries `meta["reason"]`, the code written to a quarantined row's `_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import great_expectations as gx
import pyarrow as pa
from great_expectations.expectations import (
    ExpectColumnToExist,
    ExpectColumnValuesToBeBetween,
    ExpectColumnValuesToBeInSet,
    ExpectColumnValuesToNotBeNull,
    ExpectTableColumnsToMatchSet,
    ExpectTableRowCountToBeBetween,
)

from contracts import EVENT_TYPES

SUITE_VERSION = "rees46-v2"  # v2: control characters in strings are quarantined
TYPED_PREFIX = "_typed_"
DUPLICATE_COLUMN = "_is_duplicate"
CONTROL_PREFIX = "_control_"  # `_control_<col>`: the string value holds a control character


@dataclass(frozen=True)
class SourceSchema:
    """Columns of one raw source: the contract order, their parsed types and which are required."""

    name: str
    columns: tuple[str, ...]
    types: dict[str, pa.DataType]
    required: tuple[str, ...]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c, self.types[c]) for c in self.columns])


REES46 = SourceSchema(
    name="rees46_events",
    columns=(
        "event_time", "event_type", "product_id", "category_id", "category_code",
        "brand", "price", "user_id", "user_session",
    ),
    types={
        "event_time": pa.timestamp("us", tz="UTC"),
        "event_type": pa.string(),
        "product_id": pa.int64(),
        "category_id": pa.int64(),
        "category_code": pa.string(),
        "brand": pa.string(),
        "price": pa.float64(),
        "user_id": pa.int64(),
        "user_session": pa.string(),
    },
    required=("event_time", "event_type", "product_id", "user_id", "user_session", "price"),
)

# Criteo display-ads TSV: label, 13 integer features (nullable), 26 hashed categoricals (hex).
_CRITEO_INT = tuple(f"I{i}" for i in range(1, 14))
_CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))
CRITEO = SourceSchema(
    name="criteo_clicks",
    columns=("label",) + _CRITEO_INT + _CRITEO_CAT,
    types={"label": pa.int64(), **{c: pa.int64() for c in _CRITEO_INT},
           **{c: pa.string() for c in _CRITEO_CAT}},
    required=("label",),
)

SOURCES: dict[str, SourceSchema] = {REES46.name: REES46, CRITEO.name: CRITEO}


def typed(column: str) -> str:
    return f"{TYPED_PREFIX}{column}"


def control(column: str) -> str:
    return f"{CONTROL_PREFIX}{column}"


def _control_checks(source: SourceSchema) -> list:
    """No control characters (NUL, BEL, ESC, line breaks...) in string values: PostgreSQL rejects
    NUL in text, and the others are export debris, never part of an id, brand or category."""
    return [ExpectColumnValuesToBeInSet(column=control(c), value_set=[False],
                                        meta={"reason": f"{c}_control_characters"})
            for c in source.columns if pa.types.is_string(source.types[c])]


def _type_checks(source: SourceSchema) -> list:
    """One 'parses as its type' expectation per non-string column."""
    checks = []
    for column in source.columns:
        kind = source.types[column]
        if pa.types.is_string(kind):
            continue
        checks.append(ExpectColumnValuesToNotBeNull(
            column=typed(column), meta={"reason": f"{column}_not_{_type_word(kind)}"}))
    return checks


def _type_word(kind: pa.DataType) -> str:
    if pa.types.is_timestamp(kind):
        return "timestamp"
    if pa.types.is_integer(kind):
        return "int"
    return "float"


def rees46_row_suite(window_start: datetime, window_end: datetime) -> gx.ExpectationSuite:
    """Row-level suite for REES46 events in the window `[window_start, window_end)`."""
    suite: list = []
    for column in REES46.required:
        suite.append(ExpectColumnValuesToNotBeNull(column=column, meta={"reason": f"{column}_null"}))
    suite.extend(_type_checks(REES46))
    suite.extend(_control_checks(REES46))
    suite.append(ExpectColumnValuesToBeInSet(
        column="event_type", value_set=list(EVENT_TYPES), meta={"reason": "event_type_unknown"}))
    suite.append(ExpectColumnValuesToBeBetween(
        column=typed("price"), min_value=0, meta={"reason": "price_negative"}))
    suite.append(ExpectColumnValuesToBeBetween(
        column=typed("event_time"), min_value=window_start, meta={"reason": "event_time_stale"}))
    suite.append(ExpectColumnValuesToBeBetween(
        column=typed("event_time"), max_value=window_end, strict_max=True,
        meta={"reason": "event_time_future"}))
    suite.append(ExpectColumnValuesToBeInSet(
        column=DUPLICATE_COLUMN, value_set=[False], meta={"reason": "duplicate_row"}))
    return _suite(f"{REES46.name}_rows", suite)


def criteo_row_suite() -> gx.ExpectationSuite:
    """Row-level suite for Criteo clicks: label in {0,1}, integer features parse and are >= 0."""
    suite: list = []
    suite.append(ExpectColumnValuesToNotBeNull(column="label", meta={"reason": "label_null"}))
    suite.extend(_type_checks(CRITEO))
    suite.append(ExpectColumnValuesToBeInSet(
        column=typed("label"), value_set=[0, 1], meta={"reason": "label_not_binary"}))
    for column in _CRITEO_INT:
        # Criteo's integer features are counts; -1/-2 appear in I2 only, as a documented quirk.
        floor = -3 if column == "I2" else 0
        suite.append(ExpectColumnValuesToBeBetween(
            column=typed(column), min_value=floor, meta={"reason": f"{column}_negative"}))
    suite.append(ExpectColumnValuesToBeInSet(
        column=DUPLICATE_COLUMN, value_set=[False], meta={"reason": "duplicate_row"}))
    return _suite(f"{CRITEO.name}_rows", suite)


def table_suite(source: SourceSchema) -> gx.ExpectationSuite:
    """Table-level suite: every contract column present, no extra column, at least one row."""
    suite: list = []
    for column in source.columns:
        suite.append(ExpectColumnToExist(column=column, meta={"reason": f"missing_column:{column}"}))
    suite.append(ExpectTableColumnsToMatchSet(
        column_set=list(source.columns), exact_match=True, meta={"reason": "unexpected_column"}))
    suite.append(ExpectTableRowCountToBeBetween(min_value=1, meta={"reason": "empty_file"}))
    return _suite(f"{source.name}_table", suite)


def _suite(name: str, expectations: list) -> gx.ExpectationSuite:
    # Built unbound (no context needed); `SuiteRunner` adds it to the run's context.
    return gx.ExpectationSuite(name=name, expectations=expectations, meta={"version": SUITE_VERSION})
