"""Drift between nights: population stability of what the served path sees and produces.

A night's *profile* is a set of samples (name -> 1-D float array) taken on its evaluation users:
every dense input of the ranker on the served pools (`feature.<name>`), the ranker's scores of
those pools (`score`), and the norms of item representations (`norm.dlrm_item_embedding`, one per
item row of the DLRM's table; `norm.<source>_item_factors`, e.g. ALS's). Tonight's profile is
compared with the champion's (the night that produced the served model) by the population
stability index

    PSI = sum_b (a_b - e_b) * ln(a_b / e_b)

over `bins` bins cut at the reference's quantiles (e_b: the reference's share of bin b, a_b:
tonight's; shares below `floor` are raised to it so an empty bin costs a finite amount). Rules of
thumb (Siddiqi 2006): below 0.1 stable, 0.1-0.25 a shift worth a look, above 0.25 a major shift;
the run is tagged `drift=warn` at `warn` and the promotion gate refuses at `block`
(RECSYS_DRIFT_WARN / RECSYS_DRIFT_BLOCK).

Pure functions over numpy arrays except `profile` (runs the served path) and the file helpers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from serving.recommender import PairScorer, Recommender

log = logging.getLogger(__name__)

PROFILE_FILE = "drift_profile.npz"
REPORT_FILE = "drift.json"
LEVELS = ("none", "ok", "warn", "block")  # none: no reference night to compare with
BINS = 10
FLOOR = 1e-4
# Logged and plotted, not held against the thresholds. Between two retrainings on the same shop the
# listwise ranker's raw scores (defined up to a shift), their within-pool shape on a few hundred users
# and the freshly initialised DLRM table's norms moved by PSI 0.15-2.0 with no shift in the data
# (README, "Drift between nights"); ALS's seeded item factors and the inputs did not.
# The item statistics over the served pairs too: pools concentrate on a few items, so on a few hundred
# users these moved by PSI 0.15-0.3 with no shift, where the same statistics over the catalogue
# (`item.<name>`, gated) moved by 0.04.
ITEM_FEATURES = ("log_popularity", "conversion", "log_wanted", "log_views")  # Recommender.feature_names' item columns
REPORTED_ONLY = ("score", "score_z", "norm.dlrm_item_embedding", *(f"feature.{n}" for n in ITEM_FEATURES))


class DriftError(ValueError):
    """A profile or threshold that cannot be compared."""


# ------------------------------------------------------------------------------------------ math
def bin_edges(reference: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Cut points for `bins` bins of about equal reference mass, each halfway between two neighbouring
    distinct reference values: the value at quantile b/bins and the next larger one. Cutting between
    values, not on one, keeps a clumpy feature (an item statistic repeated in every pool that holds
    the item) from moving a whole clump across an edge when its value changes slightly. Duplicate
    cuts are dropped (few distinct values -> fewer, wider bins)."""
    reference = _finite(reference, "reference")
    if bins < 2:
        raise DriftError(f"PSI needs at least 2 bins; got {bins}")
    distinct = np.unique(reference)
    at = np.quantile(reference, np.arange(1, bins) / bins, method="inverted_cdf")  # reference values
    pos = np.searchsorted(distinct, at, side="left")
    pos = pos[pos < len(distinct) - 1]  # a cut above the largest value holds nothing
    return np.unique((distinct[pos] + distinct[pos + 1]) / 2.0)


def shares(values: np.ndarray, edges: np.ndarray, floor: float = FLOOR) -> np.ndarray:
    """Share of `values` in each of the len(edges) + 1 bins (open at both ends), floored and renormalised."""
    values = _finite(values, "sample")
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    p = np.maximum(counts / counts.sum(), floor)
    return p / p.sum()


def psi_of_shares(expected: np.ndarray, actual: np.ndarray) -> float:
    """sum (a - e) ln(a / e) of two share vectors over the same bins (each positive, summing to 1)."""
    e, a = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or (e <= 0).any() or (a <= 0).any():
        raise DriftError(f"PSI needs positive shares over the same bins; got {e.shape} and {a.shape}")
    return float(np.sum((a - e) * np.log(a / e)))


def psi(reference: np.ndarray, current: np.ndarray, bins: int = BINS, floor: float = FLOOR) -> float:
    """Population stability index of `current` against `reference` (bins at the reference's quantiles)."""
    edges = bin_edges(reference, bins)
    return psi_of_shares(shares(reference, edges, floor), shares(current, edges, floor))


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise DriftError(f"the {what} has no finite values")
    return values


# ------------------------------------------------------------------------------------------ report
@dataclass(frozen=True)
class DriftReport:
    """PSI per profiled figure against a reference night, and what the thresholds make of it."""

    level: str  # one of LEVELS
    reason: str
    psi: dict[str, float] = field(default_factory=dict)
    warn: float = 0.1
    block: float = 0.25
    reference: str = ""  # which night / run the reference profile came from

    reported_only: tuple[str, ...] = REPORTED_ONLY

    @property
    def gated(self) -> dict[str, float]:
        return {n: v for n, v in self.psi.items() if n not in self.reported_only}

    @property
    def worst(self) -> tuple[str, float] | None:
        return max(self.gated.items(), key=lambda kv: kv[1]) if self.gated else None

    def metrics(self) -> dict[str, float]:
        """MLflow metrics: drift_psi.<figure> for each, drift_psi_max over the gated ones (what the
        thresholds and the promotion gate read)."""
        out = {f"drift_psi.{name}": value for name, value in self.psi.items()}
        if self.worst is not None:
            out["drift_psi_max"] = self.worst[1]
        return out

    def tags(self) -> dict[str, str]:
        worst = self.worst
        return {"drift": self.level, "drift.reason": self.reason[:5000], "drift.reference": self.reference,
                "drift.worst": "" if worst is None else worst[0]}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "DriftReport":
        data = json.loads(text)
        return cls(**data | {"reported_only": tuple(data.get("reported_only", REPORTED_ONLY))})


def compare_profiles(reference: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray], warn: float = 0.1,
                     block: float = 0.25, bins: int = BINS, reference_name: str = "",
                     reported_only: tuple[str, ...] = REPORTED_ONLY) -> DriftReport:
    """PSI of every figure both profiles hold; the level is the worst gated figure's (all but
    `reported_only`) against `warn` and `block`."""
    if not 0 <= warn <= block:
        raise DriftError(f"drift thresholds need 0 <= warn <= block; got warn={warn}, block={block}")
    values = {}
    for name in sorted(set(reference) & set(current)):
        try:
            values[name] = psi(reference[name], current[name], bins)
        except DriftError as exc:  # a figure with no finite values tonight or then says nothing
            log.warning("drift: %s left out: %s", name, exc)
    gated = {n: v for n, v in values.items() if n not in reported_only}
    if not gated:
        return DriftReport("none", "no figure in common with the reference profile", values, warn, block,
                           reference_name)
    name, top = max(gated.items(), key=lambda kv: kv[1])
    above = sorted((n for n, v in gated.items() if v >= warn), key=lambda n: -gated[n])
    listed = ", ".join(f"{n} {values[n]:.3f}" for n in above[:5])
    if top >= block:
        level, reason = "block", (f"drift: PSI of {name} is {top:.3f} >= block threshold {block} "
                                  f"(above warn {warn}: {listed}) against {reference_name or 'the reference'}")
    elif top >= warn:
        level, reason = "warn", (f"drift: PSI of {name} is {top:.3f} >= warn threshold {warn} ({listed}) "
                                 f"against {reference_name or 'the reference'}")
    else:
        level, reason = "ok", (f"no drift: largest PSI {top:.3f} ({name}) < warn threshold {warn} "
                               f"against {reference_name or 'the reference'}")
    return DriftReport(level, reason, values, warn, block, reference_name, tuple(reported_only))


def no_reference(warn: float = 0.1, block: float = 0.25) -> DriftReport:
    return DriftReport("none", "no reference night (no champion or earlier night with a drift profile): "
                       "nothing to compare",
                       {}, warn, block, "")


# ------------------------------------------------------------------------------------------ profile
def profile(recommender: "Recommender", scorer: "PairScorer | None", history: sp.csr_matrix,
            blocked: sp.csr_matrix | np.ndarray, item_embeddings: np.ndarray | None = None,
            max_users: int = 500, max_pairs: int = 50_000, seed: int = 0) -> dict[str, np.ndarray]:
    """Samples of what the served path sees and produces on (up to `max_users` of) these users.

    item.<name>: the ranker's per-item inputs once per catalogue item; feature.<name>: each dense input of the ranker over the users' pools (as `Recommender.features`
    builds them, blocked items left out before pooling as served); score: the ranker's scores of those
    pairs (absent without a ranker); norm.dlrm_item_embedding: L2 norms of `item_embeddings` rows;
    norm.<source>_item_factors: norms of a source's item factors where it has them (ALS).
    """
    rng = np.random.default_rng(seed)
    n = history.shape[0]
    rows = np.sort(rng.choice(n, size=min(max_users, n), replace=False)) if n else np.empty(0, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    if len(rows):
        hist = history[rows]
        block = blocked[rows]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        scores = recommender.source_scores(hist)
        pool = recommender.pool(scores, block)
        dense, sparse = recommender.features(hist, scores, pool)
        valid = pool.reshape(-1) >= 0
        ranked = None
        if scorer is not None and valid.any():
            ranked = np.full(pool.size, np.nan, dtype=np.float64)
            ranked[valid] = np.asarray(scorer(dense[valid], sparse[valid]), dtype=np.float64).ravel()
            ranked = ranked.reshape(pool.shape)
        dense = dense[valid]
        names, _ = recommender.feature_names()
        picked = np.arange(len(dense))
        if len(dense) > max_pairs:
            picked = np.sort(rng.choice(len(dense), size=max_pairs, replace=False))
        for j, name in enumerate(names):
            out[f"feature.{name}"] = dense[picked, j].astype(np.float32)
        if ranked is not None:
            out["score"] = ranked.reshape(-1)[valid][picked].astype(np.float32)
            out["score_z"] = _within_pool_z(ranked).reshape(-1)[valid][picked].astype(np.float32)
    table = item_features(recommender)
    for j, name in enumerate(ITEM_FEATURES):  # the same statistics once per catalogue item
        out[f"item.{name}"] = table[:, j]
    if item_embeddings is not None:
        out["norm.dlrm_item_embedding"] = np.linalg.norm(np.asarray(item_embeddings, dtype=np.float32), axis=1)
    for name, source in recommender.sources.items():
        factors = getattr(source, "item_factors", None)
        if factors is not None:
            out[f"norm.{name}_item_factors"] = np.linalg.norm(np.asarray(factors, dtype=np.float32), axis=1)
    return out


def item_features(recommender: "Recommender") -> np.ndarray:
    """(n_items, len(ITEM_FEATURES)) float32: the ranker's per-item inputs for every catalogue item, as
    `Recommender.features` fills them into a pair (log popularity, then `item_statistics`)."""
    from serving.recommender import _relative_log

    pop = _relative_log(np.asarray(recommender.popularity, dtype=np.float64))
    return np.column_stack([pop, recommender.item_stats]).astype(np.float32)


def _within_pool_z(probabilities: np.ndarray) -> np.ndarray:
    """(users, pool) ranker probabilities -> logits standardised within each user's pool (NaN kept).

    A listwise-trained ranker's logits are defined up to a per-model shift and scale (the softmax
    over a pool ignores a shift), so the raw score distribution moves between two retrainings on the
    same shop; the within-pool shape is what tonight's and last night's models can be compared on."""
    import warnings

    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    logit = np.log(p) - np.log1p(-p)
    with warnings.catch_warnings():  # a user whose pool is empty (everything blocked) is all NaN: kept NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(logit, axis=1, keepdims=True)
        std = np.nanstd(logit, axis=1, keepdims=True)
    return (logit - mean) / np.where(std > 0, std, 1.0)


def dlrm_item_embeddings(model: Any) -> np.ndarray:
    """(n_items, dim) item rows of a served DLRM's table (models.dlrm; row 0 is the unknown item)."""
    weight = model.sparse_arch.embedding.weight.detach().cpu().numpy()
    return np.asarray(weight[1:model.config.cardinalities[0]], dtype=np.float32)


def save_profile(values: Mapping[str, np.ndarray], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **{k: np.asarray(v) for k, v in values.items()})
    return path


def load_profile(path: Path) -> dict[str, np.ndarray]:
    with np.load(Path(path), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def champion_profile(tracking_uri: str, model_name: str, artifact: str = f"eval/{PROFILE_FILE}",
                     into: Path | None = None) -> tuple[dict[str, np.ndarray], str] | None:
    """(profile, description) of the current champion's run, downloaded from MLflow; None when there is
    no champion or its run logged no profile."""
    import tempfile

    from mlflow.exceptions import MlflowException

    from registry.promotion import CHAMPION
    from registry.tracking import tracking

    with tracking(tracking_uri) as client:
        try:
            mv = client.get_model_version_by_alias(model_name, CHAMPION)
        except MlflowException:
            return None
        folder = Path(into or tempfile.mkdtemp(prefix="drift-"))
        try:
            local = Path(client.download_artifacts(mv.run_id, artifact, str(folder)))
        except (MlflowException, OSError) as exc:
            log.warning("drift: champion v%s (run %s) has no %s: %s", mv.version, mv.run_id, artifact, exc)
            return None
        run_date = client.get_run(mv.run_id).data.params.get("run_date", "?")
        return load_profile(local), f"champion v{mv.version} (night {run_date}, run {mv.run_id})"
