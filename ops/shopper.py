"""Simulated customers shopping through the running API, for the demo's online experiment.

Each customer prefers the categories they bought or viewed most in their history. Shown a
recommendation, a customer scans it top down and clicks (views) an item with probability
`click_match` when it is of a preferred category, `click_other` otherwise, discounted by position; a
click is carted with `p_cart` and a cart bought with `p_buy`. Every event is posted to POST
/interactions with the response's `recommendation_id` and the item's `position`, so the experiment
attributes it to the arm that served the response. At most one click per visit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import requests

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Behaviour:
    click_match: float = 0.30
    click_other: float = 0.04
    p_cart: float = 0.5
    p_buy: float = 0.6
    position_discount: float = 0.3  # click probability / (1 + discount * position)

    def react(self, rng: np.random.Generator, match: bool, position: int) -> list[str]:
        """What a customer does with the item at `position`: [] (no click), or a view, then maybe a cart,
        then maybe a purchase. One draw for the click, one more per step taken."""
        p_click = self.click_match if match else self.click_other
        if rng.random() >= p_click / (1 + self.position_discount * position):
            return []
        events = ["view"]
        if rng.random() < self.p_cart:
            events.append("cart")
            if rng.random() < self.p_buy:
                events.append("purchase")
        return events


@dataclass
class Visits:
    """What the simulation did: responses per arm and events posted."""

    visits: int = 0
    per_arm: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)


def preferences(events: "pd.DataFrame", top: int = 2) -> dict[int, set[int]]:
    """customer -> their `top` most frequent categories in `events` (user_id, category_id columns)."""
    counts = events.groupby(["user_id", "category_id"]).size().rename("n").reset_index()
    counts = counts.sort_values(["user_id", "n"], ascending=[True, False])
    return {int(user): set(int(c) for c in group["category_id"].head(top))
            for user, group in counts.groupby("user_id")}


def shop(api_url: str, liked: Mapping[int, set[int]], category_of: Mapping[int, int], visits: int,
         seed: int = 0, k: int = 10, behaviour: Behaviour = Behaviour(), timeout_s: float = 30.0) -> Visits:
    """`visits` recommendation requests by random customers of `liked`, each followed by what the
    customer does; raises on any non-2xx answer (the API must accept what the simulation sends)."""
    rng = np.random.default_rng(seed)
    customers = sorted(liked)
    done = Visits()
    with requests.Session() as http:
        for _ in range(visits):
            customer = customers[int(rng.integers(len(customers)))]
            got = http.get(f"{api_url}/customers/{customer}/recommendations", params={"k": k}, timeout=timeout_s)
            got.raise_for_status()
            body = got.json()
            done.visits += 1
            arm = body.get("arm") or "none"
            done.per_arm[arm] = done.per_arm.get(arm, 0) + 1
            for position, item in enumerate(body["items"]):
                events = behaviour.react(rng, category_of.get(item["product_id"]) in liked[customer], position)
                if not events:
                    continue
                for event in events:
                    posted = http.post(f"{api_url}/interactions", timeout=timeout_s, json={
                        "customer_id": customer, "product_id": item["product_id"], "event_type": event,
                        "recommendation_id": body["recommendation_id"], "position": position})
                    posted.raise_for_status()
                    done.events[event] = done.events.get(event, 0) + 1
                break
    return done
