"""A small real world for serving tests: synthetic events -> ETL -> an untrained DLRM, laid out
as the registry hands a model over (weights, schema.json, workflow/)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from etl import EtlConfig, EtlOutputs, SyntheticConfig, generate, run_etl
from serving.local_triton import ServerHandle, start_server, stop_server
from tests.conftest import free_port
from models.dlrm import DLRM, DLRMConfig, save_model


@dataclass
class ServingWorld:
    model_dir: Path  # dlrm.pt, schema.json, workflow/
    etl: EtlOutputs
    events: Path  # the raw events as one Parquet file
    products: pd.DataFrame


def build_serving_world(root: Path, n_events: int = 3000, seed: int = 1) -> ServingWorld:
    data = generate(SyntheticConfig(n_events=n_events, days=4, seed=seed))
    events = root / "events.parquet"
    data.events.to_parquet(events)
    out = run_etl(events, root / "etl", EtlConfig())
    schema = json.loads(out.schema_path.read_text())
    cardinality = {c["name"]: c["cardinality"] for c in schema["columns"] if "cardinality" in c}
    torch.manual_seed(0)
    model = DLRM(DLRMConfig(n_dense=len(schema["continuous"]),
                            cardinalities=[cardinality[name] for name in schema["categorical"]],
                            embedding_dim=4, bottom_mlp=[8], top_mlp=[8]))
    model_dir = root / "model"
    save_model(model, model_dir / "dlrm.pt")
    shutil.copyfile(out.schema_path, model_dir / "schema.json")
    shutil.copytree(out.workflow_dir, model_dir / "workflow")
    return ServingWorld(model_dir, out, events, data.products)


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
