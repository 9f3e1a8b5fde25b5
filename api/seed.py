"""Bulk load of the store from REES46-layout events, and export of interactions back to that layout for the ETL."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import String, insert, select, type_coerce

from api.store import Customer, Interaction, Product, Store
from contracts import EVENT_TYPES, RAW_EVENT_COLUMNS

log = logging.getLogger(__name__)

REES46_COLUMNS = list(RAW_EVENT_COLUMNS)
CHUNK = 50_000
EXPORT_SCHEMA = pa.schema([
    ("event_time", pa.timestamp("us", tz="UTC")), ("event_type", pa.string()), ("product_id", pa.int64()),
    ("category_id", pa.int64()), ("category_code", pa.string()), ("brand", pa.string()),
    ("price", pa.float64()), ("user_id", pa.int64()), ("user_session", pa.string()),
])


class SeedError(ValueError):
    """The events file cannot be loaded: missing columns or unreadable format."""


@dataclass(frozen=True)
class SeedResult:
    customers: int  # rows newly inserted
    products: int
    interactions: int
    skipped: int  # events dropped for an unknown event type, missing ids or a negative price


def read_events(path: Path) -> pd.DataFrame:
    """Read a Parquet/CSV file, or every such file under a directory (e.g. date=YYYY-MM-DD partitions)."""
    files = sorted(p for p in path.rglob("*") if p.suffix in {".parquet", ".csv"}) if path.is_dir() else [path]
    if not files:
        raise SeedError(f"no .parquet or .csv files under {path}")
    frames = [pd.read_csv(f) if f.suffix == ".csv" else pd.read_parquet(f) for f in files]
    events = pd.concat(frames, ignore_index=True)
    missing = [c for c in REES46_COLUMNS if c not in events.columns]
    if missing:
        raise SeedError(f"{path}: missing REES46 columns {missing}; expected {REES46_COLUMNS}")
    return events[REES46_COLUMNS]


def _clean(events: pd.DataFrame) -> pd.DataFrame:
    ev = events.copy()
    for col in ("product_id", "user_id", "category_id", "price"):
        ev[col] = pd.to_numeric(ev[col], errors="coerce")
    ev["event_time"] = pd.to_datetime(ev["event_time"], utc=True, errors="coerce")
    ok = (ev.event_type.isin(EVENT_TYPES) & ev.product_id.notna() & ev.user_id.notna() & ev.event_time.notna()
          & (ev.product_id > 0) & (ev.user_id > 0) & ~(ev.price < 0))
    return ev[ok]


def seed(store: Store, events_path: Path) -> SeedResult:
    """Insert customers and products not yet in the store, then every valid event as an interaction."""
    raw = read_events(events_path)
    ev = _clean(raw)
    with store.engine.begin() as conn:
        known_c = set(conn.scalars(select(Customer.id)))
        known_p = set(conn.scalars(select(Product.id)))
        users = pd.Index(ev.user_id.astype("int64").unique())
        new_c = [{"id": int(u)} for u in users.difference(known_c)]
        # A product's latest event carries its current catalogue attributes.
        latest = ev.sort_values("event_time").drop_duplicates("product_id", keep="last")
        latest = latest[~latest.product_id.astype("int64").isin(known_p)]
        new_p = [
            {"id": int(r.product_id), "category_id": None if pd.isna(r.category_id) else int(r.category_id),
             "category_code": None if pd.isna(r.category_code) else str(r.category_code),
             "brand": None if pd.isna(r.brand) else str(r.brand),
             "price": 0.0 if pd.isna(r.price) else float(r.price), "available": True}
            for r in latest.itertuples(index=False)
        ]
        _insert_chunks(conn, Customer, new_c)
        _insert_chunks(conn, Product, new_p)
        sessions = ev.user_session.astype("string")
        rows = pd.DataFrame({
            "customer_id": ev.user_id.astype("int64"), "product_id": ev.product_id.astype("int64"),
            "event_type": ev.event_type.astype(str), "event_time": ev.event_time,
            "session": sessions,
        })
        _insert_interactions(conn, store, rows)
    result = SeedResult(len(new_c), len(new_p), len(ev), len(raw) - len(ev))
    log.info("seeded %s from %s", result, events_path)
    return result


def _insert_chunks(conn, orm, rows: list[dict]) -> None:  # type: ignore[no-untyped-def]
    for start in range(0, len(rows), CHUNK):
        conn.execute(insert(orm.__table__), rows[start:start + CHUNK])


def _insert_interactions(conn, store: Store, rows: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL takes the rows through COPY; other databases through chunked executemany."""
    columns = list(rows.columns)
    if store.dialect == "postgresql":
        table = f'"{store.schema}".interactions' if store.schema else "interactions"
        for start in range(0, len(rows), CHUNK * 4):
            buf = io.StringIO()
            rows.iloc[start:start + CHUNK * 4].to_csv(buf, index=False, header=False,
                                                      date_format="%Y-%m-%d %H:%M:%S.%f+00:00")
            buf.seek(0)
            cursor = conn.connection.driver_connection.cursor()
            cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buf)
        return
    # Python datetimes for the driver; None for missing sessions.
    times = rows.event_time.dt.tz_convert("UTC").dt.tz_localize(None).astype(object)
    sessions = rows.session.astype(object).where(rows.session.notna(), None)
    table = Interaction.__table__
    data = list(zip(rows.customer_id.tolist(), rows.product_id.tolist(), rows.event_type.tolist(),
                    times.tolist(), sessions.tolist()))
    for start in range(0, len(data), CHUNK):
        chunk = [dict(zip(columns, values)) for values in data[start:start + CHUNK]]
        conn.execute(insert(table), chunk)


def export_interactions(store: Store, out: Path) -> int:
    """Write all interactions in the REES46 layout (Parquet, or CSV when `out` ends in .csv); returns rows."""
    stmt = (
        select(type_coerce(Interaction.event_time, String).label("event_time"), Interaction.event_type, Interaction.product_id, Product.category_id,
               Product.category_code, Product.brand, Product.price, Interaction.customer_id.label("user_id"),
               Interaction.session.label("user_session"))
        .join(Product, Product.id == Interaction.product_id)
        .order_by(Interaction.event_time, Interaction.id)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    writer: pq.ParquetWriter | None = None
    with store.engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(stmt)
        first = True
        while chunk := result.fetchmany(CHUNK):
            frame = pd.DataFrame(chunk, columns=REES46_COLUMNS)
            frame["event_time"] = pd.to_datetime(frame.event_time, utc=True, format="mixed")
            total += len(frame)
            if out.suffix == ".csv":
                frame.to_csv(out, mode="w" if first else "a", header=first, index=False)
            else:
                table = pa.Table.from_pandas(frame, schema=EXPORT_SCHEMA, preserve_index=False)
                writer = writer or pq.ParquetWriter(out, EXPORT_SCHEMA)
                writer.write_table(table)
            first = False
    if out.suffix != ".csv":
        if writer is None:
            pq.write_table(EXPORT_SCHEMA.empty_table(), out)
        else:
            writer.close()
    elif first:
        pd.DataFrame(columns=REES46_COLUMNS).to_csv(out, index=False)
    log.info("exported %d interactions to %s", total, out)
    return total


def seed_from_events(database_url: str, events: Path, schema: str | None = None) -> SeedResult:
    """Create the tables if needed and load REES46 events (a file or a directory of them) into the store."""
    store = Store(database_url, schema=schema)
    try:
        store.init_db()
        return seed(store, Path(events))
    finally:
        store.dispose()
