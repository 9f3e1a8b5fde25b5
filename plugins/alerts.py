"""Callbacks Airflow calls when a run misses its deadline (Airflow 3's replacement for SLAs)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


async def nightly_deadline_missed(**kwargs: object) -> None:
    """Runs in the triggerer when the nightly run is still going past its deadline."""
    context = kwargs.get("context") or {}
    dag_run = context.get("dag_run") if isinstance(context, dict) else None
    log.error("nightly_training missed its deadline: dag_run=%s; check the train task first", dag_run)
