"""One raw day partition with every corruption we have met, across files and rows: each bad record
is counted once under its reason, unreadable files are counted, and every good event reaches valid/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_validation import END, START, as_rees46_csv_strings, events, run, write_excel_csv

# rows.csv: row -> (column, raw value, reason or None when the row must pass)
ROW_DAMAGE = {
    0: ("price", "-3.5", "price_negative"),
    1: ("event_type", "wishlist", "event_type_unknown"),
    2: ("brand", "ac\x00me", "brand_control_characters"),
    3: ("user_session", "rows-3\x07", "user_session_control_characters"),
    4: ("event_time", "2019-12-31 23:00:00 UTC", "event_time_stale"),
    5: ("event_time", "2020-02-01 00:00:00 UTC", "event_time_future"),
    6: ("event_time", "0001-01-01 00:00:00 UTC", "event_time_stale"),
    7: ("event_time", "9999-12-31 23:59:59 UTC", "event_time_future"),
    8: ("event_time", "2020-01-15T12:00:00+05:30", None),  # another offset, a valid instant
    9: ("user_id", "99999999999999999999", "user_id_not_int"),
    10: ("price", "NaN", "price_not_float"),
    11: ("price", "inf", "price_not_float"),
    12: ("price", "-inf", "price_not_float"),
}


def _events(n: int, seed: int, tag: str) -> pd.DataFrame:
    """Valid events whose sessions name their file, so each valid row can be traced back."""
    return events(n, seed).assign(user_session=[f"{tag}-{i}" for i in range(n)])


@pytest.fixture(scope="module")
def partition(tmp_path_factory) -> dict:
    day = tmp_path_factory.mktemp("raw") / "date=2020-01-15"
    day.mkdir()
    files: dict[str, Path] = {}
    expected_valid: set[str] = set()

    good = _events(200, 11, "good")
    files["good"] = day / "events.parquet"
    good.to_parquet(files["good"])
    expected_valid |= set(good["user_session"])

    # The first 50 events again, as a spreadsheet exports them: BOM, CRLF, REES46 time spelling.
    files["export"] = write_excel_csv(as_rees46_csv_strings(good.iloc[:50]), day / "export.csv")

    files["truncated"] = day / "truncated.parquet"
    _events(300, 12, "truncated").to_parquet(files["truncated"])
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:-40])  # footer cut off

    files["noise"] = day / "noise.parquet"
    files["noise"].write_bytes(np.random.default_rng(13).bytes(3000))

    files["empty"] = day / "empty.csv"
    files["empty"].write_bytes(b"")

    # Numbers written as strings by a careless writer: most still parse, five rows do not.
    typed = as_rees46_csv_strings(_events(20, 14, "typed"))
    typed.loc[0:2, "product_id"] = ["p-1", "p-2", "p-3"]
    typed.loc[3:4, "price"] = ["twelve", "12,50"]
    files["typed"] = day / "typed_as_strings.parquet"
    typed.to_parquet(files["typed"])
    expected_valid |= set(typed["user_session"].iloc[5:])

    # event_time as epoch microseconds (int64), not a timestamp.
    epoch = _events(5, 15, "epoch")
    epoch["event_time"] = epoch["event_time"].astype("int64") // 1000
    files["epoch"] = day / "epoch.parquet"
    epoch.to_parquet(files["epoch"])

    files["no_user"] = day / "no_user.csv"
    as_rees46_csv_strings(_events(10, 16, "nouser")).drop(columns=["user_id"]).to_csv(files["no_user"], index=False)

    rows = as_rees46_csv_strings(_events(60, 17, "rows"))
    for row, (column, value, _) in ROW_DAMAGE.items():
        rows.loc[row, column] = value
    rows = pd.concat([rows, rows.iloc[[20, 21]]], ignore_index=True)  # two duplicates within the file
    files["rows"] = day / "rows.csv"
    text = rows.to_csv(index=False) + "2020-01-15 00:00:00 UTC,view,1,2,3\n"  # too few fields
    files["rows"].write_text(text)
    expected_valid |= {s for i, s in enumerate(rows["user_session"].iloc[:60]) if ROW_DAMAGE.get(i, (0, 0, None))[2] is None}

    out = day.parent.parent / "out"
    report, failed = run(list(files.values()), out, threshold=1.0)
    return {"files": files, "report": report, "failed": failed, "out": out, "expected_valid": expected_valid}


def test_every_reason_is_counted_once_per_bad_record(partition: dict) -> None:
    report = partition["report"]
    unreadable = sum(u["rows"] for u in report.unreadable_files)
    assert report.reasons == {
        "duplicate_row": 50 + 2,
        "unreadable_file": unreadable,
        "product_id_not_int": 3,
        "price_not_float": 2 + 3,
        "event_time_not_timestamp": 5,
        "missing_column:user_id": 10,
        "price_negative": 1,
        "event_type_unknown": 1,
        "brand_control_characters": 1,
        "user_session_control_characters": 1,
        "event_time_stale": 2,
        "event_time_future": 2,
        "user_id_not_int": 1,
        "malformed_line": 1,
    }
    assert report.file_reasons == {"unreadable_file": 2, "empty_file": 1}


def test_only_the_file_missing_a_column_fails_the_run_closed(partition: dict) -> None:
    assert partition["failed"] and not partition["report"].success
    assert partition["report"].table_failures == [f"{partition['files']['no_user']}: missing_column:user_id"]
    saved = json.loads((partition["out"] / "report.json").read_text())
    assert saved["success"] is False and saved["n_in"] == partition["report"].n_in


def test_every_record_in_is_valid_quarantined_or_counted_unreadable(partition: dict) -> None:
    report, out = partition["report"], partition["out"]
    valid = pd.read_parquet(out / "valid" / "events.parquet")
    bad = pd.read_parquet(out / "quarantine" / "events.parquet")
    assert report.n_in == len(valid) + len(bad) + report.n_unreadable
    assert report.n_in == report.n_passed + report.n_quarantined and report.n_passed == len(valid)
    per_file = bad["_source_file"].value_counts().to_dict()
    files = partition["files"]
    assert per_file == {str(files["export"]): 50, str(files["typed"]): 5, str(files["epoch"]): 5,
                        str(files["no_user"]): 10, str(files["rows"]): 12 + 2 + 1}


def test_unreadable_files_are_listed_with_how_they_were_counted(partition: dict) -> None:
    listed = {Path(u["path"]).name: u for u in partition["report"].unreadable_files}
    assert sorted(listed) == ["noise.parquet", "truncated.parquet"]
    assert all(u["counted_by"] == "size_estimate" and u["rows"] >= 1 for u in listed.values())
    assert 150 <= listed["truncated.parquet"]["rows"] <= 600  # 300 real rows
    assert all(Path(u["copied_to"]).read_bytes() == Path(u["path"]).read_bytes() for u in listed.values())


def test_nothing_valid_is_lost(partition: dict) -> None:
    valid = pd.read_parquet(partition["out"] / "valid" / "events.parquet")
    assert set(valid["user_session"]) == partition["expected_valid"] and valid["user_session"].is_unique
    offset_row = valid.loc[valid["user_session"] == "rows-8", "event_time"].iloc[0]
    assert offset_row == pd.Timestamp("2020-01-15 06:30:00", tz="UTC")
    assert valid["event_time"].between(pd.Timestamp(START), pd.Timestamp(END), inclusive="left").all()
    assert np.isfinite(valid["price"]).all() and (valid["price"] >= 0).all()
