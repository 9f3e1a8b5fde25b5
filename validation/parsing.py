"""Parse raw string columns into the contract's types, and build the frame the row suite checks.

String work runs in Arrow compute kernels (vectorised C++), not per-element Python regexes.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from validation.suites import DUPLICATE_COLUMN, SourceSchema, control, typed

_INT_PATTERN = r"^[+-]?\d{1,19}$"  # REES46 category ids use all 19 digits of int64
_INT64_MAX = str(np.iinfo(np.int64).max)
_INT_DTYPE = pd.Int64Dtype()
_CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"


def _arrow(raw: pd.Series) -> pa.ChunkedArray | pa.Array:
    return pa.array(raw, type=pa.string()) if raw.dtype == object else pa.array(raw)


def parse_column(raw: pd.Series, kind: pa.DataType) -> pd.Series:
    """Parsed values; missing (NaN/NaT/<NA>) where the raw value is null or does not parse."""
    text = _arrow(raw)
    if pa.types.is_timestamp(kind):
        # REES46 writes "2019-10-01 00:00:04 UTC"; naive stamps are taken as UTC.
        text = pc.replace_substring_regex(text, r"\s*UTC$", "+00:00")
        strings = text.to_numpy(zero_copy_only=False)
        parsed = pd.Series(pd.to_datetime(strings, utc=True, errors="coerce", format="ISO8601"),
                           index=raw.index)
        return _outside_nanosecond_range(parsed, strings).dt.floor("us")
    if pa.types.is_integer(kind):
        text = pc.replace_substring_regex(text, r"\.0+$", "")  # "123.0" from a float-typed writer
        digits = pc.replace_substring_regex(text, r"^[+-]", "")
        # Equal-length digit strings compare like numbers, so this bounds 19-digit ids to int64.
        fits = pc.or_(pc.less(pc.utf8_length(digits), 19), pc.less_equal(digits, _INT64_MAX))
        ok = pc.fill_null(pc.and_(pc.match_substring_regex(text, _INT_PATTERN), fits), False)
        values = pc.if_else(ok, text, pa.scalar(None, pa.string())).cast(pa.int64())
        return pd.Series(values.to_pandas(types_mapper={pa.int64(): _INT_DTYPE}.get).array, index=raw.index)
    if pa.types.is_floating(kind):
        values = pd.to_numeric(text.to_numpy(zero_copy_only=False), errors="coerce").astype("float64")
        return pd.Series(np.where(np.isfinite(values), values, np.nan), index=raw.index)
    return raw


# Stand-ins for real dates pandas' nanosecond timestamps cannot hold (before 1677-09-21 or after
# 2262-04-11): earlier and later than any window, so such an event is stale or future, not garbled.
_BEFORE_NS_RANGE = pd.Timestamp("1677-09-22", tz="UTC")
_AFTER_NS_RANGE = pd.Timestamp("2262-04-10", tz="UTC")
OUT_OF_RANGE_TIMES = (_BEFORE_NS_RANGE, _AFTER_NS_RANGE)  # stand-ins, not the events' instants


def _outside_nanosecond_range(parsed: pd.Series, strings: np.ndarray) -> pd.Series:
    """Fill in valid ISO dates that failed to parse only for being out of pandas' range (year 1,
    year 9999). Python runs only on the rows pandas could not parse, which are rare."""
    missing = np.flatnonzero(parsed.isna().to_numpy() & pd.notna(strings))
    if not len(missing):
        return parsed
    parsed = parsed.copy()
    for position in missing:
        try:
            moment = datetime.fromisoformat(strings[position])
        except (TypeError, ValueError):
            continue  # really not a timestamp
        parsed.iloc[position] = _BEFORE_NS_RANGE if moment.year < 1678 else _AFTER_NS_RANGE
    return parsed


def _placeholder(kind: pa.DataType, window_start: datetime):
    if pa.types.is_timestamp(kind):
        return pd.Timestamp(window_start)
    return 0


def parse_frame(raw: pd.DataFrame, source: SourceSchema) -> pd.DataFrame:
    """The contract's dtypes; missing where a value is null or does not parse."""
    return pd.DataFrame({c: parse_column(raw[c], source.types[c]) for c in source.columns}, index=raw.index)


def check_frame(raw: pd.DataFrame, parsed: pd.DataFrame, source: SourceSchema, window_start: datetime,
                is_duplicate: np.ndarray) -> pd.DataFrame:
    """Raw strings plus `_typed_<col>`, `_control_<col>` and `_is_duplicate`, as the row suite expects.

    Where the raw value is null the typed column holds an in-range placeholder, so a missing
    value fails only `<col>_null`, not also the type and range expectations.
    """
    frame = raw.copy()
    for column in source.columns:
        kind = source.types[column]
        if pa.types.is_string(kind):
            found = pc.match_substring_regex(_arrow(raw[column]), _CONTROL_CHARACTERS)
            frame[control(column)] = pc.fill_null(found, False).to_numpy(zero_copy_only=False)
            continue
        frame[typed(column)] = parsed[column].where(raw[column].notna(), _placeholder(kind, window_start))
    frame[DUPLICATE_COLUMN] = is_duplicate
    return frame
