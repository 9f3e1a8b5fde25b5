"""Names every stage shares, written once: event types, the raw event columns, the ETL's file names.

The store's SQL CHECK, the API's `EventType`, the Great Expectations suite, the ETL and the
synthetic generator all read them from here (docs/CONTRACTS.md describes the files themselves).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# What a customer did with a product, in funnel order; the only values `event_type` may take.
EVENT_TYPES = ("view", "cart", "remove_from_cart", "purchase")
# Event type -> token id of the sequential model's event-type embedding; 0 is padding (and unknown).
EVENT_CODES = {name: i + 1 for i, name in enumerate(EVENT_TYPES)}

# A raw event in the REES46 layout, in file order (CSV header, Parquet schema, API export).
RAW_EVENT_COLUMNS = (
    "event_time", "event_type", "product_id", "category_id", "category_code",
    "brand", "price", "user_id", "user_session",
)

SCHEMA_FILE = "schema.json"  # the ETL's column contract that training and serving read
WORKFLOW_DIR = "workflow"  # the fitted ETL workflow, next to the schema
WORKFLOW_FILE = "workflow.json"  # inside WORKFLOW_DIR: the workflow's ops and their parameters
RECOMMENDER_DIR = "recommender"  # a training run's served recommender (recommender.pkl, ranker.pt, schema.json)


class ContractError(ValueError):
    """A value that should follow one of these contracts does not (e.g. RECSYS_EVENT_WEIGHTS)."""


@dataclass(frozen=True)
class EventWeights:
    """How much one event says about interest (RECSYS_EVENT_WEIGHTS): the weights of the interaction
    matrices the candidate sources are fitted on, of a customer's history row, and of the API's
    popularity (`/products/popular`, the popular fallback). One meaning everywhere."""

    # A view is mostly an impression (the shop chose what to show). Chosen on the synthetic shop's inner
    # validation split (NDCG@10, seen excluded), 0.125 / 0.1 / 0.25: popularity 0.1160 / 0.1165 / 0.1140,
    # item-kNN 0.1118 / 0.1135 / 0.1048, Mult-DAE 0.1236 / 0.1245 / 0.1233, EASE and ALS tied; 1/8 rather than
    # 0.1 because it is exact in binary, so SQL and the in-memory catalogue sum the same popularity bit for bit.
    view: float = 0.125
    cart: float = 0.5
    purchase: float = 1.0
    remove_from_cart: float = 0.0  # a removal from the cart says nothing positive

    @classmethod
    def parse(cls, text: str) -> "EventWeights":
        """`"view=0.125,cart=0.5,purchase=1"`; unnamed event types keep their default."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, number = part.partition("=")
            if not sep or name.strip() not in EVENT_TYPES:
                raise ContractError(f"event weight {part!r} is not `<event_type>=<number>` with one of "
                                    f"{sorted(EVENT_TYPES)}")
            try:
                values[name.strip()] = float(number)
            except ValueError as exc:
                raise ContractError(f"event weight {part!r}: {number!r} is not a number") from exc
        if any(not math.isfinite(v) or v < 0 for v in values.values()):
            raise ContractError(f"event weights must be finite and >= 0, got {values}")
        return cls(**values)

    def as_dict(self) -> dict[str, float]:
        """event type -> weight, for every type in EVENT_TYPES."""
        return asdict(self)

    def of(self, event_type: Any) -> Any:
        """Per-row weights of a pandas Series of event types as a float32 array (unknown types weigh 0)."""
        return event_type.map(self.as_dict()).fillna(0.0).to_numpy(dtype="float32")
