"""Flask REST API over the recommender: app factory binding the store, auth, rate limits and blueprints."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask, request
from flask_limiter import Limiter
from sqlalchemy import select
from sqlalchemy.engine import make_url
from werkzeug.middleware.proxy_fix import ProxyFix

from api import (auth, customers, errors, experiments, health, interactions, openapi, products, queries, ratelimit,
                 resources)
from api.idempotency import Idempotency
from api.store import Interaction, Store, normalise_url
from contracts import RECOMMENDER_DIR, EventWeights
from serving.catalogue import CacheConfig, CatalogueCache, ProductFilter
from serving.errors import BundleError
from serving.request_path import History, Request, RequestRecommender, ServedRecommender

log = logging.getLogger(__name__)

__all__ = ["create_app", "default_config", "warm_up", "RankerSlot", "ServedRecommender"]


def default_config() -> dict[str, Any]:
    """The app's configuration from `settings.Settings.from_env()` (the only place env vars are read)."""
    from settings import Settings

    st = Settings.from_env()
    return {
        "DATABASE_URL": st.database_url,
        "DATABASE_SCHEMA": None,  # PostgreSQL schema holding the tables; None = the default one
        "RATELIMIT_STORAGE_URI": st.ratelimit_storage_uri,
        # Flask-Limiter's own name for limits shared by all routes; per caller (api.auth.rate_limit_key).
        "RATELIMIT_APPLICATION": st.ratelimit_default,
        "RATELIMIT_KEY_PREFIX": "recsys-api",
        "RATELIMIT_ENABLED": True,
        "API_KEYS": st.api_keys,
        "API_KEY_PEPPER": st.api_key_pepper,
        "TRITON_URL": st.triton_http_url,
        "SERVING_DIR": str(st.serving_dir),
        "EXCLUDE": st.exclude,  # default exclusion of recommendations (the evaluation's too)
        # Interest per event type (contracts.EventWeights): popularity weighs events as training does.
        "EVENT_WEIGHTS": st.event_weights,
        "BULK_LIMIT": 1000,
        # Event times may lie this far past the server's clock (clients' clocks drift), no further.
        "EVENT_TIME_SKEW_S": st.event_time_skew_s,
        "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,
        "INIT_DB": True,
        # Per-worker caches of the catalogue (seconds); 0 re-reads the database on every request.
        "CATALOGUE_TTL_S": CacheConfig.products_ttl_s,
        "INTERACTIONS_TTL_S": CacheConfig.interactions_ttl_s,
        "CATALOGUE_REBUILD_S": CacheConfig.rebuild_s,
        "API_KEY_CACHE_TTL_S": auth.KEY_CACHE_TTL_S,
        # Requests without a valid key allowed per address before it gets 429s (limits' notation).
        "AUTH_FAILURE_LIMIT": st.auth_failure_limit,
        # How long a POST's Idempotency-Key is remembered (its answer replayed to retries).
        "IDEMPOTENCY_TTL_S": st.idempotency_ttl_s,
        # Proxies in front (nginx) whose X-Forwarded-For is trusted for the client's address; 0 = none, so
        # the header cannot be forged to pick another address's rate-limit and auth-failure buckets.
        "TRUSTED_PROXIES": st.api_trusted_proxies,
        # /health answers from a result this many seconds old at most (per worker).
        "HEALTH_CACHE_S": st.health_cache_s,
        # The running experiment is re-read at most this often (per worker): a started or ended experiment
        # reaches every worker within it.
        "EXPERIMENT_TTL_S": st.experiment_ttl_s,
        # "all": every recommendation response is logged as an impression; "experiment": only while one runs.
        "IMPRESSIONS": st.impressions,
        # How often (seconds, per worker at most) the ranker looks for a new deployment at serving/current.
        "DEPLOY_CHECK_S": st.api_deploy_check_s,
        # Where the sequential source's model runs: "auto", "triton" or "worker" (RECSYS_SEQUENTIAL_ON).
        "SEQUENTIAL_ON": st.sequential_on,
    }


class RankerSlot:
    """Holds the ranker: the one given, or the default Triton one built from the serving bundle at
    `serving_dir/current`, and built again when a new deployment moves that link.

    A deploy swaps `current` atomically (stages.deploy); every `check_s` seconds at most, one request
    of a worker compares the link's target and its identity (path, inode, mtime: a few stat calls)
    with what the ranker was built from, and rebuilds on a change, so a deployment made after the
    API started is served without restarting it. Other requests meanwhile keep the ranker they had.
    """

    def __init__(self, ranker: ServedRecommender | None, serving_dir: Path, triton_url: str,
                 check_s: float = 5.0, sequential_on: str = "auto") -> None:
        self._ranker = ranker
        self._fixed = ranker is not None  # a ranker handed in (tests, embedding) is never replaced
        self._resolved = self._fixed
        self._serving_dir = serving_dir
        self._triton_url = triton_url
        self._check_s = check_s
        self._sequential_on = sequential_on  # serving.recommender.sequential_runs_on
        self._checked_at = -float("inf")
        self._stamp: tuple[str, int, int] | None = None
        self._lock = threading.Lock()

    def deployment_stamp(self) -> tuple[str, int, int] | None:
        """What `current` points at now (resolved path, inode, mtime); None when nothing is deployed."""
        bundle = self._serving_dir / "current"
        try:
            target = os.path.realpath(bundle)
            info = os.stat(target)
        except OSError:
            return None
        return target, info.st_ino, info.st_mtime_ns

    def get(self) -> ServedRecommender | None:
        if self._fixed:
            return self._ranker
        due = time.monotonic() - self._checked_at >= self._check_s
        if not self._resolved or due:
            # The first build waits for the lock; later checks are skipped by requests that find one under way.
            if self._lock.acquire(blocking=not self._resolved):
                try:
                    if not self._resolved or time.monotonic() - self._checked_at >= self._check_s:
                        self._refresh()
                finally:
                    self._lock.release()
        return self._ranker

    def _refresh(self) -> None:
        stamp = self.deployment_stamp()
        self._checked_at = time.monotonic()
        if self._resolved and stamp == self._stamp:
            return
        if self._resolved:
            log.info("new deployment at %s (%s); building its ranker", self._serving_dir / "current",
                     stamp[0] if stamp else "none")
        self._ranker = self._build_default()
        self._resolved = True
        # A bundle that failed to build is tried again at the next check, not remembered as served.
        self._stamp = stamp if (self._ranker is not None or stamp is None) else None

    def _build_default(self) -> ServedRecommender | None:
        bundle = self._serving_dir / "current"
        if not bundle.exists():
            log.info("no serving bundle at %s; recommendations use popular items", bundle)
            return None
        # Pinned to the bundle's Triton version: while an experiment runs the server holds a second, newer
        # version (the treatment), which an unpinned client would be served by default.
        return self._build(bundle, pin_version=True)

    def _build(self, bundle: Path, pin_version: bool) -> ServedRecommender | None:
        try:
            if not (bundle / RECOMMENDER_DIR).is_dir():
                raise BundleError(f"{bundle} has no {RECOMMENDER_DIR}/ (the served recommender every nightly run "
                                  "registers); redeploy a version the nightly run registered")
            # Imported here: torch and the Triton client load only once a bundle is deployed.
            from serving.recommender import TritonRecommender

            return TritonRecommender.from_bundle(bundle, self._triton_url, pin_version=pin_version,
                                                 sequential_on=self._sequential_on)  # type: ignore[arg-type]
        except Exception as exc:  # a broken bundle must not take the API down; popular items still work
            log.error("could not build the Triton ranker from %s: %s", bundle, exc)
            return None

    def for_version(self, version: str) -> ServedRecommender | None:
        """The ranker of bundle `<serving_dir>/<version>` (an experiment's arm), on the Triton version that
        bundle was built as (both arms are loaded in the one server); the deployed ranker when it is the
        bundle `current` points at."""
        bundle = self._serving_dir / version
        current = self._serving_dir / "current"
        if current.exists() and current.resolve() == bundle.resolve():
            return self.get()
        if not (bundle / "deployment.json").is_file():
            log.error("experiment arm bundle %s does not exist; the arm serves the default ranker", bundle)
            return None
        return self._build(bundle, pin_version=True)


def create_app(config: dict[str, Any] | None = None, ranker: ServedRecommender | None = None,
               arm_rankers: experiments.ArmRankerFactory | None = None) -> Flask:
    """Build the app; `config` overrides keys of `default_config()`, `ranker` replaces the Triton ranker,
    `arm_rankers` (bundle version -> ranker) replaces how experiment arms build theirs."""
    app = Flask(__name__)
    app.config.update(default_config())
    app.config.update(config or {})
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if int(app.config.get("TRUSTED_PROXIES", 0)) > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=int(app.config["TRUSTED_PROXIES"]))  # type: ignore[method-assign]

    url = normalise_url(app.config["DATABASE_URL"])
    _ensure_sqlite_dir(url)
    store = Store(url, schema=app.config.get("DATABASE_SCHEMA"))
    if app.config.get("INIT_DB", True):
        store.init_db()
    app.extensions["recsys_store"] = store
    slot = RankerSlot(ranker, Path(app.config.get("SERVING_DIR", "var/serving")), app.config.get("TRITON_URL", ""),
                      float(app.config.get("DEPLOY_CHECK_S", 5.0)), str(app.config.get("SEQUENTIAL_ON", "auto")))
    app.extensions["recsys_ranker"] = slot
    app.extensions["recsys_experiments"] = experiments.Experiments(
        store, float(app.config.get("EXPERIMENT_TTL_S", 5.0)), arm_rankers or slot.for_version,
        log_all=app.config.get("IMPRESSIONS", "all") != "experiment")
    cache = CatalogueCache(queries.StoreCatalogue(store), CacheConfig(
        interactions_ttl_s=float(app.config["INTERACTIONS_TTL_S"]),
        products_ttl_s=float(app.config["CATALOGUE_TTL_S"]),
        rebuild_s=float(app.config["CATALOGUE_REBUILD_S"]),
        event_weights=EventWeights.parse(app.config["EVENT_WEIGHTS"]).as_dict(),
    ))
    app.extensions["recsys_catalogue"] = cache
    app.extensions["recsys_recommender"] = RequestRecommender(cache)
    app.extensions["recsys_health"] = health.HealthCheck(float(app.config["HEALTH_CACHE_S"]))
    app.extensions["recsys_idempotency"] = Idempotency(store, float(app.config["IDEMPOTENCY_TTL_S"]))

    # Registered before the limiter's own hook so that it runs after it (Flask runs them in reverse).
    app.after_request(ratelimit.retry_after_only_when_refused)
    # One budget per caller across all endpoints (application limits), not one per endpoint: spreading
    # requests over routes must not multiply the allowance.
    limiter = Limiter(
        key_func=auth.rate_limit_key,
        application_limits=[app.config["RATELIMIT_APPLICATION"]] if app.config.get("RATELIMIT_APPLICATION") else [],
        application_limits_exempt_when=lambda: request.endpoint in auth.PUBLIC_ENDPOINTS,
        storage_uri=ratelimit.storage_uri(app.config["RATELIMIT_STORAGE_URI"]),
        key_prefix=app.config.get("RATELIMIT_KEY_PREFIX", "recsys-api"),
        headers_enabled=True,
        enabled=bool(app.config.get("RATELIMIT_ENABLED", True)),
    )
    limiter.init_app(app)
    app.extensions["recsys_limiter"] = limiter
    auth.init_app(app, auth.KeyRing.parse(app.config.get("API_KEYS", ""), app.config.get("API_KEY_PEPPER", "")),
                  float(app.config["API_KEY_CACHE_TTL_S"]))
    app.before_request(resources.check_path_ids)
    errors.register_error_handlers(app)
    app.url_map.converters["id"] = resources.IdConverter
    for module in (health, openapi, customers, products, interactions, experiments):
        app.register_blueprint(module.bp)
    return app


def warm_up(app: Flask) -> None:
    """Do a worker's first-request work before it takes requests (gunicorn's post_worker_init calls this):
    load the catalogue cache, build the ranker and let it encode the catalogue, rank once for the customer
    of the latest interaction. The first recommendation of a cold worker took 1.7-3 s. Never raises: a
    worker that cannot warm up still serves, and pays on its first request."""
    start = time.perf_counter()
    try:
        recommender: RequestRecommender = app.extensions["recsys_recommender"]
        ranker = app.extensions["recsys_ranker"].get()
        recommender.popular(1)
        with app.extensions["recsys_store"].engine.connect() as conn:
            customer = conn.execute(select(Interaction.customer_id).order_by(Interaction.id.desc()).limit(1)).scalar()
        if customer is not None:
            history = History.of(queries.history(app.extensions["recsys_store"], int(customer)))
            recommender.recommend(Request(int(customer), 10, ProductFilter(), exclude="none"), history, ranker)
    except Exception:  # noqa: BLE001 - warming is an optimisation, never a reason not to serve
        log.exception("warm-up failed; the first request of this worker does the work instead")
        return
    log.info("worker warmed up in %.2f s (ranker: %s)", time.perf_counter() - start,
             type(ranker).__name__ if ranker is not None else "none")


def _ensure_sqlite_dir(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
