"""Real public data shipped in packages: the Instacart sample as raw REES46 purchase events."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl.__main__ import main as etl_main
from etl.errors import ReaderError
from etl.public_data import instacart_sample_path, read_instacart_sample, write_public_events
from etl.readers import read_rees46, select_partitions
from etl.synthetic import EVENT_COLUMNS, EVENTS_SCHEMA
from validation import ValidationConfig, validate_events

END = date(2026, 1, 31)
SPREAD = 7


@pytest.fixture(scope="module")
def order_lines() -> pd.DataFrame:
    """The sample CSV itself, read independently of the reader under test."""
    return pd.read_csv(instacart_sample_path())


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return read_instacart_sample(end=END, spread_days=SPREAD)


def test_every_order_line_becomes_one_purchase_event(events, order_lines):
    assert len(order_lines) == 150_000
    assert len(events) == len(order_lines)
    assert events["user_id"].nunique() == 593 == order_lines["user_id"].nunique()
    assert events["product_id"].nunique() == order_lines["product_id"].nunique() == 14_190
    assert events["user_session"].nunique() == order_lines["order_id"].nunique() == 15_183
    assert set(events["event_type"]) == {"purchase"}
    lines = set(zip(order_lines["order_id"].astype(str), order_lines["product_id"]))
    assert set(zip(events["user_session"], events["product_id"])) == lines


def test_events_have_the_raw_contract_columns_and_dtypes(events):
    assert list(events.columns) == EVENT_COLUMNS
    assert str(events["event_time"].dtype) == "datetime64[us, UTC]"
    for column in ("product_id", "category_id", "user_id"):
        assert events[column].dtype == "int64", column
    assert events["price"].dtype == "float64"
    assert (events["price"] >= 0).all() and events["category_id"].notna().all()
    assert events["user_session"].map(type).eq(str).all()
    # The frame converts to the contract's Arrow schema without casts failing.
    assert pa.Table.from_pandas(events, schema=EVENTS_SCHEMA, preserve_index=False).num_rows == len(events)


def test_each_users_last_order_falls_in_the_last_spread_days(events):
    last = events.groupby("user_id")["event_time"].max().dt.date
    assert last.between(END - timedelta(days=SPREAD - 1), END).all()
    # Every one of those days ends some users' histories, so each test day has test users.
    assert last.nunique() == SPREAD
    assert events["event_time"].max() < pd.Timestamp(END + timedelta(days=1), tz="UTC")


def test_event_time_follows_each_users_order_sequence(events, order_lines):
    lines = order_lines.assign(user_session=order_lines["order_id"].astype(str))
    merged = lines.merge(events, on=["user_session", "product_id", "user_id"], validate="one_to_one")
    merged = merged.sort_values(["user_id", "order_number", "add_to_cart_order"])
    steps = merged.groupby("user_id")["event_time"].diff().dropna()
    assert (steps > pd.Timedelta(0)).all()
    # Gaps between a user's orders keep Instacart's days_since_prior_order.
    orders = merged.groupby(["user_id", "order_number"], as_index=False).agg(
        start=("event_time", "min"), gap=("days_since_prior_order", "first"))
    day_gap = orders.groupby("user_id")["start"].transform(lambda s: s.dt.normalize().diff().dt.days)
    later = orders["gap"].notna()
    assert (day_gap[later] == orders.loc[later, "gap"]).all()


def test_the_reader_is_deterministic_and_end_moves_every_event(events):
    again = read_instacart_sample(end=END, spread_days=SPREAD)
    pd.testing.assert_frame_equal(events, again)
    later = read_instacart_sample(end=END + timedelta(days=3), spread_days=SPREAD)
    assert (later["event_time"] - events["event_time"] == pd.Timedelta(days=3)).all()


def test_spread_days_must_be_positive():
    with pytest.raises(ReaderError, match="spread_days"):
        read_instacart_sample(spread_days=0)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict]:
    raw_dir = tmp_path_factory.mktemp("instacart") / "raw"
    return raw_dir, write_public_events("instacart", raw_dir, end=END, spread_days=SPREAD)


def _validate(files: list[Path], out_dir: Path, window_days: int):
    run_end = datetime(2026, 2, 1, tzinfo=timezone.utc)
    config = ValidationConfig(window_start=run_end - timedelta(days=window_days), window_end=run_end)
    return validate_events(files, out_dir, config)


def test_writer_reports_the_nightly_run_date_and_window(written):
    raw_dir, summary = written
    assert summary["events"] == 150_000 and summary["users"] == 593
    assert (summary["last_day"], summary["run_date"]) == ("2026-01-31", "2026-02-01")
    run_end = date.fromisoformat(summary["run_date"])
    window = summary["window_days"]
    full = select_partitions(raw_dir, run_end - timedelta(days=window), run_end)
    short = select_partitions(raw_dir, run_end - timedelta(days=window - 1), run_end)
    assert full == sorted(map(Path, summary["files"])) and len(short) == len(full) - 1
    assert read_rees46(full).shape[0] == 150_000
    manifest = json.loads((raw_dir / "manifest.json").read_text())
    assert manifest["config"] is None and manifest["source"]["dataset"] == "instacart"


def test_partitions_of_a_default_nightly_window_validate_clean(written, tmp_path):
    raw_dir, summary = written
    run_end = date.fromisoformat(summary["run_date"])
    files = select_partitions(raw_dir, run_end - timedelta(days=14), run_end)
    report = _validate(files, tmp_path, window_days=14)
    assert len(files) == 14 and report.n_in > 10_000
    assert report.n_quarantined == 0 and report.success


def test_every_event_validates_clean_in_the_reported_window(written, tmp_path):
    # One file holding all partitions' rows: the suite's cost is per file (~0.4 s), not per row.
    raw_dir, summary = written
    whole = tmp_path / "all.parquet"
    pq.write_table(pa.concat_tables([pq.read_table(f) for f in summary["files"]]), whole)
    report = _validate([whole], tmp_path / "validated", window_days=summary["window_days"])
    assert report.n_in == 150_000
    assert report.n_quarantined == 0 and report.success


def test_cli_writes_the_data_set_and_prints_how_to_run_the_nightly(tmp_path, capsys):
    assert etl_main(["public", "instacart", "--raw-dir", str(tmp_path), "--end", "2026-03-01",
                     "--format", "csv"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["last_day"] == "2026-03-01" and printed["run_date"] == "2026-03-02"
    assert Path(printed["files"][-1]) == tmp_path / "date=2026-03-01" / "events.csv"
    assert len(read_rees46(tmp_path)) == 150_000


def test_nightly_ingests_every_partition_and_looks_for_no_planted_truth(recsys_home, monkeypatch):
    from stages import nightly
    from settings import Settings

    summary = write_public_events("instacart", Settings.from_env().raw_dir, end=END)
    monkeypatch.setenv("RECSYS_WINDOW_DAYS", str(summary["window_days"]))
    settings = Settings.from_env()
    ingested = nightly.ingest(summary["run_date"], settings)
    assert sorted(ingested["files"]) == sorted(summary["files"])
    # The manifest has no generator config: the evaluate stage reports no oracle, and no error.
    assert nightly.planted_truth(settings) is None
