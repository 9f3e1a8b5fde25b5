"""Synthetic REES46-style e-commerce events whose purchase probability comes from a known model.

The planted model is low rank, so a DLRM with user/product embeddings can learn it:

    logit(p) = b0 + user_bias[u] + product_bias[j] + interaction_scale * <u_vec[u], v_vec[j]>
               + price_coef * zscore(log price[j])

Every (user_session, product_id) pair is one impression: one `view`, then `cart` and `purchase`
when the impression converts (and, rarely, `cart` + `remove_from_cart` when it does not).
Events are generated day by day from `SeedSequence([seed, day])`, so memory stays bounded at
10^8 events and any day can be regenerated on its own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from contracts import RAW_EVENT_COLUMNS
from etl.errors import SyntheticDataError

log = logging.getLogger(__name__)

EVENT_COLUMNS = list(RAW_EVENT_COLUMNS)
EVENTS_SCHEMA = pa.schema([
    ("event_time", pa.timestamp("us", tz="UTC")),
    ("event_type", pa.string()),
    ("product_id", pa.int64()),
    ("category_id", pa.int64()),
    ("category_code", pa.string()),
    ("brand", pa.string()),
    ("price", pa.float64()),
    ("user_id", pa.int64()),
    ("user_session", pa.string()),
])
MANIFEST_NAME = "manifest.json"

_TOP = ["electronics", "appliances", "computers", "apparel", "furniture", "kids", "sport",
        "construction", "auto", "accessories", "country_yard", "stationery"]
_SUB = ["smartphone", "audio.headphone", "video.tv", "kitchen.washer", "notebook", "shoes",
        "bed", "toys", "bicycle", "tools.drill", "player", "bag", "clocks", "environment.vacuum"]
# Events per impression is about 1 + 2 * purchase rate + small cart noise; the guess only sizes
# the first draw, the exact count comes from truncating on the cumulative event count.
_EVENTS_PER_IMPRESSION_GUESS = 1.2


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Entity counts left at None scale with `n_events`."""

    n_events: int = 100_000
    # Few enough entities that each is seen often: at 10^6 events (250 users, 250 products) a
    # matrix-factorisation model of the true form got within 0.003 validation AUC of the oracle;
    # with 400 users the gap was 0.004, with 3333 users and latent dim 4 it was 0.04.
    n_users: int | None = None  # default: n_events / 4000, at least 50
    n_products: int | None = None  # default: n_events / 4000, at least 30
    n_categories: int | None = None  # default: n_products / 25, at least 5
    n_brands: int | None = None  # default: n_products / 10, at least 5
    start_date: str = "2026-01-01"  # YYYY-MM-DD (a datetime.date is accepted), first day, UTC
    days: int = 7
    seed: int = 0
    latent_dim: int = 2
    base_logit: float = -2.0  # gives a purchase rate of roughly 17% per impression
    interaction_scale: float = 0.6
    user_bias_std: float = 0.4
    product_bias_std: float = 0.7
    price_coef: float = -0.8  # per standard deviation of log price
    session_length_mean: float = 4.0  # impressions per session
    preference_mix: float = 0.5  # share of impressions picked by affinity, rest by popularity
    candidates: int = 8  # affinity picks the best of this many popularity-drawn products
    # Session intent: each session picks one category by the user's taste (its share of the user's
    # affinity-weighted popularity) and this share of the session's impressions is drawn within it
    # (same popularity / affinity mix). 0 (default): every impression is drawn independently, as
    # before, with the same random draws; REES46-like browsing that follows a category is about 0.5-0.8.
    session_focus: float = 0.0
    zipf_exponent: float = 1.0
    null_category_code_rate: float = 0.05  # share of products with no category_code
    null_brand_rate: float = 0.03  # share of products with no brand

    def __post_init__(self) -> None:
        if self.n_events < 1:
            raise SyntheticDataError(f"n_events must be >= 1, got {self.n_events}")
        if self.days < 1:
            raise SyntheticDataError(f"days must be >= 1, got {self.days}")
        if not 0.0 <= self.session_focus <= 1.0:
            raise SyntheticDataError(f"session_focus must be in [0, 1], got {self.session_focus}")
        if isinstance(self.start_date, date):  # keep the manifest JSON-friendly
            object.__setattr__(self, "start_date", self.start_date.isoformat()[:10])
        try:
            date.fromisoformat(self.start_date)
        except (TypeError, ValueError) as exc:
            raise SyntheticDataError(f"start_date {self.start_date!r} is not YYYY-MM-DD") from exc

    @classmethod
    def parse_override(cls, text: str) -> tuple[str, object]:
        """`name=value` for one numeric field of the planted model (e.g. `product_bias_std=1.5`), typed
        like the field's default; `SyntheticDataError` names the fields that can be set this way."""
        name, _, value = text.partition("=")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)
                    if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)}
        for entity in ("n_events", "days", "seed"):  # they have flags of their own
            defaults.pop(entity, None)
        if name.strip() not in defaults or not value.strip():
            raise SyntheticDataError(f"{text!r} is not NAME=VALUE with NAME one of {', '.join(sorted(defaults))}")
        kind = type(defaults[name.strip()])
        try:
            return name.strip(), kind(value.strip())
        except ValueError as exc:
            raise SyntheticDataError(f"{name.strip()} takes a {kind.__name__}, got {value.strip()!r}") from exc

    def resolved(self) -> "SyntheticConfig":
        """The same config with every derived entity count filled in."""
        n_products = self.n_products or max(30, self.n_events // 4000)
        return dataclasses.replace(
            self,
            n_users=self.n_users or max(50, self.n_events // 4000),
            n_products=n_products,
            n_categories=self.n_categories or max(5, n_products // 25),
            n_brands=self.n_brands or max(5, n_products // 10),
        )

    def day(self, index: int) -> date:
        return date.fromisoformat(self.start_date) + timedelta(days=index)

    def events_on_day(self, index: int) -> int:
        base, extra = divmod(self.n_events, self.days)
        return base + (1 if index < extra else 0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class GroundTruth:
    """The planted model's parameters; rows of the arrays are entity indices."""

    config: SyntheticConfig  # resolved
    user_ids: np.ndarray  # (n_users,) int64
    product_ids: np.ndarray  # (n_products,) int64
    user_bias: np.ndarray  # (n_users,)
    product_bias: np.ndarray  # (n_products,)
    user_vec: np.ndarray  # (n_users, latent_dim)
    product_vec: np.ndarray  # (n_products, latent_dim)
    price_z: np.ndarray  # (n_products,) z-score of log price
    user_activity: np.ndarray  # (n_users,) probabilities that a session belongs to the user
    product_popularity: np.ndarray  # (n_products,) Zipf probabilities
    product_category: np.ndarray  # (n_products,) category index of each product

    @classmethod
    def from_config(cls, config: SyntheticConfig) -> "GroundTruth":
        return _build_world(config.resolved())[0]

    @classmethod
    def from_manifest(cls, path: Path) -> "GroundTruth":
        """Rebuild the truth from `manifest.json` (or the raw directory holding it)."""
        return cls.from_config(read_manifest(path))

    def user_index(self, user_id: np.ndarray) -> np.ndarray:
        return _lookup(self.user_ids, np.asarray(user_id, dtype=np.int64), "user_id")

    def product_index(self, product_id: np.ndarray) -> np.ndarray:
        return _lookup(self.product_ids, np.asarray(product_id, dtype=np.int64), "product_id")

    def logit_by_index(self, ui: np.ndarray, pj: np.ndarray) -> np.ndarray:
        c = self.config
        dot = np.einsum("nd,nd->n", self.user_vec[ui], self.product_vec[pj])
        return (c.base_logit + self.user_bias[ui] + self.product_bias[pj]
                + c.interaction_scale * dot + c.price_coef * self.price_z[pj])

    def interest(self, user_id: np.ndarray, cart_noise: float = 0.06) -> np.ndarray:
        """(n_users, n_products) chance that one impression drawn for the user is a cart or purchase of
        each product (columns in `product_ids` order): the oracle a top-k list is compared with.

        The impression is drawn as `view_probability` says; it converts with the planted purchase
        probability, or is carted without a purchase (`cart_noise`).
        """
        c = self.config
        ui = self.user_index(user_id)
        affinity = c.interaction_scale * (self.user_vec[ui] @ self.product_vec.T)
        logit = (c.base_logit + self.user_bias[ui][:, None] + self.product_bias[None, :] + affinity
                 + c.price_coef * self.price_z[None, :])
        bought = _sigmoid(logit)
        return self.view_probability(user_id) * (bought + (1 - bought) * cart_noise)

    def view_probability(self, user_id: np.ndarray) -> np.ndarray:
        """(n_users, n_products) chance that one impression drawn for the user shows each product.

        An impression picks a product by popularity, or (share `preference_mix`) the best of several
        popularity draws by affinity with Gumbel noise, which is close to the softmax
        pop_j * exp(scale * <u, v_j>) / Z_u (exact as the number of draws grows). With `session_focus`
        f, a share f of impressions is drawn the same way within the session's category, itself picked
        with probability W_uc / sum_c W_uc (W_uc: the category's part of Z_u); the chance is averaged
        over the user's sessions (this oracle does not know today's category).
        """
        c = self.config
        ui = self.user_index(user_id)
        affinity = c.interaction_scale * (self.user_vec[ui] @ self.product_vec.T)
        weighted = self.product_popularity[None, :] * np.exp(affinity - affinity.max(axis=1, keepdims=True))
        view = (1 - c.preference_mix) * self.product_popularity[None, :] + c.preference_mix * weighted / weighted.sum(
            axis=1, keepdims=True)
        if c.session_focus > 0:
            taste = self._per_category(weighted)  # (n, n_categories) W_uc
            cat = self.product_category
            cat_pop = self._per_category(self.product_popularity[None, :])[0]
            within = ((1 - c.preference_mix) * self.product_popularity[None, :] / cat_pop[cat][None, :]
                      + c.preference_mix * weighted / taste[:, cat])
            in_session = taste[:, cat] / taste.sum(axis=1, keepdims=True) * within
            view = (1 - c.session_focus) * view + c.session_focus * in_session
        return view

    def _per_category(self, per_product: np.ndarray) -> np.ndarray:
        """(n, n_products) -> (n, n_categories): sums over each category's products."""
        n_c = self.config.n_categories
        assert n_c  # resolved
        order = np.argsort(self.product_category, kind="stable")
        present, starts = np.unique(self.product_category[order], return_index=True)
        out = np.zeros((per_product.shape[0], n_c))
        out[:, present] = np.add.reduceat(per_product[:, order], starts, axis=1)
        return out

    def session_categories(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """One category per session of the user indices `users`, drawn by taste W_uc (see `interest`)."""
        c = self.config
        out = np.empty(len(users), dtype=np.int64)
        for start in range(0, len(users), 10_000):  # bounds the (rows, n_products) temporary
            rows = users[start:start + 10_000]
            affinity = c.interaction_scale * (self.user_vec[rows] @ self.product_vec.T)
            taste = self._per_category(self.product_popularity[None, :]
                                       * np.exp(affinity - affinity.max(axis=1, keepdims=True)))
            cum = np.cumsum(taste, axis=1)
            draw = rng.random(len(rows))[:, None] * cum[:, -1:]
            out[start:start + len(rows)] = np.minimum((cum <= draw).sum(axis=1), taste.shape[1] - 1)
        return out

    def purchase_probability(self, user_id: np.ndarray, product_id: np.ndarray) -> np.ndarray:
        """True probability (float64 in (0, 1)) that the user buys the product on an impression."""
        ui, pj = self.user_index(user_id), self.product_index(product_id)
        if ui.shape != pj.shape:
            raise SyntheticDataError(f"user_id and product_id must pair up; got {ui.shape} and {pj.shape}")
        return _sigmoid(self.logit_by_index(ui, pj))


def _lookup(ids: np.ndarray, query: np.ndarray, name: str) -> np.ndarray:
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], query)
    pos = np.clip(pos, 0, len(ids) - 1)
    found = ids[order][pos] == query
    if not found.all():
        bad = query[~found]
        raise SyntheticDataError(
            f"{len(bad)} {name} values are not in the synthetic world (first: {bad[0]}); "
            "was the truth rebuilt from the manifest of the same raw directory?")
    return order[pos]


@dataclass
class SyntheticData:
    """A generated data set held in memory (use `iter_event_days` for large sizes)."""

    events: pd.DataFrame  # REES46 layout, EVENT_COLUMNS
    users: pd.DataFrame  # user_id, activity
    products: pd.DataFrame  # product_id, category_id, category_code, brand, price
    truth: GroundTruth


def _build_world(config: SyntheticConfig) -> tuple[GroundTruth, pd.DataFrame]:
    """Draw entities and the planted model from the seed (independent of the event streams)."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0]))
    n_u, n_p, n_c, n_b = config.n_users, config.n_products, config.n_categories, config.n_brands
    d = config.latent_dim
    assert n_u and n_p and n_c and n_b  # resolved() fills them

    # Component std d**-0.25 makes <u, v> have unit variance whatever the latent dim.
    comp = d ** -0.25
    cat_vec = rng.normal(0.0, comp, (n_c, d))
    cat_of_product = rng.integers(0, n_c, n_p)
    product_vec = 0.6 * cat_vec[cat_of_product] + 0.8 * rng.normal(0.0, comp, (n_p, d))
    user_vec = rng.normal(0.0, comp, (n_u, d))

    cat_base_price = np.exp(rng.normal(3.5, 1.0, n_c))
    price = np.round(cat_base_price[cat_of_product] * np.exp(rng.normal(0.0, 0.3, n_p)), 2)
    price = np.maximum(price, 0.01)
    log_price = np.log(price)
    price_z = (log_price - log_price.mean()) / (log_price.std() + 1e-12)

    rank = rng.permutation(n_p) + 1
    popularity = rank.astype(np.float64) ** -config.zipf_exponent
    popularity /= popularity.sum()
    activity = np.exp(rng.normal(0.0, 1.0, n_u))
    activity /= activity.sum()

    user_ids = 512_000_000 + rng.choice(10 * n_u, n_u, replace=False).astype(np.int64)
    product_ids = 1_000_000 + rng.choice(10 * n_p, n_p, replace=False).astype(np.int64)
    category_ids = 2_053_013_552_000_000_000 + rng.choice(10**9, n_c, replace=False).astype(np.int64)
    codes = np.array([f"{_TOP[k % len(_TOP)]}.{_SUB[(k // len(_TOP)) % len(_SUB)]}"
                      + ("" if k < len(_TOP) * len(_SUB) else f"{k}") for k in range(n_c)],
                     dtype=object)
    brands = np.array([f"brand{k:05d}" for k in range(n_b)], dtype=object)
    brand_of_product = brands[rng.integers(0, n_b, n_p)]
    brand_of_product[rng.random(n_p) < config.null_brand_rate] = None

    truth = GroundTruth(
        config=config, user_ids=user_ids, product_ids=product_ids,
        user_bias=rng.normal(0.0, config.user_bias_std, n_u),
        product_bias=rng.normal(0.0, config.product_bias_std, n_p),
        user_vec=user_vec, product_vec=product_vec, price_z=price_z,
        user_activity=activity, product_popularity=popularity, product_category=cat_of_product,
    )
    products = pd.DataFrame({
        "product_id": product_ids,
        "category_id": category_ids[cat_of_product],
        "category_code": np.where(rng.random(n_p) < config.null_category_code_rate, None,
                                  codes[cat_of_product]),
        "brand": brand_of_product,
        "price": price,
    })
    return truth, products


def _session_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    words = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64)
    return np.array([f"{a:016x}{b:016x}" for a, b in words], dtype=object)


def _pick_products(truth: GroundTruth, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
    """Popularity draws, mixed with best-of-K by affinity (Gumbel-max) for a share of rows."""
    c = truth.config
    n_p = len(truth.product_ids)
    picked = rng.choice(n_p, size=len(users), p=truth.product_popularity)
    by_pref = np.flatnonzero(rng.random(len(users)) < c.preference_mix)
    for start in range(0, len(by_pref), 100_000):  # bounds the (rows, K, dim) temporary
        rows = by_pref[start:start + 100_000]
        cand = rng.choice(n_p, size=(len(rows), c.candidates), p=truth.product_popularity)
        affinity = np.einsum("nd,nkd->nk", truth.user_vec[users[rows]], truth.product_vec[cand])
        score = c.interaction_scale * affinity + rng.gumbel(size=cand.shape)
        picked[rows] = cand[np.arange(len(rows)), score.argmax(axis=1)]
    return picked


def _pick_in_category(truth: GroundTruth, rng: np.random.Generator, users: np.ndarray,
                      categories: np.ndarray) -> np.ndarray:
    """`_pick_products` restricted to each row's category: popularity draws within it, a share
    `preference_mix` of rows the best of `candidates` such draws by affinity (Gumbel-max)."""
    c = truth.config
    order = np.argsort(truth.product_category, kind="stable")  # products grouped by category
    cum = np.cumsum(truth.product_popularity[order])
    ends = np.searchsorted(truth.product_category[order], np.arange(c.n_categories or 0), side="right")
    starts = np.r_[0, ends[:-1]]
    mass_before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)

    def draw(cats: np.ndarray) -> np.ndarray:
        u = mass_before[cats] + rng.random(cats.shape) * (cum[ends[cats] - 1] - mass_before[cats])
        at = np.clip(np.searchsorted(cum, u, side="right"), starts[cats], ends[cats] - 1)
        return order[at]

    picked = draw(categories)
    by_pref = np.flatnonzero(rng.random(len(users)) < c.preference_mix)
    cand = draw(np.repeat(categories[by_pref][:, None], c.candidates, axis=1))
    affinity = np.einsum("nd,nkd->nk", truth.user_vec[users[by_pref]], truth.product_vec[cand])
    score = c.interaction_scale * affinity + rng.gumbel(size=cand.shape)
    picked[by_pref] = cand[np.arange(len(by_pref)), score.argmax(axis=1)]
    return picked


def _generate_day(truth: GroundTruth, products: pd.DataFrame, day_index: int) -> pd.DataFrame:
    """Exactly `events_on_day` events; redraws larger when a small catalogue repeats products
    within sessions (repeats collapse into one impression) and the first draw falls short."""
    target = truth.config.events_on_day(day_index)
    factor = 1.15
    for attempt in range(8):
        day = _draw_day(truth, products, day_index, target, factor, attempt)
        if len(day) == target:
            return day
        factor *= 1.6
    log.warning("day %d: only %d of %d events after redraws", day_index, len(day), target)
    return day


def _draw_day(truth: GroundTruth, products: pd.DataFrame, day_index: int, target: int,
              factor: float, attempt: int) -> pd.DataFrame:
    c = truth.config
    rng = np.random.default_rng(np.random.SeedSequence([c.seed, 1, day_index, attempt]))
    n_imp = int(math.ceil(target / _EVENTS_PER_IMPRESSION_GUESS * factor)) + 8
    lengths = rng.geometric(1.0 / c.session_length_mean, size=n_imp // 2 + 8)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n_imp)) + 1]
    n_sessions = len(lengths)
    session = np.repeat(np.arange(n_sessions), lengths)
    session_user = rng.choice(len(truth.user_ids), size=n_sessions, p=truth.user_activity)
    session_start = rng.uniform(0.0, 86_400.0 - 3_600.0, n_sessions)
    users = session_user[session]
    items = _pick_products(truth, rng, users)
    if c.session_focus > 0:  # drawn after the independent picks, so focus 0 keeps every draw as it was
        session_category = truth.session_categories(rng, session_user)
        focused = np.flatnonzero(rng.random(len(users)) < c.session_focus)
        items[focused] = _pick_in_category(truth, rng, users[focused], session_category[session[focused]])

    imp = pd.DataFrame({"session": session, "u": users, "p": items})
    keep = ~imp.duplicated(["session", "p"]).to_numpy()  # one impression per (session, product)
    session, users, items = session[keep], users[keep], items[keep]
    gaps = rng.exponential(40.0, len(session))
    first_of_session = np.r_[True, session[1:] != session[:-1]]
    gaps[first_of_session] = 0.0
    offset = pd.Series(gaps).groupby(session).cumsum().to_numpy()
    view_t = session_start[session] + np.minimum(offset, 3_500.0)

    prob = _sigmoid(truth.logit_by_index(users, items))
    bought = rng.random(len(users)) < prob
    carted = bought | (rng.random(len(users)) < 0.06)
    removed = carted & ~bought & (rng.random(len(users)) < 0.5)
    n_ev = 1 + carted.astype(np.int64) + bought + removed
    # Whole impressions only; the last one that would overshoot is dropped, a later, smaller
    # one may still fit, so the day ends exactly on target when enough were drawn.
    kept = _fill_to(n_ev, target)

    cart_t = view_t + rng.uniform(5.0, 120.0, len(view_t))
    buy_t = cart_t + rng.uniform(10.0, 300.0, len(view_t))
    remove_t = cart_t + rng.uniform(5.0, 200.0, len(view_t))
    sid = _session_ids(rng, n_sessions)

    parts = []
    for mask, when, kind in ((kept, view_t, "view"), (kept & carted, cart_t, "cart"),
                             (kept & bought, buy_t, "purchase"),
                             (kept & removed, remove_t, "remove_from_cart")):
        parts.append(pd.DataFrame({"t": when[mask], "event_type": kind, "u": users[mask],
                                   "p": items[mask], "s": session[mask]}))
    ev = pd.concat(parts, ignore_index=True).sort_values("t", kind="stable")
    day_start = pd.Timestamp(c.day(day_index), tz="UTC")
    prod = products.iloc[ev["p"].to_numpy()]
    out = pd.DataFrame({
        "event_time": day_start + pd.to_timedelta(np.round(ev["t"].to_numpy() * 1e6), unit="us"),
        "event_type": ev["event_type"].to_numpy(),
        "product_id": prod["product_id"].to_numpy(),
        "category_id": prod["category_id"].to_numpy(),
        "category_code": prod["category_code"].to_numpy(),
        "brand": prod["brand"].to_numpy(),
        "price": prod["price"].to_numpy(),
        "user_id": truth.user_ids[ev["u"].to_numpy()],
        "user_session": sid[ev["s"].to_numpy()],
    })
    out["event_time"] = out["event_time"].astype("datetime64[us, UTC]")
    return out


def _fill_to(sizes: np.ndarray, target: int) -> np.ndarray:
    """Mask of a prefix of impressions totalling `target` events, topped up with 1-event views."""
    total = np.cumsum(sizes)
    kept = total <= target
    short = target - (int(total[kept][-1]) if kept.any() else 0)
    if short:
        spare = np.flatnonzero(~kept & (sizes == 1))[:short]
        kept[spare] = True
    return kept


def iter_event_days(config: SyntheticConfig) -> Iterator[pd.DataFrame]:
    """Yield one DataFrame of events per day, in order; memory is bounded by one day."""
    config = config.resolved()
    truth, products = _build_world(config)
    for day_index in range(config.days):
        yield _generate_day(truth, products, day_index)


def generate(config: SyntheticConfig) -> SyntheticData:
    """Generate all events in memory (fine up to ~10^7 events)."""
    config = config.resolved()
    truth, products = _build_world(config)
    events = pd.concat([_generate_day(truth, products, i) for i in range(config.days)],
                       ignore_index=True)
    events.attrs["synthetic_config"] = dataclasses.asdict(config)
    users = pd.DataFrame({"user_id": truth.user_ids, "activity": truth.user_activity})
    return SyntheticData(events=events, users=users, products=products, truth=truth)


def write_events(events: pd.DataFrame | Iterable[pd.DataFrame], raw_dir: Path,
                 config: SyntheticConfig | None = None, fmt: str = "parquet",
                 generator: str = "etl.synthetic", source: dict | None = None) -> list[Path]:
    """Write `raw_dir/date=YYYY-MM-DD/events.{parquet,csv}` per day and `raw_dir/manifest.json`.

    `events` is one frame or an iterable of frames (e.g. `iter_event_days`); the config for the
    manifest comes from the argument or from the frame's `attrs` as set by `generate`. `fmt` is
    "parquet" or "csv" (REES46's own distribution format); both stream, one writer per day.
    Real data (`etl.public_data`) names its reader in `generator` and its arguments in `source`;
    its manifest has no config, so no planted truth is looked for.
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    chunks: Iterable[pd.DataFrame] = [events] if isinstance(events, pd.DataFrame) else events
    writers: dict[str, pq.ParquetWriter | pacsv.CSVWriter] = {}
    paths: dict[str, Path] = {}
    counts: dict[str, int] = {}
    config_dict = dataclasses.asdict(config.resolved()) if config else None
    try:
        for chunk in chunks:
            if config_dict is None:
                config_dict = chunk.attrs.get("synthetic_config")
            day = chunk["event_time"].dt.strftime("%Y-%m-%d")
            for day_str, part in chunk.groupby(day, sort=True):
                if day_str not in writers:
                    paths[day_str] = raw_dir / f"date={day_str}" / f"events.{fmt}"
                    paths[day_str].parent.mkdir(parents=True, exist_ok=True)
                    writers[day_str] = (pq.ParquetWriter(paths[day_str], EVENTS_SCHEMA) if fmt == "parquet"
                                        else pacsv.CSVWriter(paths[day_str], EVENTS_SCHEMA))
                table = pa.Table.from_pandas(part[EVENT_COLUMNS], schema=EVENTS_SCHEMA,
                                             preserve_index=False)
                if fmt == "parquet":
                    writers[day_str].write_table(table, row_group_size=1_000_000)
                else:
                    writers[day_str].write_table(table)
                counts[day_str] = counts.get(day_str, 0) + len(part)
                log.info("wrote %d events for %s", len(part), day_str)
    finally:
        for writer in writers.values():
            writer.close()
    manifest = {"generator": generator, "config": config_dict,
                **({"source": source} if source is not None else {}),
                "files": {d: str(p.relative_to(raw_dir)) for d, p in sorted(paths.items())},
                "events_per_day": dict(sorted(counts.items())), "n_events": sum(counts.values())}
    (raw_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return [paths[d] for d in sorted(paths)]


def read_manifest(path: Path) -> SyntheticConfig:
    """The SyntheticConfig stored in a manifest (path to the file or to its raw directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.exists():
        raise SyntheticDataError(f"no manifest at {path}; write events with etl.synthetic.write_events")
    data = json.loads(path.read_text())
    if not data.get("config"):
        raise SyntheticDataError(f"{path} has no generator config; pass config= to write_events")
    return SyntheticConfig(**data["config"])


def oracle_auc(truth: GroundTruth, impressions: pd.DataFrame) -> float:
    """AUC of the true purchase probability on impressions (`user_id`, `product_id`, `label`)."""
    prob = truth.purchase_probability(impressions["user_id"].to_numpy(),
                                      impressions["product_id"].to_numpy())
    return roc_auc(impressions["label"].to_numpy(), prob)


def roc_auc(label: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the rank statistic (ties get average ranks)."""
    label = np.asarray(label).astype(bool)
    n_pos = int(label.sum())
    n_neg = len(label) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise SyntheticDataError("AUC needs both positive and negative labels")
    ranks = pd.Series(np.asarray(score)).rank(method="average").to_numpy()
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def impressions_from_events(events: pd.DataFrame) -> pd.DataFrame:
    """One row per (user_session, product_id) with `user_id` and label = purchased (pandas)."""
    purchased = (events["event_type"] == "purchase").astype("int8")
    grouped = events.assign(label=purchased).groupby(["user_session", "product_id"], sort=False)
    return grouped.agg(user_id=("user_id", "first"), label=("label", "max")).reset_index()
