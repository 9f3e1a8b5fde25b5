"""SQLAlchemy 2 store of customers, products and interactions (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.sql.dml import Insert
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from contracts import EVENT_TYPES

log = logging.getLogger(__name__)

# SQLite: the write path copies the WAL into the database file this often, outside the write lock
# (Store._checkpoint_if_due); SQLite's own checkpoint, inside a commit, is the backstop past this many pages.
CHECKPOINT_EVERY_S = 2.0
WAL_AUTOCHECKPOINT_PAGES = 20_000
# SQLite only autoincrements a column declared exactly INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator):
    """A timestamp stored as UTC on every backend and read back aware, in UTC.

    PostgreSQL's timestamptz keeps the instant, but SQLite has no zone type: SQLAlchemy writes the
    wall-clock digits and drops the offset, so 12:00+02:00 came back as 12:00Z. Binding converts to
    UTC first (naive values are UTC by convention), so both backends hold the same instant.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        utc = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Product(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(String(300))
    category_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    category_code: Mapped[str | None] = mapped_column(String(200))
    brand: Mapped[str | None] = mapped_column(String(200))
    price: Mapped[float] = mapped_column(Float, default=0.0)  # in the catalogue's currency
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    __table_args__ = (CheckConstraint("price >= 0", name="ck_products_price_nonneg"),)


class Interaction(Base):
    __tablename__ = "interactions"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("customers.id", ondelete="CASCADE"))
    product_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("products.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(20))
    event_time: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    session: Mapped[str | None] = mapped_column(String(100))
    # Attribution to the recommendation it came from (api.experiments): the impression and the item's
    # 0-based position in it. Added to existing databases by Store.init_db (ATTRIBUTION_COLUMNS).
    recommendation_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("impressions.id", ondelete="SET NULL"), index=True)
    position: Mapped[int | None] = mapped_column(Integer)
    __table_args__ = (
        CheckConstraint(
            f"event_type IN ({','.join(repr(t) for t in EVENT_TYPES)})", name="ck_interactions_event_type"
        ),
        # Recommendations read a customer's history; /products/<id>/similar a product's sessions and customers.
        Index("ix_interactions_customer_event", "customer_id", "event_type", "product_id"),
        Index("ix_interactions_product_event", "product_id", "event_type"),
        Index("ix_interactions_session_product", "session", "product_id"),
    )


class Experiment(Base):
    """An online experiment (api.experiments): arms are serving-bundle versions, shares of traffic per arm
    plus a holdout, guardrails of the decision (registry.experiments.Guardrails), and its state."""

    __tablename__ = "experiments"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="running", index=True)  # running, promoted, rolled_back, stopped
    arms: Mapped[str] = mapped_column(Text)  # JSON {arm: bundle version}
    shares: Mapped[str] = mapped_column(Text)  # JSON {arm: share of all traffic}
    holdout: Mapped[float] = mapped_column(Float, default=0.0)  # share served the champion, outside the test
    control: Mapped[str] = mapped_column(String(40))  # the arm serving the champion
    guardrails: Mapped[str] = mapped_column(Text, default="{}")  # JSON registry.experiments.Guardrails
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    decision: Mapped[str | None] = mapped_column(Text)  # JSON of the last evaluation (running p-values too)


class Impression(Base):
    """One recommendation response: its id is the response's `recommendation_id`. The items are kept as
    comma-separated product ids in one column, not a row per item: one small insert per response."""

    __tablename__ = "impressions"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    experiment_id: Mapped[str | None] = mapped_column(String(64))
    arm: Mapped[str] = mapped_column(String(40))
    customer_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    items: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (Index("ix_impressions_experiment_arm", "experiment_id", "arm"),)


# Columns added to tables after their first release: init_db adds them to databases created before.
ATTRIBUTION_COLUMNS = {"interactions": ("recommendation_id", "position")}


class ApiKey(Base):
    """Keys created by `python -m api create-key`; only the peppered hash is stored."""

    __tablename__ = "api_keys"
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class IdempotencyRecord(Base):
    """The first answer to a POST sent with an Idempotency-Key, replayed to retries of the same request.

    Written in the transaction of the write it answers, so a row exists exactly when the write committed.
    """

    __tablename__ = "idempotency_keys"
    scope: Mapped[str] = mapped_column(String(64), primary_key=True)  # the caller (api.idempotency.scope)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of method, path and the validated body
    status: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)  # the JSON answer, as first sent
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)


RESOURCES: dict[str, type[Base]] = {"customers": Customer, "products": Product, "interactions": Interaction}


class _PendingInsert:
    """One row waiting for a group commit; `event` is set when it is written (or failed), or when its
    thread is to lead the next group."""

    __slots__ = ("stmt", "params", "event", "lead", "new_id", "error")

    def __init__(self, stmt: Insert, params: dict[str, Any]) -> None:
        self.stmt = stmt
        self.params = params
        self.event = threading.Event()
        self.lead = False
        self.new_id: int | None = None
        self.error: BaseException | None = None


def normalise_url(url: str) -> str:
    """`postgresql://` (and Heroku-style `postgres://`) mean the psycopg2 driver this project depends on;
    SQLAlchemy 2 would pick psycopg 3 for a bare `postgresql://`, which is not installed."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


_SCHEMA_LOCK_KEY = 0x7265637379730001  # pg_advisory_xact_lock key of init_db ("recsys" + 1)


class Store:
    """Owns the engine and hands out sessions; `schema` puts all tables in one PostgreSQL schema."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        url = normalise_url(url)
        self.url = url
        self.schema = schema
        # A file database has no connection to lose, so only servers get a ping per checkout.
        engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"), future=True)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        if schema:
            engine = engine.execution_options(schema_translate_map={None: schema})
        self.engine: Engine = engine
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
        database = engine.url.database
        self._write_lock_path = (f"{database}.write-lock" if engine.dialect.name == "sqlite" and database
                                 and database != ":memory:" else None)
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._lock_pid = 0
        self._pending: list[_PendingInsert] = []  # rows queued for the next group commit
        self._leading = False  # whether a thread is committing a group right now
        self._pending_lock = threading.Lock()
        self._next_checkpoint = 0.0

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def init_db(self) -> None:
        """Create the schema (PostgreSQL) and all tables if missing; safe to call repeatedly, and from
        several processes at once: gunicorn's workers all call it on a fresh database. Creators take
        turns (SQLite: the write lock; PostgreSQL: a transaction-scoped advisory lock), because
        create_all's check-then-create is not atomic: a second creator could fail on any table the
        first one is still creating."""
        for attempt in (1, 2):
            try:
                with self.write() as conn:
                    if self.dialect == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                    if self.schema:
                        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                    Base.metadata.create_all(conn)
                    _add_missing_columns(conn, self.schema)
                break
            except (OperationalError, ProgrammingError, IntegrityError) as exc:
                # Several gunicorn workers start at once; the loser of a CREATE race retries once.
                if attempt == 2:
                    raise
                log.info("concurrent schema creation (%s); retrying", exc.orig)
        log.info("store initialised at %s (schema=%s)", self.engine.url.render_as_string(), self.schema)

    def drop_all(self) -> None:
        with self.engine.begin() as conn:
            Base.metadata.drop_all(conn)
            if self.schema:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction on a Core connection; on SQLite, writers of all processes take turns first.

        SQLite admits one writer; a second one gets SQLITE_BUSY and its busy handler sleeps 1, 2, 5,
        10... ms before retrying, which under concurrent inserts from several gunicorn workers costs
        far more than the insert. A blocking file lock wakes the next writer as soon as the lock is free.
        """
        if self._write_lock_path is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._thread_lock:
            if self._lock_fd is None or self._lock_pid != os.getpid():  # a forked worker opens its own
                self._lock_fd = os.open(self._write_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                self._lock_pid = os.getpid()
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                with self.engine.begin() as conn:
                    yield conn
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def insert_one(self, stmt: Insert, params: dict[str, Any]) -> int:
        """INSERT one row, commit, and return its primary key; rows that threads of this process insert
        at the same time share one transaction (group commit).

        Every row is committed before this returns, so a reader sees it at once. A commit and, on
        SQLite, the turn at the write lock cost more than the insert itself; under concurrent writes
        the thread whose row arrives while no group is being written commits every row queued so far,
        then hands the lead to the first row queued after them. A row the database refuses (a missing
        customer, say) raises its error in its own thread only: its group is retried row by row.
        """
        pending = _PendingInsert(stmt, params)
        with self._pending_lock:
            self._pending.append(pending)
            follower = self._leading
            self._leading = True
        if follower:
            pending.event.wait()
        if not follower or pending.lead:
            with self._pending_lock:
                group, self._pending = self._pending, []
            try:
                self._commit_group(group)
            finally:
                with self._pending_lock:
                    if self._pending:
                        self._pending[0].lead = True
                        self._pending[0].event.set()
                    else:
                        self._leading = False
            self._checkpoint_if_due()
        if pending.error is not None:
            raise pending.error
        assert pending.new_id is not None
        return pending.new_id

    def _commit_group(self, group: list[_PendingInsert]) -> None:
        """Write `group` in one transaction; wakes each row's thread whatever happens."""
        try:
            with self.write() as conn:
                for item in group:
                    item.new_id = conn.execute(item.stmt, item.params).inserted_primary_key[0]
        except DBAPIError as exc:
            if len(group) == 1:
                group[0].error = exc
            else:  # find the refused row(s): each alone, so the others still get written
                for item in group:
                    self._commit_group([item])
        except BaseException as exc:  # any other failure fails the whole group, each in its own thread
            for item in group:
                item.error = exc
        finally:
            for item in group:
                if item.error is not None:
                    item.new_id = None
                item.event.set()

    def _checkpoint_if_due(self) -> None:
        """On SQLite, copy the WAL into the database file every CHECKPOINT_EVERY_S, outside the write lock.

        SQLite's automatic checkpoint runs inside the commit that crosses its threshold (1,000 pages by
        default, a fraction of a second of inserts here), so every writer of every worker waits for it
        and its fsync. A PASSIVE checkpoint waits for no reader or writer and blocks none.
        """
        if self._write_lock_path is None:
            return
        now = time.monotonic()
        with self._pending_lock:
            if now < self._next_checkpoint:
                return
            self._next_checkpoint = now + CHECKPOINT_EVERY_S
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except OperationalError as exc:  # another connection checkpointing: the next turn catches up
            log.debug("WAL checkpoint skipped: %s", exc.orig)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on any exception."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception as exc:  # any driver error means "unreachable" for /health
            log.warning("database ping failed: %s", exc)
            return False

    def dispose(self) -> None:
        self.engine.dispose()
        if self._lock_fd is not None and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
            self._lock_fd = None


def _add_missing_columns(conn: Connection, schema: str | None) -> None:
    """ALTER TABLE ... ADD COLUMN for the ATTRIBUTION_COLUMNS a database created before them lacks
    (create_all makes missing tables only). Nullable columns: old rows read as "not attributed"."""
    from sqlalchemy import inspect
    from sqlalchemy.schema import CreateColumn

    inspector = inspect(conn)
    for table_name, names in ATTRIBUTION_COLUMNS.items():
        table = Base.metadata.tables[table_name]
        have = {c["name"] for c in inspector.get_columns(table_name, schema=schema)}
        qualified = f'"{schema}".{table_name}' if schema else table_name
        for name in names:
            if name in have:
                continue
            column_sql = CreateColumn(table.c[name]).compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {qualified} ADD COLUMN {column_sql}"))
            log.info("added column %s.%s", table_name, name)
        if "recommendation_id" in names and "recommendation_id" not in have:
            conn.execute(text(f"CREATE INDEX IF NOT EXISTS ix_{table_name}_recommendation_id "
                              f"ON {qualified} (recommendation_id)"))


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL still never corrupts the database; a power cut may lose the last commits,
    # in exchange for no fsync per commit (the write path's main cost).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    cursor.close()
