"""The store on SQLite and PostgreSQL: CRUD through the app, constraints, seeding from events and export."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from api import create_app
from api.__main__ import main as cli_main
from api.seed import REES46_COLUMNS, export_interactions, seed
from api.store import Product, Store
from tests.test_api_support import (PG_URL, PriceRanker, add_catalogue, make_config, pg_available,  # noqa: F401
                                    store_config)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store_client(store_config: dict) -> Iterator[FlaskClient]:
    app = create_app(store_config, ranker=PriceRanker())
    yield app.test_client()
    app.extensions["recsys_store"].dispose()


def test_crud_and_recommendations_behave_the_same_on_each_database(store_client: FlaskClient) -> None:
    add_catalogue(store_client)
    assert store_client.get("/health").json["database"] == "ok"
    assert store_client.get("/interactions").json["total"] == 10
    body = store_client.get("/customers/2/recommendations?k=3").json
    ids = [i["product_id"] for i in body["items"]]
    assert len(set(ids)) == 3 and 3 not in ids and 10 not in ids
    assert [i["product_id"] for i in store_client.get("/products/popular?k=2").json["items"]] == [6, 1]
    assert {i["product_id"] for i in store_client.get("/products/1/similar").json["items"]} == {2, 3, 5, 6}
    # Deleting a customer removes their interactions (ON DELETE CASCADE).
    assert store_client.delete("/customers/3").status_code == 204
    assert store_client.get("/interactions?customer_id=3").json["total"] == 0
    assert store_client.post("/customers", json={"id": 9_000_000_000}).status_code == 201  # BIGINT ids


def test_schema_creation_from_several_processes_at_once_succeeds(store_config: dict) -> None:
    """gunicorn's workers all call init_db on a fresh database: creating the tables must not race
    (a lost check-then-create race once stopped a worker from booting: "table interactions already exists")."""
    start_at = time.time() + 3  # every process imports first, then all create at the same moment
    code = ("import sys, time; from api.store import Store; store = Store(sys.argv[1], schema=sys.argv[2] or None); "
            "time.sleep(max(0.0, float(sys.argv[3]) - time.time())); store.init_db(); store.dispose()")
    args = [store_config["DATABASE_URL"], store_config.get("DATABASE_SCHEMA") or "", str(start_at)]
    procs = [subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(e[-1500:] for e in errors if e)
    store = Store(store_config["DATABASE_URL"], schema=store_config.get("DATABASE_SCHEMA"))
    store.init_db()
    with store.session() as session:
        session.add(Product(id=1, price=1.0))  # the tables are there and usable
    store.dispose()


def test_database_rejects_negative_price_even_past_the_api(store_config: dict) -> None:
    store = Store(store_config["DATABASE_URL"], schema=store_config.get("DATABASE_SCHEMA"))
    store.init_db()
    with pytest.raises(IntegrityError):
        with store.session() as session:
            session.add(Product(id=1, price=-1.0))
    store.dispose()


def _events(n: int, seed_: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed_)
    products = rng.integers(100, 160, n)
    return pd.DataFrame({
        "event_time": pd.Timestamp("2026-11-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 86400 * 3, n), "s"),
        "event_type": rng.choice(["view", "view", "cart", "purchase", "remove_from_cart"], n),
        "product_id": products.astype("int64"),
        "category_id": (products // 10).astype("int64"),
        "category_code": np.where(products % 2 == 0, "electronics.phone", None),
        "brand": np.where(products % 3 == 0, None, "acme"),
        "price": (products % 17).astype("float64") + 0.5,
        "user_id": rng.integers(1, 40, n).astype("int64"),
        "user_session": [f"s{x}" for x in rng.integers(0, 200, n)],
    })


def test_seed_then_export_round_trips_the_events(store_config: dict, tmp_path: Path) -> None:
    events = _events(3000)
    bad = events.iloc[:2].copy()
    bad["event_type"] = "like"  # unknown types are skipped and counted
    src = tmp_path / "events" / "date=2026-11-01"
    src.mkdir(parents=True)
    pd.concat([events, bad]).to_parquet(src / "events.parquet")
    store = Store(store_config["DATABASE_URL"], schema=store_config.get("DATABASE_SCHEMA"))
    store.init_db()
    result = seed(store, tmp_path / "events")
    assert (result.customers, result.products, result.interactions, result.skipped) == (
        events.user_id.nunique(), events.product_id.nunique(), 3000, 2)
    assert seed(store, tmp_path / "events").customers == 0  # existing customers are not duplicated

    out = tmp_path / "export" / "interactions.parquet"
    assert export_interactions(store, out) == 6000
    exported = pd.read_parquet(out)
    assert list(exported.columns) == REES46_COLUMNS
    assert str(exported.event_time.dtype) == "datetime64[us, UTC]"
    original = events.sort_values(["user_session", "product_id", "event_time", "event_type"])
    once = exported.drop_duplicates().sort_values(["user_session", "product_id", "event_time", "event_type"])
    assert len(once) == len(events.drop_duplicates())
    pd.testing.assert_series_equal(once.event_type.reset_index(drop=True),
                                   original.drop_duplicates().event_type.reset_index(drop=True))
    store.dispose()


def test_cli_init_seed_export_and_create_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "cli.db"
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECSYS_DATABASE_URL", f"sqlite:///{db}")
    events = tmp_path / "events.csv"
    _events(200).to_csv(events, index=False)

    def run(*args: str) -> str:
        assert cli_main(list(args)) == 0
        return capsys.readouterr().out.strip()

    assert "initialised" in run("init-db")
    assert "interactions=200" in run("seed", "--events", str(events))
    run("export-interactions", "--out", str(tmp_path / "out.csv"))
    assert len(pd.read_csv(tmp_path / "out.csv")) == 200
    key = run("create-key", "--role", "read")
    assert len(key) >= 32
    assert cli_main(["seed", "--events", str(tmp_path / "missing-dir")]) == 2
    app = create_app({"DATABASE_URL": f"sqlite:///{db}", "API_KEY_PEPPER": "", "API_KEYS": "",
                      "SERVING_DIR": str(tmp_path / "serving")})
    c = app.test_client()
    assert c.get("/customers").status_code == 401
    assert c.get("/customers", headers={"X-API-Key": key}).json["total"] > 0


def test_python_dash_m_api_shows_the_commands() -> None:
    done = subprocess.run([sys.executable, "-m", "api", "--help"], cwd=REPO, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0
    for command in ("serve", "init-db", "seed", "export-interactions", "create-key"):
        assert command in done.stdout


def test_unreachable_database_is_503_not_500(tmp_path: Path) -> None:
    from tests.conftest import free_port

    url = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/test"
    client = create_app(make_config(tmp_path, DATABASE_URL=url, INIT_DB=False)).test_client()
    health = client.get("/health")
    assert health.status_code == 503 and health.json["database"] == "unreachable"
    resp = client.get("/customers")
    assert resp.status_code == 503 and resp.json["error"]["title"] == "Service Unavailable"


def test_seed_from_events_loads_a_store_the_app_then_serves(tmp_path: Path) -> None:
    from api.seed import seed_from_events

    events = _events(500)
    events.to_parquet(tmp_path / "events.parquet")
    url = f"sqlite:///{tmp_path / 'api.db'}"
    result = seed_from_events(url, tmp_path / "events.parquet")
    assert result.interactions == 500
    client = create_app(make_config(tmp_path, DATABASE_URL=url)).test_client()
    buyer = int(events[events.event_type == "purchase"].user_id.iloc[0])
    bought = set(events[(events.user_id == buyer) & (events.event_type == "purchase")].product_id)
    ids = [i["product_id"] for i in client.get(f"/customers/{buyer}/recommendations?k=10").json["items"]]
    assert len(ids) == len(set(ids)) == 10 and not bought & set(ids)


def _queue_inserts_behind_a_held_write_lock(store: Store, rows: list[dict]) -> list[int | BaseException]:
    """Insert `rows` from one thread each while the SQLite write lock is held as another process would
    hold it; release it once every row but the first (which leads and waits for the lock) is queued."""
    import fcntl
    import os
    import threading
    import time

    from sqlalchemy import insert

    from api.store import Interaction

    results: list[int | BaseException] = [0] * len(rows)

    def write(i: int) -> None:
        try:
            results[i] = store.insert_one(insert(Interaction.__table__), rows[i])
        except BaseException as exc:  # collected for the assertions in the main thread
            results[i] = exc

    assert store._write_lock_path is not None
    fd = os.open(store._write_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(rows))]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60  # only guards against a hang; never reached when the code works
        while len(store._pending) < len(rows) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    for thread in threads:
        thread.join()
    return results


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[Store]:
    from api.store import Customer

    store = Store(f"sqlite:///{tmp_path / 'api.db'}")
    store.init_db()
    with store.session() as session:
        session.add_all([Customer(id=1), Product(id=1, price=1.0)])
    yield store
    store.dispose()


def test_concurrent_inserts_share_one_commit_and_all_are_readable(small_store: Store) -> None:
    from sqlalchemy import event, select

    from api.store import Interaction

    commits: list[int] = []
    event.listen(small_store.engine, "commit", lambda conn: commits.append(1))
    rows = [{"customer_id": 1, "product_id": 1, "event_type": "view", "session": f"s{i}"} for i in range(8)]
    ids = _queue_inserts_behind_a_held_write_lock(small_store, rows)
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 8
    assert len(commits) == 2  # the leader's own row, then the seven rows queued behind it together
    with small_store.engine.connect() as conn:
        stored = dict(conn.execute(select(Interaction.id, Interaction.session)).all())
    assert stored == {i: f"s{n}" for n, i in enumerate(ids)}


def test_a_refused_row_in_a_group_fails_alone(small_store: Store) -> None:
    from sqlalchemy import func, select

    from api.store import Interaction

    rows = [{"customer_id": 1, "product_id": 999 if i == 3 else 1, "event_type": "view"} for i in range(6)]
    results = _queue_inserts_behind_a_held_write_lock(small_store, rows)
    assert isinstance(results[3], IntegrityError)
    written = [r for i, r in enumerate(results) if i != 3]
    assert all(isinstance(r, int) for r in written) and len(set(written)) == 5
    with small_store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Interaction)).scalar() == 5


def test_inserts_reach_the_database_file_through_the_scheduled_checkpoint(small_store: Store, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With the checkpoint due, the write path copies the WAL into the main file: a copy of that file
    alone (no -wal beside it) already holds the rows; with it not due, the rows stay in the WAL."""
    import shutil
    import sqlite3

    from sqlalchemy import insert

    import api.store as store_module
    from api.store import Interaction

    def rows_in_main_file() -> int:
        shutil.copyfile(tmp_path / "api.db", tmp_path / "copy.db")
        with sqlite3.connect(tmp_path / "copy.db") as conn:
            return conn.execute("SELECT count(*) FROM interactions").fetchone()[0]

    small_store._checkpoint_if_due()  # the fixture's writes are checkpointed; next one due in 2 s
    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY_S", 3600.0)
    small_store._next_checkpoint = time.monotonic() + 3600
    for i in range(3):
        small_store.insert_one(insert(Interaction.__table__), {"customer_id": 1, "product_id": 1, "event_type": "view"})
    assert rows_in_main_file() == 0  # committed, but only in the WAL so far
    small_store._next_checkpoint = 0.0  # due now
    small_store.insert_one(insert(Interaction.__table__), {"customer_id": 1, "product_id": 1, "event_type": "view"})
    assert rows_in_main_file() == 4
