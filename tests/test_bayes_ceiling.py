"""The synthetic shop's Bayes ceiling (bench.bayes_ceiling): its view likelihood is the generator's, and the
posterior over a user's planted taste concentrates on the truth as the user's history grows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.bayes_ceiling import Grid, PlantedItems, histories_of, posterior, view_probability
from etl.synthetic import SyntheticConfig, _pick_products, generate

# Few users with long histories: ~1,500 impressions each over 200 products.
CONFIG = SyntheticConfig(n_events=36_000, days=2, seed=3, n_users=20, n_products=200)


@pytest.fixture(scope="module")
def shop():
    return generate(CONFIG)


def test_exact_view_probability_matches_the_generators_draws(shop):
    """Frequencies of `etl.synthetic._pick_products` (popularity or best-of-8 by affinity + Gumbel) for one user
    against `view_probability(exact=True)`: standardised residuals of a correct likelihood are ~N(0, 1), while
    the softmax approximation of `GroundTruth.view_probability` is measurably off (for the two users of the
    strongest taste, where the two differ most)."""
    truth = shop.truth
    items = PlantedItems.of(truth, np.sort(truth.product_ids))
    order = np.argsort(truth.product_ids)
    n = 400_000
    for user in np.argsort(-np.linalg.norm(truth.user_vec, axis=1))[:2]:
        picked = _pick_products(truth, np.random.default_rng(user), np.full(n, user))
        freq = np.bincount(picked, minlength=len(order))[order] / n
        taste = torch.from_numpy(truth.user_vec[user:user + 1])
        exact = view_probability(taste, items, truth.config, exact=True)[0].numpy()
        softmax = view_probability(taste, items, truth.config, exact=False)[0].numpy()
        assert exact.sum() == pytest.approx(1.0, abs=1e-3)
        sd = np.sqrt(exact * (1 - exact) / n)
        z_exact, z_softmax = (exact - freq) / sd, (softmax - freq) / sd
        assert np.mean(z_exact ** 2) < 1.5, np.mean(z_exact ** 2)
        assert np.abs(z_exact).max() < 5.0
        assert np.mean(z_softmax ** 2) > 3.0  # the approximation the exact form replaces


def test_posterior_concentrates_on_the_planted_taste_as_history_grows(shop):
    """Each user's first 5, 50 and all (~400) sessions (~4 impressions each): the posterior's spread shrinks, its
    mean moves onto the planted taste, and the posterior is calibrated: the planted taste's standardised distance
    from the posterior mean has mean square about 1 (without the collapse of repeats in a session, this shop's
    200 products give about 4) and stays below 4 throughout."""
    truth = shop.truth
    events = shop.events.sort_values("event_time", kind="stable")
    users, items = np.sort(truth.user_ids), np.sort(truth.product_ids)
    planted = truth.user_vec[truth.user_index(users)]
    grid = Grid.of(truth.config, taste_points=61, bias_points=15)
    catalogue = PlantedItems.of(truth, items)
    first_seen = events.groupby("user_session")["event_time"].transform("min")
    session_rank = first_seen.groupby(events["user_id"]).rank(method="dense")
    error, spread = [], []
    for sessions in (5, 50, None):  # ~4 impressions a session
        part = events if sessions is None else events[session_rank <= sessions]
        post = posterior(histories_of(part, users, items), catalogue, truth.config, grid)
        distance = np.sqrt(((post.taste_mean - planted) ** 2).sum(axis=1))
        sd = np.sqrt(np.trace(post.taste_cov, axis1=1, axis2=2) / 2)
        z = np.abs(post.taste_mean - planted) / np.sqrt(np.diagonal(post.taste_cov, axis1=1, axis2=2))
        assert z.max() < 4.0, (sessions, z.max())
        assert np.mean(z ** 2) < 2.0, (sessions, np.mean(z ** 2))
        error.append(float(distance.mean()))
        spread.append(float(sd.mean()))
    assert spread[0] > spread[1] > spread[2], spread
    assert error[0] > error[1] > error[2], error
    assert spread[2] < 0.5 * spread[0] and error[2] < 0.5 * error[0], (spread, error)
