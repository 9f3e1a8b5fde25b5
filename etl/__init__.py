"""ETL: synthetic events with a planted truth, raw readers, the fitted feature workflow and stage."""

from etl.errors import EtlError, ReaderError, SplitError, SyntheticDataError, WorkflowError
from etl.ops import Categorify, Clip, FillMissing, HashBucket, LogOp, Normalize, Op
from etl.ops_derived import JoinGroupby, LabelFromEventType, Rename, TargetEncoding, TimeFeatures
from etl.pipeline import EtlConfig, EtlOutputs, build_workflow, run_etl
from etl.public_data import PUBLIC_DATASETS, read_instacart_sample, write_public_events
from etl.readers import (iter_criteo, iter_rees46, read_api_interactions, read_events_dask,
                         read_rees46, select_partitions)
from etl.synthetic import (GroundTruth, SyntheticConfig, SyntheticData, generate,
                           iter_event_days, oracle_auc, write_events)
from etl.workflow import ColumnGroup, Workflow

__all__ = [
    "Categorify", "Clip", "ColumnGroup", "EtlConfig", "EtlError", "EtlOutputs", "FillMissing",
    "GroundTruth", "HashBucket", "JoinGroupby", "LabelFromEventType", "LogOp", "Normalize", "Op",
    "PUBLIC_DATASETS", "ReaderError", "Rename", "SplitError", "SyntheticConfig", "SyntheticData",
    "SyntheticDataError", "TargetEncoding", "TimeFeatures", "Workflow", "WorkflowError",
    "build_workflow", "generate", "iter_criteo", "iter_event_days", "iter_rees46", "oracle_auc",
    "read_api_interactions", "read_events_dask", "read_instacart_sample", "read_rees46", "run_etl",
    "select_partitions", "write_events", "write_public_events",
]
