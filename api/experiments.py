"""Online experiments in the API: assignment of customers to arms, impressions, live figures, read routes.

An experiment is a row of the `experiments` table (api.store.Experiment), not a file: every gunicorn
worker and the `evaluate_experiment` DAG see the same state, the figures are one join between the
impressions and the attributed interactions in the same database, and ending an experiment is one
UPDATE that all workers pick up within EXPERIMENT_TTL_S.

Request path cost: the running experiment is cached per worker (re-read at most every TTL seconds);
assignment is one BLAKE2b hash of (experiment id, customer id); the arm's ranker is built once per
bundle version. Every response logs one impression row (id = the response's `recommendation_id`)
through the store's group-committed insert, the same path as POST /interactions.

Created and ended with `python -m cli experiment start|stop|list` (an admin operation that also loads
the arms' bundles into Triton), decided by registry.experiments through stages/experiments.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import case, func, insert, select, update

from api.errors import NotFound
from api.schemas import EXPERIMENT_ID_PATTERN, ExperimentList, ExperimentOut
from api.store import Experiment, Impression, Interaction, Product, Store, utcnow

log = logging.getLogger(__name__)

BUCKETS = 10_000  # assignment resolution: shares are rounded to 1/BUCKETS of traffic
HOLDOUT = "holdout"  # arm name of customers outside the test, served the champion
DEFAULT_ARM = "default"  # arm of responses while no experiment runs
STATES = ("running", "promoted", "rolled_back", "stopped")
ID_RE = re.compile(EXPERIMENT_ID_PATTERN)
INSERT_IMPRESSION = insert(Impression.__table__)

bp = Blueprint("experiments", __name__, url_prefix="/experiments")


class ExperimentError(ValueError):
    """An experiment definition or state change that cannot be accepted; the message says why."""


def bucket(experiment_id: str, customer_id: int) -> int:
    """Stable bucket in [0, BUCKETS) of a customer in an experiment: the same in every worker, process
    and release (not Python's salted hash), and independent between experiments."""
    digest = hashlib.blake2b(f"{experiment_id}:{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class Active:
    """The running experiment as the request path needs it."""

    id: str
    arms: dict[str, str]  # arm -> bundle version
    bounds: tuple[tuple[int, str], ...]  # (exclusive upper bucket, arm), ascending; holdout first

    @classmethod
    def of(cls, row: Experiment) -> "Active":
        shares: dict[str, float] = json.loads(row.shares)
        bounds: list[tuple[int, str]] = []
        edge = 0.0
        for arm, share in [(HOLDOUT, float(row.holdout))] + sorted(shares.items()):
            edge += share
            if share > 0:
                bounds.append((round(edge * BUCKETS), arm))
        return cls(row.id, json.loads(row.arms), tuple(bounds))

    def assign(self, customer_id: int) -> str:
        b = bucket(self.id, customer_id)
        for upper, arm in self.bounds:
            if b < upper:
                return arm
        return self.bounds[-1][1]  # rounding left the last bucket(s) over: the last arm takes them


@dataclass(frozen=True)
class Assignment:
    experiment_id: str | None
    arm: str
    version: str | None  # bundle version the arm serves; None: the deployed default (current)


NO_EXPERIMENT = Assignment(None, DEFAULT_ARM, None)
ArmRankerFactory = Callable[[str], Any]  # bundle version -> ServedRecommender (or None when it cannot be built)


class Experiments:
    """Per-worker view of the running experiment and the rankers of its arms."""

    def __init__(self, store: Store, ttl_s: float, ranker_factory: ArmRankerFactory | None,
                 log_all: bool = True) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.ranker_factory = ranker_factory
        self.log_all = log_all  # False: impressions only while an experiment runs (RECSYS_IMPRESSIONS=experiment)
        self._active: Active | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self._rankers: dict[str, Any] = {}

    def active(self) -> Active | None:
        now = time.monotonic()
        if now >= self._expires:
            with self._lock:
                if now >= self._expires:
                    row = running(self.store)
                    self._active = Active.of(row) if row is not None else None
                    self._expires = now + self.ttl_s
        return self._active

    def invalidate(self) -> None:
        self._expires = 0.0

    def assign(self, customer_id: int) -> Assignment:
        active = self.active()
        if active is None:
            return NO_EXPERIMENT
        arm = active.assign(customer_id)
        return Assignment(active.id, arm, active.arms.get(arm))

    def ranker(self, assignment: Assignment, default: Any) -> Any:
        """The arm's ranker (built once per bundle version); `default` for the holdout, for no experiment,
        and for an arm that serves the deployed bundle or whose ranker cannot be built (logged)."""
        version = assignment.version
        if version is None or self.ranker_factory is None:
            return default
        if version not in self._rankers:
            with self._lock:
                if version not in self._rankers:
                    try:
                        self._rankers[version] = self.ranker_factory(version)
                    except Exception:  # a broken arm serves the champion rather than failing requests
                        log.exception("could not build the ranker of bundle %s; its arm serves the default", version)
                        self._rankers[version] = None
        built = self._rankers[version]
        return default if built is None else built

    def log_impression(self, assignment: Assignment, customer_id: int, items: list[int]) -> int | None:
        """Insert the response's impression; its id, or None when the database refused (logged) or when
        impressions are logged during experiments only and none runs."""
        if not self.log_all and assignment.experiment_id is None:
            return None
        row = {"experiment_id": assignment.experiment_id, "arm": assignment.arm, "customer_id": customer_id,
               "created_at": utcnow(), "items": ",".join(map(str, items))}
        try:
            return self.store.insert_one(INSERT_IMPRESSION, row)
        except Exception:  # the recommendation itself is good; only its attribution is lost
            log.exception("could not log the impression of customer %s", customer_id)
            return None


# --------------------------------------------------------------------------- definitions and state
def validate_definition(experiment_id: str, arms: dict[str, str], shares: dict[str, float], holdout: float,
                        control: str) -> None:
    if not ID_RE.match(experiment_id):
        raise ExperimentError(f"experiment id {experiment_id!r} must match {EXPERIMENT_ID_PATTERN}")
    if len(arms) != 2:
        raise ExperimentError(f"an experiment has two arms (control and treatment), got {sorted(arms)}")
    bad = [a for a in arms if a in (HOLDOUT, DEFAULT_ARM) or not ID_RE.match(a) or len(a) > 40]
    if bad:
        raise ExperimentError(f"arm names {bad} are reserved or not of the form {EXPERIMENT_ID_PATTERN}")
    if set(shares) != set(arms):
        raise ExperimentError(f"shares name {sorted(shares)}, arms are {sorted(arms)}")
    if control not in arms:
        raise ExperimentError(f"control {control!r} is not one of the arms {sorted(arms)}")
    if any(not 0 < s <= 1 for s in shares.values()) or not 0 <= holdout < 1:
        raise ExperimentError(f"shares must lie in (0, 1] and the holdout in [0, 1): {shares}, {holdout}")
    if abs(sum(shares.values()) + holdout - 1.0) > 1e-6:
        raise ExperimentError(f"arm shares {shares} and holdout {holdout} must add up to 1")


def create_experiment(store: Store, experiment_id: str, arms: dict[str, str], shares: dict[str, float],
                      holdout: float, control: str, guardrails: dict[str, Any],
                      started_at: datetime | None = None) -> None:
    """Start an experiment; only one runs at a time (ExperimentError otherwise, or for a bad definition)."""
    validate_definition(experiment_id, arms, shares, holdout, control)
    with store.session() as session:
        running = session.scalar(select(Experiment.id).where(Experiment.state == "running"))
        if running is not None:
            raise ExperimentError(f"experiment {running} is running; stop it first")
        if session.get(Experiment, experiment_id) is not None:
            raise ExperimentError(f"experiment {experiment_id} exists already; ids are not reused")
        session.add(Experiment(id=experiment_id, state="running", arms=json.dumps(arms), shares=json.dumps(shares),
                               holdout=holdout, control=control, guardrails=json.dumps(guardrails),
                               started_at=started_at or utcnow()))


def end_experiment(store: Store, experiment_id: str, state: str, decision: dict[str, Any] | None = None) -> None:
    """Set a running experiment's final state (promoted, rolled_back, stopped); all traffic then goes to
    the deployed default within EXPERIMENT_TTL_S."""
    if state not in STATES[1:]:
        raise ExperimentError(f"final state must be one of {STATES[1:]}, got {state!r}")
    values: dict[str, Any] = {"state": state, "ended_at": utcnow()}
    if decision is not None:
        values["decision"] = json.dumps(decision, default=str)
    with store.write() as conn:
        done = conn.execute(update(Experiment).where(Experiment.id == experiment_id, Experiment.state == "running")
                            .values(**values)).rowcount
    if not done:
        raise ExperimentError(f"experiment {experiment_id} is not running")


def record_decision(store: Store, experiment_id: str, decision: dict[str, Any]) -> None:
    """Keep the last evaluation (with its running p-values) on a still-running experiment."""
    with store.write() as conn:
        conn.execute(update(Experiment).where(Experiment.id == experiment_id)
                     .values(decision=json.dumps(decision, default=str)))


def load(store: Store, experiment_id: str) -> Experiment | None:
    with store.session() as session:
        return session.get(Experiment, experiment_id)


def running(store: Store) -> Experiment | None:
    with store.session() as session:
        return session.scalar(select(Experiment).where(Experiment.state == "running")
                              .order_by(Experiment.started_at.desc()).limit(1))


# --------------------------------------------------------------------------- figures
def arm_counts(store: Store, experiment_id: str) -> dict[str, dict[str, float]]:
    """Per arm: impressions, and impressions with at least one attributed view (clicks), cart, purchase,
    plus the attributed purchases' revenue (product price at read time). Two grouped queries."""
    counts: dict[str, dict[str, float]] = {}
    with store.engine.connect() as conn:
        for arm, n in conn.execute(select(Impression.arm, func.count()).where(Impression.experiment_id == experiment_id)
                                   .group_by(Impression.arm)):
            counts[arm] = {"impressions": int(n), "clicks": 0, "carts": 0, "purchases": 0, "revenue": 0.0}
        revenue = func.sum(case((Interaction.event_type == "purchase", Product.price), else_=0.0))
        stmt = (select(Impression.arm, Interaction.event_type, func.count(func.distinct(Impression.id)), revenue)
                .join(Interaction, Interaction.recommendation_id == Impression.id)
                .join(Product, Product.id == Interaction.product_id)
                .where(Impression.experiment_id == experiment_id)
                .group_by(Impression.arm, Interaction.event_type))
        names = {"view": "clicks", "cart": "carts", "purchase": "purchases"}
        for arm, event_type, n, money in conn.execute(stmt):
            row = counts.setdefault(arm, {"impressions": 0, "clicks": 0, "carts": 0, "purchases": 0, "revenue": 0.0})
            if event_type in names:
                row[names[event_type]] = int(n)
            if event_type == "purchase":
                row["revenue"] = float(money or 0.0)
    return counts


def _figures(c: dict[str, float]) -> dict[str, float]:
    n = c.get("impressions", 0)
    rate = (lambda x: x / n) if n else (lambda x: 0.0)
    return {"impressions": int(n), "ctr": rate(c.get("clicks", 0)), "cart_rate": rate(c.get("carts", 0)),
            "conversion_rate": rate(c.get("purchases", 0)), "revenue_per_impression": rate(c.get("revenue", 0.0))}


def describe(store: Store, row: Experiment) -> dict[str, Any]:
    counts = arm_counts(store, row.id)
    arms: dict[str, str] = json.loads(row.arms)
    shares: dict[str, float] = json.loads(row.shares)
    out_arms = {arm: {"version": version, "share": shares[arm], "figures": _figures(counts.get(arm, {}))}
                for arm, version in arms.items()}
    if row.holdout > 0 or HOLDOUT in counts:
        out_arms[HOLDOUT] = {"version": None, "share": row.holdout, "figures": _figures(counts.get(HOLDOUT, {}))}
    return ExperimentOut(
        id=row.id, state=row.state, control=row.control, holdout=row.holdout, arms=out_arms,
        guardrails=json.loads(row.guardrails or "{}"), started_at=row.started_at, ended_at=row.ended_at,
        decision=json.loads(row.decision) if row.decision else None,
    ).model_dump(mode="json")


# --------------------------------------------------------------------------- routes
def _store() -> Store:
    return current_app.extensions["recsys_store"]


@bp.get("")
def list_experiments() -> ResponseReturnValue:
    """Every experiment, newest first, with live figures per arm."""
    with _store().session() as session:
        rows = list(session.scalars(select(Experiment).order_by(Experiment.started_at.desc())))
    return jsonify(ExperimentList(items=[describe(_store(), r) for r in rows]).model_dump(mode="json"))


@bp.get("/<experiment_id>")
def get_experiment(experiment_id: str) -> ResponseReturnValue:
    row = load(_store(), experiment_id) if ID_RE.match(experiment_id) else None
    if row is None:
        raise NotFound(f"experiment {experiment_id} does not exist", field="id")
    return jsonify(describe(_store(), row))
