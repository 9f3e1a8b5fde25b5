"""A simulated shop for experiment tests: customers with a planted preference shop through the real API.

Truth: every customer prefers one category. Shown a recommendation, a customer scans it top down and
reacts to each item as `ops.shopper.Behaviour` says (a click more likely for an item of their category,
discounted by position; a click maybe carted, a cart maybe bought): the demo's shoppers' behaviour.
Every event is posted to POST /interactions with the response's recommendation_id and the position.

Rankers (served recommenders, tests.recommenders): `PreferenceRanker` knows the truth (scores the
customer's category first), `ContraryRanker` ranks it last; both are deterministic, so two arms with
the same ranker form an A/A test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flask.testing import FlaskClient

from ops.shopper import Behaviour
from tests.recommenders import TableRecommender


@dataclass(frozen=True)
class ShopTruth:
    n_customers: int = 120
    n_categories: int = 6
    per_category: int = 12
    behaviour: Behaviour = Behaviour()  # click, cart and buy probabilities (the demo's shoppers' own)
    seed: int = 0

    def preference(self, customer_id: int) -> int:
        return 1 + (customer_id * 7 + self.seed) % self.n_categories  # planted, known to the good ranker

    def category(self, product_id: int) -> int:
        return 1 + (product_id - 1) // self.per_category


class PreferenceRanker(TableRecommender):
    """Ranks the customer's preferred category first (the planted truth, read off the customer's first
    event: `open_shop`'s view in that category); ties broken by product id. A served recommender
    (`serving.request_path.ServedRecommender`) over every product of the shop."""

    def __init__(self, truth: ShopTruth) -> None:
        super().__init__(np.arange(1, truth.n_categories * truth.per_category + 1))
        self.truth = truth
        self.category = np.array([truth.category(p) for p in self.items.tolist()])

    def scores(self, product_ids: np.ndarray, event_types: np.ndarray) -> np.ndarray:
        preferred = self.truth.category(int(product_ids[0]))
        match = self.category == preferred
        return match.astype(np.float64) + 1e-4 * (self.items % 97)


class ContraryRanker(PreferenceRanker):
    """Ranks the customer's preferred category last: a worse model."""

    def scores(self, product_ids: np.ndarray, event_types: np.ndarray) -> np.ndarray:
        return 1.0 - super().scores(product_ids, event_types)


def _bulk(client: FlaskClient, path: str, items: list[dict], size: int = 50) -> None:
    for start in range(0, len(items), size):  # the test apps' BULK_LIMIT is 50
        posted = client.post(path, json={"items": items[start:start + size]})
        assert posted.status_code == 201, posted.json


def open_shop(client: FlaskClient, truth: ShopTruth) -> None:
    """Products of every category, the customers, and one view in each customer's category, so every
    customer has a history (recommendations go through the ranker, not popular items)."""
    n_products = truth.n_categories * truth.per_category
    _bulk(client, "/products/bulk", [{"id": p, "category_id": truth.category(p), "price": float(5 + p % 20)}
                                     for p in range(1, n_products + 1)])
    _bulk(client, "/customers/bulk", [{"id": c} for c in range(1, truth.n_customers + 1)])
    _bulk(client, "/interactions/bulk", [{"customer_id": c, "product_id": (truth.preference(c) - 1) * truth.per_category + 1,
                                          "event_type": "view"} for c in range(1, truth.n_customers + 1)])


def shop(client: FlaskClient, truth: ShopTruth, visits: int, seed: int, k: int = 5) -> dict[str, int]:
    """`visits` recommendation requests by random customers, each followed by what the customer does;
    returns the responses per arm."""
    rng = np.random.default_rng(seed)
    arms: dict[str, int] = {}
    for _ in range(visits):
        customer = int(rng.integers(1, truth.n_customers + 1))
        # exclude=none: a customer sees the shelf again on the next visit, whatever they did before
        got = client.get(f"/customers/{customer}/recommendations?k={k}&exclude=none")
        assert got.status_code == 200, got.json
        body = got.json
        arms[body["arm"]] = arms.get(body["arm"], 0) + 1
        for position, item in enumerate(body["items"]):
            events = truth.behaviour.react(rng, truth.category(item["product_id"]) == truth.preference(customer), position)
            if not events:
                continue
            for event in events:
                posted = client.post("/interactions", json={
                    "customer_id": customer, "product_id": item["product_id"], "event_type": event,
                    "recommendation_id": body["recommendation_id"], "position": position})
                assert posted.status_code == 201, posted.json
            break  # one click per visit
    return arms
