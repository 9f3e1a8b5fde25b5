"""Great Expectations 1.x wiring: one ephemeral context per run, checkpoints that feed Data Docs.

The context is in memory (fast to create, nothing shared between runs); checkpoint results go to
its validation results store, and `build_docs` renders them once into a file-backed Data Docs
site in `<out_dir>/data_docs/`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import ProgressBarsConfig

from validation.errors import ValidationError

log = logging.getLogger(__name__)
_SITE = "validation_run"
_RESULT_FORMAT = {"result_format": "COMPLETE"}


class SuiteRunner:
    """Runs one row suite and one table suite over pandas frames and maps failures to reasons."""

    def __init__(self, docs_dir: Path, row_suite: gx.ExpectationSuite, table_suite: gx.ExpectationSuite) -> None:
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._drop_default_site()
        self.context.add_data_docs_site(site_name=_SITE, site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        self.docs_index = docs_dir / "index.html"
        source = self.context.data_sources.add_pandas("raw_events")
        self._rows = self._checkpoint(source, row_suite, "rows")
        self._table = self._checkpoint(source, table_suite, "table")
        self.row_suite, self.table_suite = row_suite, table_suite

    def _drop_default_site(self) -> None:
        """An ephemeral context makes an empty temp dir for its default site; ours replaces it."""
        for name, site in dict(self.context.variables.data_docs_sites or {}).items():
            base = site.get("store_backend", {}).get("base_directory")
            self.context.delete_data_docs_site(name)
            if base and Path(base).is_dir() and not any(Path(base).iterdir()):
                Path(base).rmdir()

    def _checkpoint(self, source, suite: gx.ExpectationSuite, name: str) -> gx.Checkpoint:
        suite = self.context.suites.add(suite)
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name)
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite.name}_definition", data=batch, suite=suite))
        return self.context.checkpoints.add(gx.Checkpoint(
            name=f"{suite.name}_checkpoint", validation_definitions=[definition],
            actions=[],
            result_format=_RESULT_FORMAT))

    def build_docs(self) -> Path:
        """Render every stored result of this run once (per-chunk rebuilds recompile all templates)."""
        self.context.build_data_docs(site_names=[_SITE])
        return self.docs_index

    def expectations(self) -> dict[str, dict]:
        """Reason code -> the expectation behind it, for the report."""
        out = {}
        for suite in (self.row_suite, self.table_suite):
            for expectation in suite.expectations:
                config = expectation.configuration
                out[expectation.meta["reason"]] = {"suite": suite.name, "type": config.type,
                                                   "kwargs": _jsonable(config.kwargs)}
        return out

    def _run(self, checkpoint: gx.Checkpoint, frame: pd.DataFrame, run_name: str):
        result = checkpoint.run(batch_parameters={"dataframe": frame},
                                run_id=RunIdentifier(run_name=run_name))
        (validation,) = result.run_results.values()
        stats = validation.statistics
        log.debug("%s: %s of %s expectations met", run_name, stats["successful_expectations"],
                  stats["evaluated_expectations"])
        for item in validation.results:
            if item.exception_info.get("raised_exception"):
                raise ValidationError(
                    f"expectation {item.expectation_config.type} crashed on {run_name}: "
                    f"{item.exception_info.get('exception_message')}")
        return validation

    def failing_rows(self, frame: pd.DataFrame, run_name: str) -> dict[str, np.ndarray]:
        """Reason code -> index labels of the rows of `frame` that fail it."""
        validation = self._run(self._rows, frame, run_name)
        failing: dict[str, np.ndarray] = {}
        for item in validation.results:
            if not item.success:
                index = item.result.get("unexpected_index_list") or []
                failing[item.expectation_config.meta["reason"]] = np.asarray(index, dtype=np.int64)
        return failing

    def table_failures(self, frame: pd.DataFrame, run_name: str) -> list[str]:
        """Reason codes of the failing table-level expectations; extra columns are named."""
        validation = self._run(self._table, frame, run_name)
        reasons = []
        for item in validation.results:
            if item.success:
                continue
            reason = item.expectation_config.meta["reason"]
            if reason == "unexpected_column":
                extra = (item.result.get("details", {}).get("mismatched", {}).get("unexpected") or [])
                if not extra:
                    continue  # a set mismatch caused only by missing columns is reported by those
                reasons.extend(f"unexpected_column:{name}" for name in extra)
            else:
                reasons.append(reason)
        return reasons


def _jsonable(kwargs: dict) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in kwargs.items()}
