"""A small real world for serving tests: synthetic events -> a fitted served recommender (candidate
sources + DLRM ranker) and the ETL's workflow, laid out as the registry hands a version over
(dlrm.pt, schema.json, workflow/, recommender/), so `serving.bundle.build_bundle` takes it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from etl import EtlConfig, SyntheticConfig, generate, run_etl
from serving.local_triton import ServerHandle, start_server, stop_server
from tests.conftest import free_port
from training.quality import Split, last_days_split
from training.ranker import MODEL_FILE, SCHEMA_FILE, FittedRecommender, RankerConfig, fit_recommender

SMALL_SHOP = SyntheticConfig(n_events=6000, n_users=80, n_products=150, days=4, seed=1)
SMALL_RECOMMENDER = RankerConfig(sources=("item_knn", "popularity"), epochs=2, pool_size=30)


@dataclass
class ServedWorld:
    model_dir: Path  # dlrm.pt, schema.json, workflow/, recommender/
    fitted: FittedRecommender
    split: Split  # the training days (the store's catalogue and history) and the held-out last day
    train_file: Path  # the training days' events as one Parquet file: what a store is seeded with


def build_served_world(root: Path, shop: SyntheticConfig = SMALL_SHOP,
                       config: RankerConfig = SMALL_RECOMMENDER) -> ServedWorld:
    """Browsing that follows categories (`category_sessions`), the last day held out; the recommender is
    fitted on the days before it and set to rank with its DLRM (Triton then ranks every request)."""
    data = generate(shop)
    events = category_sessions(data.events, data.products)
    held = last_days_split(events, 1)
    # The shop's catalogue is what the store knows: the products of the training days.
    split = Split(held.train, held.test, np.unique(held.train["product_id"].to_numpy(np.int64)), held.kind)
    fitted = fit_recommender(split.train, split.items, config)
    fitted.recommender.mode = "ranker"  # whatever won on held-out users: here Triton must rank
    model_dir = root / "model"
    fitted.save(model_dir / "recommender")
    shutil.copyfile(model_dir / "recommender" / MODEL_FILE, model_dir / "dlrm.pt")
    shutil.copyfile(model_dir / "recommender" / SCHEMA_FILE, model_dir / "schema.json")
    train_file = root / "train.parquet"
    split.train.to_parquet(train_file)
    etl = run_etl(train_file, root / "etl", EtlConfig())
    shutil.copytree(etl.workflow_dir, model_dir / "workflow")
    return ServedWorld(model_dir, fitted, split, train_file)


def category_sessions(events: pd.DataFrame, products: pd.DataFrame, seed: int = 0,
                      favourites: int = 2) -> pd.DataFrame:
    """The synthetic events with browsing that follows categories: each customer has `favourites`
    categories, each session stays in one of them, and every product of a session is swapped for
    one of that category (deterministically, keeping event types and times). The synthetic shop's
    own sessions mix categories, which leaves nothing for a session-aware model to follow."""
    rng = np.random.default_rng(seed)
    categories = np.sort(products.category_id.unique())
    users = np.sort(events.user_id.unique())
    liked = rng.choice(categories, size=(len(users), favourites))
    sessions = events.user_session.unique()
    session_user = events.drop_duplicates("user_session").set_index("user_session").user_id
    pick = rng.integers(favourites, size=len(sessions))
    session_category = pd.Series(liked[np.searchsorted(users, session_user[sessions].to_numpy()), pick],
                                 index=sessions)
    members = {c: np.sort(products.product_id[products.category_id == c].to_numpy()) for c in categories}
    category = session_category[events.user_session].to_numpy()
    product = events.product_id.to_numpy()
    swapped = np.array([members[c][p % len(members[c])] for c, p in zip(category, product)], dtype=np.int64)
    attributes = products.set_index("product_id")
    out = events.assign(product_id=swapped)
    for column in ("category_id", "category_code", "brand", "price"):
        out[column] = attributes[column].reindex(swapped).to_numpy()
    return out


def running_triton(bundle: Path, state_dir: Path) -> Iterator[ServerHandle]:
    """A real local Triton serving `bundle` on free ports until the generator is closed (a fixture's body)."""
    handle = start_server(bundle, free_port(), free_port(), state_dir)
    try:
        yield handle
    finally:
        stop_server(state_dir)
