"""Behaviour of the validation stage: GE suites catch each corruption, quarantine, fail closed."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from validation import (
    CRITEO, REES46, ValidationConfig, ValidationFailed, ValidationReport, criteo_row_suite,
    table_suite, validate_events,
)
from validation.__main__ import main as cli_main
from validation.checkpoints import SuiteRunner
from validation.parsing import check_frame, parse_frame

START = datetime(2020, 1, 1, tzinfo=timezone.utc)
END = datetime(2020, 2, 1, tzinfo=timezone.utc)
EVENT_TYPES = ["view", "cart", "remove_from_cart", "purchase"]


def events(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Valid REES46 events with the contract's dtypes, all inside [START, END)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "event_time": pd.Timestamp(START) + pd.to_timedelta(rng.integers(0, 30 * 86400, n), unit="s"),
        "event_type": rng.choice(EVENT_TYPES, n),
        "product_id": np.arange(1_000, 1_000 + n, dtype="int64"),
        # REES46 category ids use all 19 digits of int64.
        "category_id": rng.integers(1, 5, n).astype("int64") + 2_053_013_552_000_000_000,
        "category_code": rng.choice(["electronics.smartphone", None], n),
        "brand": rng.choice(["acme", "globex", None], n),
        "price": rng.uniform(1, 500, n).round(2),
        "user_id": rng.integers(1, 1_000_000, n).astype("int64"),
        "user_session": [f"s-{i}" for i in range(n)],
    })


def as_rees46_csv_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as REES46 writes it to CSV ('2019-10-01 00:00:04 UTC'), every value a string."""
    text = frame.astype(object).where(frame.notna(), None)
    text["event_time"] = frame["event_time"].dt.strftime("%Y-%m-%d %H:%M:%S UTC")
    for column in ("product_id", "category_id", "user_id", "price"):
        text[column] = frame[column].astype(str)
    return text


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def run(inputs: list[Path], out_dir: Path, threshold: float = 1.0, **config) -> tuple[ValidationReport, bool]:
    """Run validation; return the report and whether it raised `ValidationFailed`."""
    cfg = ValidationConfig(window_start=START, window_end=END, bad_row_threshold=threshold, **config)
    try:
        return validate_events(inputs, out_dir, cfg), False
    except ValidationFailed as failed:
        return failed.report, True


def quarantined(out_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(out_dir / "quarantine" / "events.parquet")


def test_clean_parquet_and_csv_pass_with_contract_dtypes_and_all_outputs(tmp_path: Path) -> None:
    frame = events(60)
    parquet = tmp_path / "day1.parquet"
    frame.iloc[:30].to_parquet(parquet)
    csv = write_csv(as_rees46_csv_strings(frame.iloc[30:]), tmp_path / "day2.csv")

    report, failed = run([parquet, csv], tmp_path / "out", threshold=0.0)

    assert not failed and report.success
    assert (report.n_in, report.n_passed, report.n_quarantined) == (60, 60, 0)
    valid = pq.read_table(tmp_path / "out" / "valid" / "events.parquet")
    assert valid.schema.equals(REES46.arrow_schema)
    back = valid.to_pandas().sort_values("product_id").reset_index(drop=True)
    pd.testing.assert_series_equal(back["price"], frame["price"], check_names=False)
    assert (back["event_time"] == frame["event_time"].dt.floor("s")).all()
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["suite_version"] == report.suite_version and saved["n_passed"] == 60
    assert "<html" in Path(report.data_docs_path).read_text().lower()
    assert json.loads((tmp_path / "out" / "profile.json").read_text())["row_count"] == 60


Corruption = Callable[[pd.DataFrame], pd.DataFrame]


def _set(column: str, value: object, row: int = 5) -> Corruption:
    def corrupt(text: pd.DataFrame) -> pd.DataFrame:
        text.loc[row, column] = value
        return text
    return corrupt


def _duplicate_row(row: int = 5) -> Corruption:
    def corrupt(text: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([text, text.iloc[[row]]], ignore_index=True)
    return corrupt


ROW_CORRUPTIONS = {
    "int_id_not_a_number": (_set("product_id", "12ab"), "product_id_not_int", 5),
    "int_id_fractional": (_set("user_id", "12.5"), "user_id_not_int", 5),
    "int_id_past_int64": (_set("category_id", "9223372036854775808"), "category_id_not_int", 5),
    "price_not_a_number": (_set("price", "cheap"), "price_not_float", 5),
    "event_time_garbled": (_set("event_time", "yesterday at noon"), "event_time_not_timestamp", 5),
    "event_time_impossible_date": (_set("event_time", "2020-01-32 00:00:00 UTC"), "event_time_not_timestamp", 5),
    "null_user_id": (_set("user_id", None), "user_id_null", 5),
    "null_event_time": (_set("event_time", None), "event_time_null", 5),
    "null_session": (_set("user_session", None), "user_session_null", 5),
    "negative_price": (_set("price", "-0.01"), "price_negative", 5),
    "unknown_event_type": (_set("event_type", "wishlist"), "event_type_unknown", 5),
    "future_timestamp": (_set("event_time", "2020-02-01 00:00:00 UTC"), "event_time_future", 5),
    "stale_timestamp": (_set("event_time", "2019-12-31 23:59:59 UTC"), "event_time_stale", 5),
    "duplicated_row": (_duplicate_row(5), "duplicate_row", 40),
    "nul_in_brand": (_set("brand", "ac\x00me"), "brand_control_characters", 5),
    "escape_in_session": (_set("user_session", "s-5\x1b[0m"), "user_session_control_characters", 5),
    "year_one": (_set("event_time", "0001-01-01 00:00:00 UTC"), "event_time_stale", 5),
    "year_9999": (_set("event_time", "9999-12-31 23:59:59 UTC"), "event_time_future", 5),
    "nan_price": (_set("price", "NaN"), "price_not_float", 5),
    "infinite_price": (_set("price", "inf"), "price_not_float", 5),
}


@pytest.mark.parametrize("name", sorted(ROW_CORRUPTIONS))
def test_each_row_corruption_is_quarantined_with_its_reason(tmp_path: Path, name: str) -> None:
    corrupt, reason, bad_row = ROW_CORRUPTIONS[name]
    text = corrupt(as_rees46_csv_strings(events(40)))
    source = write_csv(text, tmp_path / "events.csv")

    report, failed = run([source], tmp_path / "out", threshold=0.5)

    assert not failed
    assert (report.n_in, report.n_passed, report.n_quarantined) == (len(text), len(text) - 1, 1)
    assert report.reasons == {reason: 1}
    bad = quarantined(tmp_path / "out")
    assert bad["_reason"].tolist() == [reason]
    assert bad["_row"].tolist() == [bad_row]
    assert bad["_source_file"].tolist() == [str(source)]
    expected = text.iloc[bad_row].where(text.iloc[bad_row].notna(), None)
    assert bad.iloc[0][list(REES46.columns)].tolist() == expected.tolist()  # kept verbatim, as strings
    assert len(pd.read_parquet(tmp_path / "out" / "valid" / "events.parquet")) == len(text) - 1


def test_quarantine_count_equals_corrupted_rows_exactly_across_chunks(tmp_path: Path) -> None:
    text = as_rees46_csv_strings(events(300, seed=3))
    corrupted = {}
    for offset, (corrupt, reason, _) in enumerate(v for k, v in sorted(ROW_CORRUPTIONS.items())
                                                   if k != "duplicated_row"):
        row = 7 + 15 * offset  # spread over several 64-row chunks
        text = _set_row(text, corrupt, row)
        corrupted[row] = reason
    text = pd.concat([text, text.iloc[[0, 150]]], ignore_index=True)  # two exact duplicates
    corrupted.update({300: "duplicate_row", 301: "duplicate_row"})
    source = write_csv(text, tmp_path / "events.csv")

    report, failed = run([source], tmp_path / "out", chunk_rows=64)

    bad = quarantined(tmp_path / "out")
    assert report.n_quarantined == len(corrupted) == len(bad)
    assert dict(zip(bad["_row"], bad["_reason"])) == corrupted
    assert report.n_in == report.n_passed + report.n_quarantined == 302
    assert not failed


def _set_row(text: pd.DataFrame, corrupt: Corruption, row: int) -> pd.DataFrame:
    # The table's corruptions all target row 5; move the change to `row`.
    probe = corrupt(text.copy().iloc[[5]].reset_index(drop=True).reindex(range(6)).ffill())
    text.loc[row] = probe.iloc[5].to_numpy()
    return text


def test_row_failing_several_expectations_lists_every_reason(tmp_path: Path) -> None:
    text = as_rees46_csv_strings(events(20))
    text.loc[3, ["user_id", "price", "event_type"]] = [None, "-5", "wishlist"]
    report, _ = run([write_csv(text, tmp_path / "e.csv")], tmp_path / "out")

    (reason,) = quarantined(tmp_path / "out")["_reason"]
    assert set(reason.split(";")) == {"user_id_null", "price_negative", "event_type_unknown"}
    assert report.n_quarantined == 1


def test_duplicates_are_found_across_files_and_the_first_copy_is_kept(tmp_path: Path) -> None:
    text = as_rees46_csv_strings(events(20))
    first = write_csv(text, tmp_path / "a.csv")
    second = write_csv(text.iloc[[4, 9]], tmp_path / "b.csv")

    report, _ = run([first, second], tmp_path / "out")

    bad = quarantined(tmp_path / "out")
    assert (report.n_passed, report.n_quarantined) == (20, 2)
    assert bad["_source_file"].unique().tolist() == [str(second)]
    assert set(bad["_reason"]) == {"duplicate_row"}


def write_excel_csv(frame: pd.DataFrame, path: Path) -> Path:
    """CSV as spreadsheet exports write it: a UTF-8 byte-order mark and CRLF line ends."""
    path.write_bytes(b"\xef\xbb\xbf" + frame.to_csv(index=False, lineterminator="\r\n").encode())
    return path


def test_the_same_events_as_parquet_and_as_bom_crlf_csv_pass_once(tmp_path: Path) -> None:
    frame = events(20)
    parquet = tmp_path / "events.parquet"
    frame.to_parquet(parquet)
    text = as_rees46_csv_strings(frame)
    # Same values, other spellings: an offset for the same instant, a trailing zero on a price.
    text.loc[3, "event_time"] = (frame.loc[3, "event_time"].tz_convert("Asia/Kolkata")).isoformat()
    text.loc[4, "price"] = f"{frame.loc[4, 'price']:.4f}"
    csv = write_excel_csv(text, tmp_path / "events.csv")

    report, _ = run([parquet, csv], tmp_path / "out")

    bad = quarantined(tmp_path / "out")
    assert (report.n_in, report.n_passed, report.n_quarantined) == (40, 20, 20)
    assert report.reasons == {"duplicate_row": 20}
    assert bad["_source_file"].unique().tolist() == [str(csv)] and sorted(bad["_row"]) == list(range(20))
    assert len(pd.read_parquet(tmp_path / "out" / "valid" / "events.parquet")) == 20


def test_a_duplicate_with_a_changed_value_is_not_a_duplicate(tmp_path: Path) -> None:
    frame = events(10)
    parquet = tmp_path / "events.parquet"
    frame.to_parquet(parquet)
    text = as_rees46_csv_strings(frame)
    text.loc[2, "price"] = str(frame.loc[2, "price"] + 0.01)
    text.loc[5, "event_time"] = (frame.loc[5, "event_time"] + pd.Timedelta(seconds=1)).isoformat()
    csv = write_excel_csv(text, tmp_path / "events.csv")

    report, _ = run([parquet, csv], tmp_path / "out")

    assert (report.n_passed, report.reasons) == (12, {"duplicate_row": 8})


@pytest.mark.parametrize(("n_bad", "should_fail"), [(4, False), (5, False), (6, True)])
def test_fails_closed_only_when_bad_fraction_passes_the_threshold(
        tmp_path: Path, n_bad: int, should_fail: bool) -> None:
    text = as_rees46_csv_strings(events(100))
    text.loc[: n_bad - 1, "price"] = "-1"
    source = write_csv(text, tmp_path / "e.csv")

    report, failed = run([source], tmp_path / "out", threshold=0.05)

    assert failed is should_fail and report.success is not should_fail
    assert report.n_quarantined == n_bad
    # Outputs exist either way, so a failed run can be inspected.
    assert json.loads((tmp_path / "out" / "report.json").read_text())["success"] is not should_fail
    assert len(pd.read_parquet(tmp_path / "out" / "valid" / "events.parquet")) == 100 - n_bad


def test_failure_message_names_reasons_and_counts(tmp_path: Path) -> None:
    text = as_rees46_csv_strings(events(10))
    text.loc[:2, "event_type"] = "wishlist"
    with pytest.raises(ValidationFailed, match=r"3 of 10 rows quarantined.*event_type_unknown=3"):
        validate_events([write_csv(text, tmp_path / "e.csv")], tmp_path / "out",
                        ValidationConfig(START, END, bad_row_threshold=0.1))


def _garbled_csv(path: Path) -> Path:
    good = as_rees46_csv_strings(events(10)).to_csv(index=False).encode()
    path.write_bytes(good[:200] + b"\xff\xfe\x00\x81garbage\n" * 3 + good[200:])
    return path


def _truncated_parquet(path: Path) -> Path:
    events(10).to_parquet(path)
    path.write_bytes(path.read_bytes()[:-40])  # the footer is gone
    return path


def _csv_without(column: str) -> Callable[[Path], Path]:
    return lambda path: write_csv(as_rees46_csv_strings(events(10)).drop(columns=[column]), path)


def _csv_with_extra_column(path: Path) -> Path:
    return write_csv(as_rees46_csv_strings(events(10)).assign(coupon="x"), path)


def _header_only(path: Path) -> Path:
    return write_csv(as_rees46_csv_strings(events(10)).iloc[:0], path)


def _zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


TABLE_CORRUPTIONS = {
    "missing_column": (_csv_without("price"), "bad.csv", ["missing_column:price"], 10),
    "extra_column": (_csv_with_extra_column, "bad.csv", ["unexpected_column:coupon"], 10),
}


@pytest.mark.parametrize("name", sorted(TABLE_CORRUPTIONS))
def test_table_level_failures_fail_closed_and_keep_the_file(tmp_path: Path, name: str) -> None:
    make, file_name, reasons, n_rows = TABLE_CORRUPTIONS[name]
    good = write_csv(as_rees46_csv_strings(events(30, seed=1)), tmp_path / "good.csv")
    bad = make(tmp_path / file_name)

    report, failed = run([good, bad], tmp_path / "out", threshold=1.0)

    assert failed and not report.success
    (bad_file,) = [f for f in report.files if f.path == str(bad)]
    assert bad_file.table_failures == reasons
    assert bad_file.n_in == bad_file.n_quarantined == n_rows
    assert Path(bad_file.copied_to).read_bytes() == bad.read_bytes()
    assert report.n_passed == 30 and report.n_in == report.n_passed + report.n_quarantined
    assert any(str(bad) in failure for failure in report.table_failures)


def _cut_footer(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:-40])  # the footer is gone, the row groups are not
    return path


def test_unreadable_files_are_counted_reported_and_weigh_on_the_bad_fraction(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    events(500, seed=1).to_parquet(good)
    truncated = tmp_path / "truncated.parquet"
    events(500, seed=2).to_parquet(truncated)
    _cut_footer(truncated)
    noise_parquet = tmp_path / "noise.parquet"
    noise_parquet.write_bytes(np.random.default_rng(0).bytes(2000))
    noise_csv = tmp_path / "noise.csv"
    noise_csv.write_bytes(np.random.default_rng(1).bytes(2000).replace(b"\n", b"\0"))  # one "line"
    garbled = _garbled_csv(tmp_path / "garbled.csv")
    inputs = [good, truncated, noise_parquet, noise_csv, garbled]

    report, failed = run(inputs, tmp_path / "out", threshold=1.0)

    assert not failed and report.table_failures == []
    unreadable = {Path(u["path"]).name: u for u in json.loads(Path(report.report_path).read_text())["unreadable_files"]}
    assert sorted(unreadable) == ["garbled.csv", "noise.csv", "noise.parquet", "truncated.parquet"]
    assert all(u["reason"] and Path(u["copied_to"]).is_file() for u in unreadable.values())
    assert unreadable["truncated.parquet"]["counted_by"] == "size_estimate"
    assert 250 <= unreadable["truncated.parquet"]["rows"] <= 1000  # 500 real rows
    assert unreadable["noise.parquet"]["counted_by"] == "size_estimate" and unreadable["noise.parquet"]["rows"] >= 1
    assert (unreadable["noise.csv"]["counted_by"], unreadable["noise.csv"]["rows"]) == ("csv_lines", 1)
    assert (unreadable["garbled.csv"]["counted_by"], unreadable["garbled.csv"]["rows"]) == ("csv_lines", 13)
    n_unreadable = sum(u["rows"] for u in unreadable.values())
    assert report.n_unreadable == report.reasons["unreadable_file"] == n_unreadable
    assert report.n_passed == 500 and report.n_in == report.n_passed + report.n_quarantined
    assert report.n_quarantined == len(quarantined(tmp_path / "out")) + n_unreadable
    assert report.bad_fraction == pytest.approx(n_unreadable / (500 + n_unreadable))
    assert report.file_reasons == {"unreadable_file": 4}

    _, failed_at_5_percent = run(inputs, tmp_path / "out5", threshold=0.05)
    assert failed_at_5_percent


def test_an_unreadable_parquet_with_a_readable_footer_counts_its_footer_rows(tmp_path: Path) -> None:
    from validation.readers import RowCount, count_unreadable_rows

    path = tmp_path / "e.parquet"
    events(500).to_parquet(path)
    assert count_unreadable_rows(path) == RowCount(500, "parquet_footer")
    assert count_unreadable_rows(_cut_footer(path), parquet_bytes_per_row=path.stat().st_size / 500) == \
        RowCount(500, "size_estimate")


EMPTY_FILES = {"header_only": _header_only, "zero_bytes": _zero_bytes}


@pytest.mark.parametrize("name", sorted(EMPTY_FILES))
def test_an_empty_file_beside_good_ones_is_quarantined_whole_and_the_night_goes_on(
        tmp_path: Path, name: str) -> None:
    good = write_csv(as_rees46_csv_strings(events(30, seed=1)), tmp_path / "good.csv")
    empty = EMPTY_FILES[name](tmp_path / "empty.csv")

    report, failed = run([good, empty], tmp_path / "out", threshold=0.0)

    assert not failed and report.success and report.table_failures == []
    (empty_file,) = [f for f in report.files if f.path == str(empty)]
    assert empty_file.file_reasons == ["empty_file"] and empty_file.table_failures == []
    assert Path(empty_file.copied_to).read_bytes() == empty.read_bytes()
    assert report.file_reasons == {"empty_file": 1}
    assert (report.n_in, report.n_passed, report.n_quarantined) == (30, 30, 0)


@pytest.mark.parametrize("name", sorted(EMPTY_FILES))
def test_empty_files_as_the_only_inputs_fail_closed(tmp_path: Path, name: str) -> None:
    empty = EMPTY_FILES[name](tmp_path / "empty.csv")

    report, failed = run([empty], tmp_path / "out")

    assert failed and not report.success
    assert report.table_failures == [f"{empty}: empty_file"]
    assert report.n_in == 0


def test_rows_of_a_file_missing_a_column_are_quarantined_with_that_reason(tmp_path: Path) -> None:
    bad = _csv_without("user_id")(tmp_path / "bad.csv")
    report, failed = run([bad], tmp_path / "out")

    rows = quarantined(tmp_path / "out")
    assert failed and len(rows) == 10 and set(rows["_reason"]) == {"missing_column:user_id"}
    assert rows["user_id"].isna().all() and rows["price"].notna().all()


def test_truncated_csv_quarantines_the_cut_line_and_keeps_the_rest(tmp_path: Path) -> None:
    path = write_csv(as_rees46_csv_strings(events(10)), tmp_path / "e.csv")
    path.write_bytes(path.read_bytes()[:-30])  # cut inside the last record

    report, _ = run([path], tmp_path / "out")

    bad = quarantined(tmp_path / "out")
    assert (report.n_in, report.n_passed, report.n_quarantined) == (10, 9, 1)
    assert bad["_reason"].tolist() == ["malformed_line"] and bad["_row"].tolist() == [9]
    assert bad["_raw_line"].iloc[0].startswith("2020-01")


def test_drift_against_previous_profile_fails_closed(tmp_path: Path) -> None:
    base = events(400, seed=5)
    first, _ = run([write_csv(as_rees46_csv_strings(base), tmp_path / "day1.csv")], tmp_path / "run1")
    same_mix = events(400, seed=6)
    steady, steady_failed = run([write_csv(as_rees46_csv_strings(same_mix), tmp_path / "day2.csv")],
                                tmp_path / "run2", previous_profile=Path(first.profile_path))
    shifted = events(150, seed=7).assign(event_type="purchase", price=4000.0, category_id=99)
    drifted, drift_failed = run([write_csv(as_rees46_csv_strings(shifted), tmp_path / "day3.csv")],
                                tmp_path / "run3", previous_profile=Path(first.profile_path))

    assert not steady_failed and steady.drift["event_type_psi"] < 0.2
    assert drift_failed and drifted.n_quarantined == 0
    failures = " ".join(drifted.table_failures)
    for measure in ("event_type_psi", "price_psi", "new_category_rate", "row_count_change"):
        assert f"drift: {measure}" in failures
    assert drifted.drift["new_category_rate"] == 1.0


def test_cli_prints_report_and_exits_non_zero_on_failure(tmp_path: Path, capsys) -> None:
    text = as_rees46_csv_strings(events(20))
    good = write_csv(text, tmp_path / "good.csv")
    args = ["--window-start", START.isoformat(), "--window-end", END.isoformat()]

    assert cli_main(["--input", str(good), "--out", str(tmp_path / "a"), *args]) == 0
    assert json.loads(capsys.readouterr().out)["n_passed"] == 20

    text.loc[:5, "price"] = "-1"
    bad = write_csv(text, tmp_path / "bad.csv")
    assert cli_main(["--input", str(bad), "--out", str(tmp_path / "b"), "--threshold", "0.1", *args]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n_quarantined"] == 6 and "price_negative" in captured.err


def test_criteo_suite_flags_bad_labels_and_negative_counts(tmp_path: Path) -> None:
    raw = pd.DataFrame({c: ["1"] * 4 for c in CRITEO.columns}, dtype=object)
    raw.loc[1, "label"] = "2"
    raw.loc[2, "I5"] = "-4"
    raw.loc[3, "I1"] = "many"
    suites = SuiteRunner(tmp_path / "docs", criteo_row_suite(), table_suite(CRITEO))

    failing = suites.failing_rows(
        check_frame(raw, parse_frame(raw, CRITEO), CRITEO, START, np.zeros(4, dtype=bool)), "criteo-chunk")

    assert {k: v.tolist() for k, v in failing.items()} == {
        "label_not_binary": [1], "I5_negative": [2], "I1_not_int": [3]}
    assert suites.table_failures(raw.drop(columns=["C26"]), "criteo-table") == ["missing_column:C26"]


def test_rows_differing_only_after_a_nul_byte_are_not_duplicates(tmp_path: Path) -> None:
    text = as_rees46_csv_strings(events(4))
    text.loc[:, "brand"] = ["a\x00b", "a\x00c", "a\x00b", "a\x00d"]
    text.loc[2] = text.loc[0]  # the only real duplicate
    report, _ = run([write_csv(text, tmp_path / "e.csv")], tmp_path / "out")

    assert report.reasons == {"duplicate_row": 1, "brand_control_characters": 4}
    bad = quarantined(tmp_path / "out")
    assert bad.loc[bad["_reason"].str.contains("duplicate_row"), "_row"].tolist() == [2]


def test_far_dates_are_not_taken_for_duplicates_of_each_other(tmp_path: Path) -> None:
    text = as_rees46_csv_strings(events(4))
    text.loc[1:, ["event_type", "product_id", "user_id", "user_session", "price"]] = text.loc[0, [
        "event_type", "product_id", "user_id", "user_session", "price"]].to_numpy()
    text.loc[1:, ["category_id", "category_code", "brand"]] = text.loc[0, ["category_id", "category_code", "brand"]].to_numpy()
    text["event_time"] = ["0001-01-01 00:00:00 UTC", "0002-01-01 00:00:00 UTC",
                          "9998-01-01 00:00:00 UTC", "9999-01-01 00:00:00 UTC"]

    report, _ = run([write_csv(text, tmp_path / "e.csv")], tmp_path / "out")

    assert report.reasons == {"event_time_stale": 2, "event_time_future": 2}
