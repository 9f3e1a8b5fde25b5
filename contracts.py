"""Names every stage shares, written once: event types, the raw event columns, the ETL's file names.

The store's SQL CHECK, the API's `EventType`, the Great Expectations suite, the ETL and the
synthetic generator all read them from here (docs/CONTRACTS.md describes the files themselves).
"""

from __future__ import annotations

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
