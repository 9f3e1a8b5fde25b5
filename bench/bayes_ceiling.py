"""The synthetic shop's Bayes ceiling: the best any recommender can do in expectation from a user's history.

    python -m bench.bayes_ceiling                          # the benchmark's shop, appends bench/results/bayes_ceiling.json
    python -m bench.bayes_ceiling --events 400000,1600000  # the same shop with more events per user

`GroundTruth.interest` (bench.quality's oracle) knows each user's planted taste u (2-d) and bias b. A
recommender only sees the user's training events. The Bayes ceiling knows everything else exactly (every
planted item parameter, the generative process, the priors) and ranks by the posterior expectation of the
user's interest given those events:

    p(u, b | history) ~ N(u; 0, s_u^2 I) N(b; 0, s_b^2)
                        * prod over training impressions of P(view j | u) * P(outcome | u, b, j)

- P(view j | u): the impression's product is drawn by popularity (share 1 - preference_mix) or as the best
  of `candidates` popularity draws by affinity with Gumbel noise. The best-of-K part is computed exactly
  (`pick_probability`), not with the softmax that `GroundTruth.view_probability` uses as its approximation.
- the outcome: purchase with sigmoid(base + b + bias_j + scale <u, v_j> + price_coef price_j); otherwise
  a cart (and maybe a removal) with the generator's 6% noise, else a view only.

Which users shop, how many sessions they have and which sessions fall in the test part do not depend on
u or b (activity and the per-user holdout are independent of taste), so they carry no information. The
generator shows a product drawn twice in one session once (`repeat_correction` adds that to the likelihood).
Not modelled: the end-of-day truncation of the event stream (whole impressions, independent of taste).

The posterior is evaluated on a grid (u on a square grid over +-4 prior std inside the disk of that
radius, b on a line over +-4 prior std) and the expected interest is accumulated chunk by chunk with a
running maximum, so memory stays bounded: for 2,000 users x 3,000 products the work is the sparse histories
times (products x grid) log-likelihood tables and one dense (users x grid) x (grid x products) product. Ranked with seen items excluded and scored with
bench.quality's split, users and metric (`training.quality`: per-user holdout of the last 20% of sessions,
relevant = test carts and purchases, NDCG@10).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from bench.report import RESULTS, add_common_options, append_results, stamp

log = logging.getLogger("bench.bayes_ceiling")
CART_NOISE = 0.06  # etl.synthetic: a non-purchased impression is carted with this chance
_STEP = 0.05  # grid step (in affinity units) of the best-of-K pick probability's tabulation


# ------------------------------------------------------------------------------------------ the model
@dataclass(frozen=True)
class PlantedItems:
    """The planted item parameters over a catalogue's columns (`items`, sorted product ids)."""

    popularity: np.ndarray  # (n,) Zipf probabilities (sum to 1 over the planted catalogue)
    vec: np.ndarray  # (n, d)
    constant: np.ndarray  # (n,) base_logit + product bias + price term: the logit less b and the affinity

    @classmethod
    def of(cls, truth, items: np.ndarray) -> "PlantedItems":
        """`truth` an `etl.synthetic.GroundTruth`; `items` the catalogue's sorted product ids."""
        from models.classic import index_of

        order = np.argsort(truth.product_ids)
        cols = index_of(truth.product_ids[order], np.asarray(items, dtype=np.int64))
        if (cols < 0).any():
            raise ValueError(f"{int((cols < 0).sum())} catalogue products are missing from the synthetic truth")
        rows = order[cols]
        c = truth.config
        return cls(truth.product_popularity[rows], truth.product_vec[rows],
                   c.base_logit + truth.product_bias[rows] + c.price_coef * truth.price_z[rows])


def pick_probability(affinity: torch.Tensor, popularity: torch.Tensor, candidates: int) -> torch.Tensor:
    """(m, n) affinities a_j (scale * <u, v_j>) of m tastes -> (m, n) exact chance that the best of `candidates`
    popularity draws by a_j + Gumbel noise is product j (each row sums to 1 over a full catalogue).

    P(j) = K pop_j E_g[F(a_j + g)^(K-1)], F(x) = sum_c pop_c exp(-exp(a_c - x)) the chance that one draw scores
    below x. With x = a_j + g and s = log(e^g ...) this is a convolution in the affinity: P(j) = K pop_j Psi(a_j),
    Psi(a) = int phi(t) Gamma(t - a) dt, phi(t) = exp(t - e^t) (the density of -g), Gamma(s) = G(e^s)^(K-1),
    G(x) = sum_c pop_c exp(-x e^(a_c)). Gamma is tabulated on a log grid, convolved, and Psi interpolated.
    """
    k = candidates
    dtype = affinity.dtype
    lo, hi = float(affinity.min()) - 1.0, float(affinity.max()) + 1.0
    n_t, n_a = int(round(16.0 / _STEP)) + 1, int(math.ceil((hi - lo) / _STEP)) + 1
    t = -12.0 + _STEP * torch.arange(n_t, dtype=dtype)  # phi's support, [-12, 4] (mass outside < 1e-5)
    a = lo + _STEP * torch.arange(n_a, dtype=dtype)  # where Psi is needed
    s = float(t[0]) - float(a[-1]) + _STEP * torch.arange(n_t + n_a - 1, dtype=dtype)  # t_i - a_m, all of them
    phi = torch.exp(t - torch.exp(t)) * _STEP
    # Gamma at s for every row: G(e^s) = sum_c pop_c exp(-e^(s + a_c)), chunked over s to bound the temporary.
    gamma = torch.empty(affinity.shape[0], len(s), dtype=dtype)
    lam = torch.exp(affinity)  # (m, n)
    for start in range(0, len(s), 32):
        x = torch.exp(s[start:start + 32])
        g = torch.einsum("mqn,n->mq", torch.exp(-x[None, :, None] * lam[:, None, :]), popularity)
        gamma[:, start:start + 32] = g.clamp(min=0.0) ** (k - 1)
    # Psi(a_m) = sum_i phi_i Gamma(t_i - a_m), and t_i - a_m = s[i - m + n_a - 1].
    idx = torch.arange(n_t)[:, None] - torch.arange(n_a)[None, :] + (n_a - 1)
    psi = torch.einsum("mti,t->mi", gamma[:, idx], phi)  # (m, len(a))
    pos = (affinity - a[0]) / _STEP
    left = pos.floor().long().clamp(0, len(a) - 2)
    frac = pos - left
    value = torch.gather(psi, 1, left) * (1 - frac) + torch.gather(psi, 1, left + 1) * frac
    return k * popularity[None, :] * value


def view_probability(taste: torch.Tensor, items: PlantedItems, config, exact: bool = True) -> torch.Tensor:
    """(m, d) tastes -> (m, n) chance that one impression drawn for a user of that taste shows each product:
    popularity (1 - preference_mix) or the best-of-K by affinity (exact; `exact=False`: the softmax
    pop_j exp(a_j) / Z that `GroundTruth.view_probability` uses)."""
    pop = torch.from_numpy(items.popularity).to(taste.dtype)
    affinity = config.interaction_scale * taste @ torch.from_numpy(items.vec).to(taste.dtype).T
    if exact:
        picked = pick_probability(affinity, pop, config.candidates)
    else:
        w = pop[None] * torch.exp(affinity - affinity.max(dim=1, keepdim=True).values)
        picked = w / w.sum(dim=1, keepdim=True)
    return (1 - config.preference_mix) * pop[None] + config.preference_mix * picked


def interest(taste: np.ndarray, bias: np.ndarray, items: PlantedItems, config, exact: bool = True) -> np.ndarray:
    """(m, n) chance that one impression drawn for each (taste, bias) is a cart or purchase of each product:
    `GroundTruth.interest` on the catalogue's columns (with `exact`, the exact best-of-K view probability)."""
    u = torch.from_numpy(np.asarray(taste, dtype=np.float64))
    view = view_probability(u, items, config, exact).numpy()
    logit = items.constant[None] + np.asarray(bias)[:, None] + config.interaction_scale * np.asarray(taste) @ items.vec.T
    bought = 1.0 / (1.0 + np.exp(-logit))
    return view * (bought + (1 - bought) * CART_NOISE)


# ------------------------------------------------------------------------------------------ histories
@dataclass(frozen=True)
class Histories:
    """Each user's training impressions per product (users x n, counts), by what became of them, and the
    impressions in session order (for the generator's collapse of repeats within a session)."""

    impressions: sp.csr_matrix  # every impression (one view each)
    bought: sp.csr_matrix  # impressions that were purchased
    not_bought: sp.csr_matrix  # impressions that were not (carted or not)
    carted_only: sp.csr_matrix  # of those, carted without a purchase
    in_order: np.ndarray  # (N,) product column of every impression, sessions one after another, in view order
    session_start: np.ndarray  # (N,) index in `in_order` of the impression's session's first impression
    owner: sp.csr_matrix  # (users, N) 1 where the impression is the user's


def histories_of(events: pd.DataFrame, users: np.ndarray, items: np.ndarray) -> Histories:
    """Impressions = (user_session, product_id) pairs of the users' events (the generator's unit), by outcome."""
    from models.classic import index_of

    grouped = (events.assign(_buy=events["event_type"].eq("purchase"), _cart=events["event_type"].eq("cart"))
               .groupby(["user_session", "product_id"], sort=False)
               .agg(user_id=("user_id", "first"), buy=("_buy", "any"), cart=("_cart", "any"),
                    seen=("event_time", "min")).reset_index())
    grouped = grouped.sort_values(["user_session", "seen"], kind="stable").reset_index(drop=True)
    rows = index_of(np.asarray(users, dtype=np.int64), grouped["user_id"].to_numpy(np.int64))
    cols = index_of(np.asarray(items, dtype=np.int64), grouped["product_id"].to_numpy(np.int64))
    keep = (rows >= 0) & (cols >= 0)
    rows, cols, session = rows[keep], cols[keep], grouped["user_session"].to_numpy()[keep]
    buy = grouped["buy"].to_numpy(bool)[keep]
    cart = grouped["cart"].to_numpy(bool)[keep]
    first = np.r_[True, session[1:] != session[:-1]] if len(session) else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(len(session)), 0))

    def counts(mask: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix((np.ones(int(mask.sum())), (rows[mask], cols[mask])), shape=(len(users), len(items)))
        m.sum_duplicates()
        return m

    owner = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(len(users), len(rows)))
    return Histories(counts(np.ones(len(rows), bool)), counts(buy), counts(~buy), counts(cart & ~buy),
                     cols, start, owner)


def repeat_correction(view: np.ndarray, history: Histories, session_length_mean: float) -> np.ndarray:
    """(m, n) view probabilities q of m tastes -> (users, m) log-likelihood term of the generator's collapse of
    repeats: a session draws L ~ Geometric(1 / session_length_mean) products i.i.d. from q and shows each
    product once, so the chance of its distinct products j_1..j_m in order of first draw is
    p (1 - p)^(m - 1) prod_i q_(j_i) / (1 - (1 - p) Q_i), Q_i = q_(j_1) + ... + q_(j_i) (summing the repeats
    of the products already shown). The q_(j_i) are the per-impression terms; this adds -sum_i log(1 - (1 - p) Q_i)."""
    keep = 1.0 - 1.0 / session_length_mean
    q = view[:, history.in_order]  # (m, N)
    total = np.cumsum(q, axis=1)
    before = np.where(history.session_start > 0, total[:, np.maximum(history.session_start - 1, 0)], 0.0)
    return history.owner @ (-np.log1p(-keep * (total - before))).T


# ------------------------------------------------------------------------------------------ the posterior
@dataclass(frozen=True)
class Grid:
    """Where the posterior is evaluated: tastes (a disk of the square grid) x biases, with the prior's log
    density at each (uniform cells, so the density is the cell's weight)."""

    taste: np.ndarray  # (g, d)
    bias: np.ndarray  # (h,)
    log_prior_taste: np.ndarray  # (g,)
    log_prior_bias: np.ndarray  # (h,)

    @classmethod
    def of(cls, config, taste_points: int = 61, bias_points: int = 25, width: float = 4.0) -> "Grid":
        if config.latent_dim != 2:
            raise ValueError(f"the grid posterior needs latent_dim 2, got {config.latent_dim}")
        su, sb = config.latent_dim ** -0.25, config.user_bias_std  # etl.synthetic._build_world's priors
        axis = np.linspace(-width * su, width * su, taste_points)
        taste = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
        taste = taste[(taste ** 2).sum(axis=1) <= (width * su) ** 2]
        bias = np.linspace(-width * sb, width * sb, bias_points)
        return cls(taste, bias, -0.5 * (taste ** 2).sum(axis=1) / su ** 2, -0.5 * bias ** 2 / sb ** 2)


@dataclass(frozen=True)
class Posterior:
    """Per user: the posterior expectation of the interest in each product, and the posterior's taste moments."""

    expected_interest: np.ndarray  # (users, n) float32
    taste_mean: np.ndarray  # (users, d)
    taste_cov: np.ndarray  # (users, d, d)
    bias_mean: np.ndarray  # (users,)


def posterior(history: Histories, items: PlantedItems, config, grid: Grid, exact: bool = True,
              repeats: bool = True, outcomes: bool = True, chunk: int = 48) -> Posterior:
    """The grid posterior of each user's (taste, bias) given their training impressions (module docstring),
    and the expectations under it; `chunk` tastes at a time (x every bias). `exact=False`: the softmax view
    probability; `repeats=False`: every impression an independent draw (no `repeat_correction`);
    `outcomes=False`: which products were viewed only, not what became of the views."""
    n_users, n = history.impressions.shape
    vec, constant, bias = torch.from_numpy(items.vec), torch.from_numpy(items.constant), torch.from_numpy(grid.bias)
    h = len(bias)
    # A missed purchase's cart noise (carted with chance 6%, else not) depends on neither u nor b: a constant
    # per user, which the normalisation cancels, so `carted_only` is not read here.
    best = np.full(n_users, -np.inf)
    total = np.zeros(n_users)
    expected = torch.zeros(n_users, n, dtype=torch.float64)
    moments = np.zeros((n_users, 6))  # u1, u2, u1^2, u1 u2, u2^2, b
    log.info("posterior: %d users x %d products, grid %d tastes x %d biases", n_users, n, len(grid.taste), h)
    for start in range(0, len(grid.taste), chunk):
        u = torch.from_numpy(grid.taste[start:start + chunk])
        m = len(u)
        view = view_probability(u, items, config, exact)  # (m, n)
        logit = (constant[None, None] + bias[None, :, None]
                 + config.interaction_scale * (u @ vec.T)[:, None, :]).reshape(m * h, n)
        log_buy = torch.nn.functional.logsigmoid(logit).numpy()
        log_miss = torch.nn.functional.logsigmoid(-logit).numpy()
        ll = (history.bought @ log_buy.T + history.not_bought @ log_miss.T).reshape(n_users, m, h) if outcomes \
            else np.zeros((n_users, m, h))
        ll += (history.impressions @ np.log(view.numpy()).T)[:, :, None]
        if repeats:
            ll += repeat_correction(view.numpy(), history, config.session_length_mean)[:, :, None]
        ll += grid.log_prior_taste[start:start + m][None, :, None] + grid.log_prior_bias[None, None, :]
        ll = ll.reshape(n_users, m * h)
        top = np.maximum(best, ll.max(axis=1))
        rescale = np.exp(best - top)
        weight = np.exp(ll - top[:, None])  # (users, m * h)
        bought = torch.sigmoid(logit).view(m, h, n)
        cells = (view[:, None, :] * (bought + (1 - bought) * CART_NOISE)).reshape(m * h, n)
        expected = expected * torch.from_numpy(rescale)[:, None] + (
            torch.from_numpy(weight.astype(np.float32)) @ cells.float()).double()
        total = total * rescale + weight.sum(axis=1)
        uu, bb = np.repeat(grid.taste[start:start + m], h, axis=0), np.tile(grid.bias, m)
        stats = np.stack([uu[:, 0], uu[:, 1], uu[:, 0] ** 2, uu[:, 0] * uu[:, 1], uu[:, 1] ** 2, bb], axis=1)
        moments = moments * rescale[:, None] + weight @ stats
        best = top
    expected = expected / torch.from_numpy(total)[:, None]
    moments = moments / total[:, None]
    mean = moments[:, :2]
    cov = np.empty((n_users, 2, 2))
    cov[:, 0, 0] = moments[:, 2] - mean[:, 0] ** 2
    cov[:, 0, 1] = cov[:, 1, 0] = moments[:, 3] - mean[:, 0] * mean[:, 1]
    cov[:, 1, 1] = moments[:, 4] - mean[:, 1] ** 2
    return Posterior(expected.numpy().astype(np.float32), mean, cov, moments[:, 5])


def ceiling_scorer(truth, task, grid: Grid | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """bench.quality's `extra` scorer: the Bayes ceiling's expected interest of the task's rows (computed for
    every task user on the first call, from the task's training part)."""
    cache: dict[str, np.ndarray] = {}

    def score(rows: np.ndarray) -> np.ndarray:
        if "all" not in cache:
            cache["all"] = bayes_ceiling(truth, task, grid).expected_interest
        return cache["all"][rows]

    return score


def bayes_ceiling(truth, task, grid: Grid | None = None, **likelihood: bool) -> Posterior:
    """The posterior of every task user from the task's training events (`task.split.train`); `likelihood`:
    `posterior`'s switches (exact, repeats, outcomes)."""
    c = truth.config
    if c.session_focus > 0:
        raise ValueError("the Bayes ceiling models the independent impressions of session_focus 0 only")
    items = PlantedItems.of(truth, task.split.items)
    history = histories_of(task.split.train[task.split.train["user_id"].isin(task.users)], task.users,
                           task.split.items)
    return posterior(history, items, c, grid or Grid.of(c), **likelihood)


# ------------------------------------------------------------------------------------------ the benchmark
VARIANTS: dict[str, dict[str, bool]] = {  # the ceiling's likelihood less one part: what each part is worth
    "views_only": {"outcomes": False},
    "softmax_views": {"exact": False},
    "no_repeats": {"repeats": False},
}


def run(n_events: int, taste_points: int, bias_points: int, baselines: tuple[str, ...],
        sha: str | None = None, variants: tuple[str, ...] = ()) -> list[dict]:
    """The benchmark's shop (bench.quality.synthetic_events: 2,000 users, 3,000 products, 28 days, seed 7) with
    `n_events` events: bench.quality's oracle, the oracle with the exact view probability, the Bayes ceiling, its
    `variants` (VARIANTS) and `baselines` (training.compare's), on bench.quality's split and users (NDCG@10)."""
    from bench.quality import synthetic_events
    from models.classic import top_k
    from training.compare import compare, oracle_scorer
    from training.quality import build_task, list_metrics, paired_difference, user_holdout

    started = time.perf_counter()
    events, truth = synthetic_events(n_events=n_events)
    task = build_task(user_holdout(events, test_fraction=0.2), exclude="seen")
    items = PlantedItems.of(truth, task.split.items)
    user = truth.user_index(task.users)
    grid = Grid.of(truth.config, taste_points, bias_points)
    fit_start = time.perf_counter()
    post = bayes_ceiling(truth, task, grid)
    ceiling_seconds = time.perf_counter() - fit_start
    scores = {
        "oracle": oracle_scorer(truth, task)(np.arange(len(task.users))),
        "oracle_exact_view": interest(truth.user_vec[user], truth.user_bias[user], items, truth.config).astype(np.float32),
        "bayes_ceiling": post.expected_interest,
    }
    for variant in variants:
        scores[f"bayes_ceiling_{variant}"] = bayes_ceiling(truth, task, grid, **VARIANTS[variant]).expected_interest
    metrics = {name: list_metrics(task, top_k(s, task.excluded, 10), 10) for name, s in scores.items()}
    if baselines:
        comparison = compare(task, None, None, k=10, baselines=baselines, n_boot=200)
        metrics |= {name: r.metrics for name, r in comparison.results.items()}
    error = np.sqrt(((post.taste_mean - truth.user_vec[user]) ** 2).sum(axis=1))
    spread = np.sqrt(np.trace(post.taste_cov, axis1=1, axis2=2))
    impressions = float(histories_of(task.split.train[task.split.train["user_id"].isin(task.users)], task.users,
                                     task.split.items).impressions.sum(axis=1).mean())
    oracle = float(metrics["oracle"].ndcg.mean())
    ceiling = float(metrics["bayes_ceiling"].ndcg.mean())
    common = {"benchmark": "bayes_ceiling", "unit": "ndcg@10", "device": f"cpu-{os.cpu_count()}core",
              **stamp("bench.bayes_ceiling", sha, modules=("numpy", "torch")),
              "config": {"dataset": "synthetic", "events": n_events, "users": len(task.users),
                         "items": task.n_items, "split": "user_holdout(0.2 of sessions)", "exclude": "seen",
                         "train_impressions_per_user": impressions, "grid": [len(grid.taste), len(grid.bias)]}}
    rows = []
    for name, result in metrics.items():
        value = float(result.ndcg.mean())
        diff = paired_difference(result, metrics["bayes_ceiling"]) if name != "bayes_ceiling" else None
        figures = {"share_of_oracle": value / oracle, "share_of_ceiling": value / ceiling,
                   **({"minus_ceiling": diff.mean, "minus_ceiling_ci": [diff.low, diff.high]} if diff else {})}
        if name == "bayes_ceiling":
            figures |= {"taste_error_mean": float(error.mean()), "taste_posterior_sd_mean": float(spread.mean()),
                        "seconds": ceiling_seconds}
        rows.append(common | {"metric": f"{name} ndcg@10", "method": name, "value": value, "baseline": oracle,
                              "ratio": value / oracle, "figures": figures,
                              "wall_seconds": time.perf_counter() - started})
        print(f"events {n_events:>9,d} impressions/user {impressions:6.1f} {name:18s} ndcg@10 {value:.4f}  "
              f"{value / oracle:6.1%} of oracle  {value / ceiling:6.1%} of ceiling"
              + (f"  minus ceiling {diff.mean:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}]" if diff else ""), flush=True)
    print(f"events {n_events:>9,d} posterior taste: mean error {error.mean():.3f}, mean posterior sd {spread.mean():.3f} "
          f"(prior sd {np.sqrt(2) * truth.config.latent_dim ** -0.25:.3f}); {ceiling_seconds:.0f} s", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", default="400000", help="comma list of shop sizes (events; 400000 = bench.quality's)")
    parser.add_argument("--taste-points", type=int, default=61, help="grid points per taste dimension")
    parser.add_argument("--bias-points", type=int, default=25, help="grid points of the user bias")
    parser.add_argument("--baselines", default="popularity,ease", help="training.compare baselines to add ('' none)")
    parser.add_argument("--variants", default="", help=f"comma list of ceiling variants to add, of {sorted(VARIANTS)}")
    add_common_options(parser, RESULTS / "bayes_ceiling.json")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = []
    for n_events in (int(e) for e in args.events.split(",")):
        rows += run(n_events, args.taste_points, args.bias_points,
                    tuple(b for b in args.baselines.split(",") if b), args.git_sha,
                    tuple(v for v in args.variants.split(",") if v))
    if not args.no_write:
        append_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
