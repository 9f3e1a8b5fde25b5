"""Flask REST API over the recommender: app factory binding the store, auth, rate limits and blueprints."""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from typing import Any

from flask import Flask, request
from flask_limiter import Limiter
from sqlalchemy.engine import make_url

from api import auth, customers, errors, health, interactions, openapi, products, ratelimit
from api.catalogue import CacheConfig, CatalogueCache
from api.recommend import Ranker, Recommender
from api.store import Store

log = logging.getLogger(__name__)

__all__ = ["create_app", "default_config", "Ranker", "RankerSlot"]


def default_config() -> dict[str, Any]:
    """The app's configuration from `settings.Settings.from_env()` (the only place env vars are read)."""
    from settings import Settings

    st = Settings.from_env()
    return {
        "DATABASE_URL": st.database_url,
        "DATABASE_SCHEMA": None,  # PostgreSQL schema holding the tables; None = the default one
        "RATELIMIT_STORAGE_URI": st.ratelimit_storage_uri,
        "RATELIMIT_DEFAULT": st.ratelimit_default,
        "RATELIMIT_KEY_PREFIX": "recsys-api",
        "RATELIMIT_ENABLED": True,
        "API_KEYS": st.api_keys,
        "API_KEY_PEPPER": st.api_key_pepper,
        "TRITON_URL": st.triton_http_url,
        "SERVING_DIR": str(st.serving_dir),
        "EXCLUDE": st.exclude,  # default exclusion of recommendations (the evaluation's too)
        "BULK_LIMIT": 1000,
        "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,
        "INIT_DB": True,
        # Per-worker caches of the catalogue (seconds); 0 re-reads the database on every request.
        "CATALOGUE_TTL_S": CacheConfig.products_ttl_s,
        "INTERACTIONS_TTL_S": CacheConfig.interactions_ttl_s,
        "CATALOGUE_REBUILD_S": CacheConfig.rebuild_s,
        "API_KEY_CACHE_TTL_S": auth.KEY_CACHE_TTL_S,
    }


class RankerSlot:
    """Holds the ranker; builds the default Triton one on first use, when a serving bundle exists."""

    def __init__(self, ranker: Ranker | None, serving_dir: Path, triton_url: str) -> None:
        self._ranker = ranker
        self._resolved = ranker is not None
        self._serving_dir = serving_dir
        self._triton_url = triton_url
        self._lock = threading.Lock()

    def get(self) -> Ranker | None:
        if not self._resolved:
            with self._lock:
                if not self._resolved:
                    self._ranker = self._build_default()
                    self._resolved = True
        return self._ranker

    def _build_default(self) -> Ranker | None:
        bundle = self._serving_dir / "current"
        if not bundle.exists():
            log.info("no serving bundle at %s; recommendations use popular items", bundle)
            return None
        try:
            # Imported here: the API runs (popular items only) where serving's dependencies are absent.
            if (bundle / "recommender").is_dir():  # the served recommender, ranked on Triton
                served = importlib.import_module("serving.recommender")
                return served.TritonRecommender.from_bundle(bundle, self._triton_url)
            ranking = importlib.import_module("api.ranking")
            return ranking.EncodedRanker.from_bundle(bundle, self._triton_url)
        except Exception as exc:  # a broken bundle must not take the API down; popular items still work
            log.error("could not build the Triton ranker from %s: %s", bundle, exc)
            return None


def create_app(config: dict[str, Any] | None = None, ranker: Ranker | None = None) -> Flask:
    """Build the app; `config` overrides keys of `default_config()`, `ranker` replaces the Triton ranker."""
    app = Flask(__name__)
    app.config.update(default_config())
    app.config.update(config or {})
    app.json.sort_keys = False  # type: ignore[attr-defined]

    url = app.config["DATABASE_URL"]
    _ensure_sqlite_dir(url)
    store = Store(url, schema=app.config.get("DATABASE_SCHEMA"))
    if app.config.get("INIT_DB", True):
        store.init_db()
    app.extensions["recsys_store"] = store
    app.extensions["recsys_ranker"] = RankerSlot(
        ranker, Path(app.config.get("SERVING_DIR", "var/serving")), app.config.get("TRITON_URL", "")
    )
    cache = CatalogueCache(store, CacheConfig(
        interactions_ttl_s=float(app.config["INTERACTIONS_TTL_S"]),
        products_ttl_s=float(app.config["CATALOGUE_TTL_S"]),
        rebuild_s=float(app.config["CATALOGUE_REBUILD_S"]),
    ))
    app.extensions["recsys_catalogue"] = cache
    app.extensions["recsys_recommender"] = Recommender(store, cache)

    limiter = Limiter(
        key_func=auth.rate_limit_key,
        default_limits=[app.config["RATELIMIT_DEFAULT"]] if app.config.get("RATELIMIT_DEFAULT") else [],
        default_limits_exempt_when=lambda: request.endpoint in auth.PUBLIC_ENDPOINTS,
        storage_uri=ratelimit.storage_uri(app.config["RATELIMIT_STORAGE_URI"]),
        key_prefix=app.config.get("RATELIMIT_KEY_PREFIX", "recsys-api"),
        headers_enabled=True,
        enabled=bool(app.config.get("RATELIMIT_ENABLED", True)),
    )
    limiter.init_app(app)
    app.extensions["recsys_limiter"] = limiter
    auth.init_app(app, auth.KeyRing.parse(app.config.get("API_KEYS", ""), app.config.get("API_KEY_PEPPER", "")),
                  float(app.config["API_KEY_CACHE_TTL_S"]))
    errors.register_error_handlers(app)
    for module in (health, openapi, customers, products, interactions):
        app.register_blueprint(module.bp)
    return app


def _ensure_sqlite_dir(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
