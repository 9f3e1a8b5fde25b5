"""Pydantic v2 models for request bodies, query strings and responses; the OpenAPI spec is built from them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from contracts import EVENT_TYPES

MAX_ID = 2**63 - 1  # ids are BIGINT in PostgreSQL


def _not_text(value: Any) -> Any:
    if isinstance(value, (str, bool)):
        raise ValueError("Input should be a JSON integer, not a string or boolean")
    return value


# JSON Schema counts 3.0 as an integer, so accept it; strings and booleans stay errors.
PositiveId = Annotated[int, Field(strict=False, ge=1, le=MAX_ID), BeforeValidator(_not_text)]
CategoryId = Annotated[int, Field(strict=False, ge=0, le=MAX_ID), BeforeValidator(_not_text)]
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


class Body(BaseModel):
    """Request bodies: unknown fields and type coercions are errors, so the client hears about typos."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    """Query strings arrive as text, so they are parsed leniently ("10" -> 10) but bounded."""

    model_config = ConfigDict(extra="ignore")


class CustomerFields(Body):
    name: str | None = Field(None, max_length=200)
    email: str | None = Field(None, max_length=320)


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
    name: str | None = Field(None, max_length=300)
    category_id: CategoryId | None = None
    category_code: str | None = Field(None, max_length=200)
    brand: str | None = Field(None, max_length=200)
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
    customer_id: PositiveId
    product_id: PositiveId
    event_type: EventType
    event_time: datetime | None = Field(None, description="defaults to now (UTC)")
    session: str | None = Field(None, max_length=100)


class InteractionUpdate(Body):
    """PUT replaces every field (missing ones take their defaults); PATCH changes only those sent."""

    event_type: EventType = "view"
    event_time: datetime | None = None
    session: str | None = Field(None, max_length=100)


class InteractionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    customer_id: int
    product_id: int
    event_type: EventType
    event_time: datetime
    session: str | None


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


class Recommendations(BaseModel):
    customer_id: int
    items: list[ScoredItem]
    ranker: Literal["triton", "popular"]
    fallback: bool


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
