"""CLI: `python -m validation --input PATH... --out DIR --window-start ISO --window-end ISO`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from settings import configure_logging
from validation.config import ValidationConfig
from validation.errors import ValidationError, ValidationFailed
from validation.runner import validate_events


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m validation", description=__doc__)
    parser.add_argument("--input", nargs="+", required=True, type=Path, help="raw event files (CSV/Parquet)")
    parser.add_argument("--out", required=True, type=Path, help="output directory of this run")
    parser.add_argument("--window-start", required=True, type=datetime.fromisoformat)
    parser.add_argument("--window-end", required=True, type=datetime.fromisoformat)
    parser.add_argument("--threshold", type=float, default=0.05, help="max quarantined fraction")
    parser.add_argument("--previous-profile", type=Path, default=None, help="profile.json of the last run")
    parser.add_argument("--chunk-rows", type=int, default=1_000_000)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()
    try:
        config = ValidationConfig(window_start=args.window_start, window_end=args.window_end,
                                  bad_row_threshold=args.threshold, previous_profile=args.previous_profile,
                                  chunk_rows=args.chunk_rows)
        report = validate_events(args.input, args.out, config)
    except ValidationFailed as failed:
        print(json.dumps(failed.report.to_json(), indent=2, default=str))
        print(str(failed), file=sys.stderr)
        return 1
    except ValidationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
