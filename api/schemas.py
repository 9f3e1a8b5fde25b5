"""Pydantic v2 models for request bodies, query strings and responses; the OpenAPI spec is built from them."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator,
                      model_validator)

from contracts import EVENT_TYPES

MIN_ID = 1
MAX_ID = 2**63 - 1  # ids are BIGINT in PostgreSQL (and SQLite's INTEGER)


# Event times before the Unix epoch are typos or sentinels (0001-01-01 broke reads and the export), and
# ones in the future beyond a clock skew are wrong clocks; the skew comes from the app's config
# (EVENT_TIME_SKEW_S, passed as validation context), this is its default.
EARLIEST_EVENT_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
EVENT_TIME_SKEW_S = 300.0


def _utc_event_time(value: datetime, info: ValidationInfo) -> datetime:
    """Naive times are UTC; aware ones are converted to UTC; both must lie in 1970-01-01 .. now + skew."""
    skew_s = float((info.context or {}).get("event_time_skew_s", EVENT_TIME_SKEW_S))
    latest = datetime.now(timezone.utc) + timedelta(seconds=skew_s)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    if value < EARLIEST_EVENT_TIME or value > latest:  # compared as instants, before any conversion overflows
        raise ValueError(f"event time must lie between {EARLIEST_EVENT_TIME.isoformat()} and now + {skew_s:g} s "
                         f"(now is {datetime.now(timezone.utc).isoformat(timespec='seconds')})")
    return value.astimezone(timezone.utc)


def _email(value: str) -> str:
    """Syntax only (no DNS; RFC 2606 .test addresses allowed): a shop's address book is not ours to
    judge beyond "this is an address"; returns email-validator's normalised form."""
    try:
        return validate_email(value, check_deliverability=False, globally_deliverable=False,
                              test_environment=True).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not an email address: {exc}") from None


def _not_text(value: Any) -> Any:
    if isinstance(value, (str, bool)):
        raise ValueError("Input should be a JSON integer, not a string or boolean")
    return value


# JSON Schema counts 3.0 as an integer, so accept it; strings and booleans stay errors.
PositiveId = Annotated[int, Field(strict=False, ge=MIN_ID, le=MAX_ID), BeforeValidator(_not_text)]
CategoryId = Annotated[int, Field(strict=False, ge=0, le=MAX_ID), BeforeValidator(_not_text)]
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
EventTime = Annotated[datetime, AfterValidator(_utc_event_time)]
MAX_POSITION = 99  # recommendations return at most 100 items (RecommendQuery.k)
Position = Annotated[int, Field(strict=False, ge=0, le=MAX_POSITION), BeforeValidator(_not_text)]
# Checked on POST, PUT and PATCH alike (all three validate through CustomerFields).
Email = Annotated[str, AfterValidator(_email), Field(json_schema_extra={"format": "email"})]


# C0 and C1 control characters (NUL among them): PostgreSQL refuses NUL in text (a 500 before), SQLite
# stored it; no name, brand, code or session needs any of them, so both backends answer 422 alike.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The same rule as the spec states it (Body's validator enforces it with a message naming the character).
Text = Annotated[str, Field(json_schema_extra={"pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"})]


class Body(BaseModel):
    """Request bodies: unknown fields and type coercions are errors, so the client hears about typos."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after", check_fields=False)
    @classmethod
    def _printable(cls, value: Any) -> Any:
        if isinstance(value, str) and (found := CONTROL_CHARACTERS.search(value)):
            raise ValueError(f"control character U+{ord(found.group()):04X} at position {found.start()} is not allowed")
        return value


class Query(BaseModel):
    """Query strings arrive as text, so they are parsed leniently ("10" -> 10) but bounded."""

    model_config = ConfigDict(extra="ignore")


class CustomerFields(Body):
    name: Text | None = Field(None, max_length=200)
    email: Email | None = Field(None, max_length=320)


class CustomerCreate(CustomerFields):
    id: PositiveId | None = Field(None, description="given by the client, or generated")


class CustomerUpdate(CustomerFields):
    """PUT replaces every field (missing ones take their defaults); PATCH changes only those sent."""


class CustomerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str | None
    email: str | None
    created_at: datetime


class ProductFields(Body):
    name: Text | None = Field(None, max_length=300)
    category_id: CategoryId | None = None
    category_code: Text | None = Field(None, max_length=200)
    brand: Text | None = Field(None, max_length=200)
    price: float = Field(0.0, ge=0, le=1e12, allow_inf_nan=False, description="in the catalogue's currency")
    available: bool = True


class ProductCreate(ProductFields):
    id: PositiveId | None = Field(None, description="given by the client, or generated")


class ProductUpdate(ProductFields):
    """PUT replaces every field (missing ones take their defaults); PATCH changes only those sent."""


class ProductOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str | None
    category_id: int | None
    category_code: str | None
    brand: str | None
    price: float
    available: bool


class InteractionCreate(Body):
    # The spec states the rule of _position_needs_recommendation: a `position` key needs an integer
    # recommendation_id beside it.
    model_config = ConfigDict(json_schema_extra={"dependentSchemas": {"position": {
        "required": ["recommendation_id"], "properties": {"recommendation_id": {"type": "integer"}}}}})

    customer_id: PositiveId
    product_id: PositiveId
    event_type: EventType
    event_time: EventTime | None = Field(None, description="defaults to now; stored and returned in UTC; "
                                         "1970-01-01 .. now + a small clock skew")
    session: Text | None = Field(None, max_length=100)
    recommendation_id: PositiveId | None = Field(
        None, description="the `recommendation_id` of the recommendation response this event followed from")
    position: Position | None = Field(None, description="0-based position of the product in that response; "
                                      "needs recommendation_id")

    @model_validator(mode="after")
    def _position_needs_recommendation(self) -> "InteractionCreate":
        if "position" in self.model_fields_set and self.recommendation_id is None:
            raise ValueError("position is given without recommendation_id; send both or neither")
        return self


class InteractionUpdate(Body):
    """PUT replaces every field (missing ones take their defaults); PATCH changes only those sent."""

    event_type: EventType = "view"
    event_time: EventTime | None = None
    session: Text | None = Field(None, max_length=100)


class InteractionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    customer_id: int
    product_id: int
    event_type: EventType
    event_time: datetime
    session: str | None
    recommendation_id: int | None = None
    position: int | None = None


class CustomerBulk(Body):
    items: list[CustomerCreate] = Field(min_length=1)


class ProductBulk(Body):
    items: list[ProductCreate] = Field(min_length=1)


class InteractionBulk(Body):
    items: list[InteractionCreate] = Field(min_length=1)


class BulkResult(BaseModel):
    created: int
    ids: list[int]


class PageQuery(Query):
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_ID)


class InteractionPageQuery(PageQuery):
    customer_id: int | None = Field(None, ge=1, le=MAX_ID)
    product_id: int | None = Field(None, ge=1, le=MAX_ID)


class CustomerPage(BaseModel):
    items: list[CustomerOut]
    total: int
    limit: int
    offset: int


class ProductPage(BaseModel):
    items: list[ProductOut]
    total: int
    limit: int
    offset: int


class InteractionPage(BaseModel):
    items: list[InteractionOut]
    total: int
    limit: int
    offset: int


class RecommendQuery(Query):
    k: int = Field(10, ge=1, le=100)
    category_id: int | None = Field(None, ge=0, le=MAX_ID)
    min_price: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_price: float | None = Field(None, ge=0, allow_inf_nan=False)
    # What to leave out: products the customer has seen (interacted with in any way), purchased, or none.
    # Default: the deployment's RECSYS_EXCLUDE ("seen"), which is also what the offline evaluation excludes.
    exclude: Literal["seen", "purchased", "none"] | None = None
    exclude_purchased: bool | None = None  # older form: true = "purchased", false = "none"

    def exclusion(self, default: str) -> str:
        if self.exclude is not None:
            return self.exclude
        if self.exclude_purchased is not None:
            return "purchased" if self.exclude_purchased else "none"
        return default


class TopKQuery(Query):
    k: int = Field(10, ge=1, le=100)


class ScoredItem(BaseModel):
    product_id: int
    score: float


ExplanationKind = Literal["because_you_viewed", "goes_with_your_items", "similar_to_history", "popular",
                          "popular_in_category", "recommended"]  # serving.explain.ALL_KINDS


class Explanation(BaseModel):
    """Why an item is recommended (serving.explain): the candidate source that put it in the pool, a kind
    the front end renders, a readable reason and the customer's own products behind it."""

    source: str = Field(description="candidate source: item_knn, ease, als, sequential, popularity, or "
                                    "popular for the popular fallback and top-up")
    kind: ExplanationKind
    reason: str
    evidence: list[int] = Field(max_length=3, description="product ids from the customer's history that add "
                                                          "most to the item's score, strongest first")
    category_id: int | None = Field(None, description="the category of a popular_in_category explanation")


class RecommendedItem(ScoredItem):
    explanation: Explanation


class Recommendations(BaseModel):
    customer_id: int
    items: list[RecommendedItem]
    ranker: Literal["triton", "popular"]
    fallback: bool
    recommendation_id: int | None = Field(
        None, description="id of this response's logged impression; send it (and the item's position) with "
        "the interactions that follow; null only when the impression could not be logged")
    arm: str = Field("default", description="experiment arm that served this response: an arm of the running "
                     "experiment, `holdout`, or `default` when no experiment runs")
    experiment_id: str | None = None


EXPERIMENT_ID_PATTERN = "^[a-z0-9][a-z0-9_-]{0,63}$"


class ArmFiguresOut(BaseModel):
    impressions: int
    ctr: float = Field(description="share of impressions with at least one attributed view")
    cart_rate: float
    conversion_rate: float = Field(description="share of impressions with at least one attributed purchase")
    revenue_per_impression: float


class ArmOut(BaseModel):
    version: str | None = Field(description="serving-bundle version; null for the holdout (the champion)")
    share: float
    figures: ArmFiguresOut


class ExperimentOut(BaseModel):
    id: str
    state: Literal["running", "promoted", "rolled_back", "stopped"]
    control: str
    holdout: float
    arms: dict[str, ArmOut]
    guardrails: dict[str, Any]
    started_at: datetime
    ended_at: datetime | None
    decision: dict[str, Any] | None = Field(description="the last evaluation (registry.experiments.Decision)")


class ExperimentList(BaseModel):
    items: list[ExperimentOut]


class ProductList(BaseModel):
    items: list[ScoredItem]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "unreachable"]
    ranker: Literal["ready", "unavailable", "configured", "none"]


class ProblemDetail(BaseModel):
    status: int
    title: str
    detail: str
    field: str | None


class Problem(BaseModel):
    error: ProblemDetail
