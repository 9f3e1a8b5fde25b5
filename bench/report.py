"""What every benchmark shares: where results go, how a result row is stamped (machine, versions,
date, git sha, command), the common command-line options; and, run as `python -m bench.report`, the
latest figure of every (benchmark, metric, config, device) in bench/results/ as a Markdown table.

Standard library only: the GPU machines run the benchmarks with torch/numpy/pandas/pyarrow/triton and
no Airflow or MLflow, so nothing here may import the project's heavier packages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def git_sha(short: bool = False, dirty_paths: tuple[str, ...] = ()) -> str:
    """The checkout's commit, "unknown" where there is no .git (the GPU machine: pass --git-sha);
    suffixed "-dirty" when any of `dirty_paths` has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha = git("rev-parse", *(["--short"] if short else []), "HEAD") or "unknown"
        return sha + ("-dirty" if dirty_paths and git("status", "--porcelain", "--", *dirty_paths) else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def now() -> str:
    """UTC, to the second, as every result's `date`."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def versions(*modules: str) -> dict[str, str]:
    """Python's and each named module's version (modules not installed are left out)."""
    out = {"python": platform.python_version()}
    for name in modules:
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except ImportError:
            continue
    return out


def machine() -> dict[str, object]:
    """The host a figure was measured on: processor, cores, load when the run started."""
    return {"host": platform.node(), "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2)}


def command(module: str, argv: list[str] | None = None) -> str:
    """How to re-run this measurement: `python -m bench.<name> <args>`."""
    return " ".join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def stamp(module: str, sha: str | None = None, modules: tuple[str, ...] = ("numpy",),
          argv: list[str] | None = None) -> dict[str, object]:
    """The fields every result row carries besides its figure: command, date, git_sha, versions, machine."""
    return {"command": command(module, argv), "date": now(), "git_sha": sha or git_sha(),
            "versions": versions(*modules), "machine": machine()}


def add_common_options(parser: argparse.ArgumentParser, results: Path) -> argparse.ArgumentParser:
    """--out (the results file, appended to) and --git-sha (recorded; the GPU machine has no .git)."""
    parser.add_argument("--out", type=Path, default=results, help=f"results file to append to (default {results})")
    parser.add_argument("--git-sha", default=None, help="recorded as git_sha (default: this checkout's HEAD)")
    return parser


def append_results(path: Path, rows: list[dict]) -> None:
    """Append rows to a results file (a JSON list): every run stays on record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(existing + rows, indent=2, default=float) + "\n")


def _config(config: object) -> str:
    if not isinstance(config, dict):
        return str(config)
    keys = ("name", "config", "batch_size", "rows", "catalogue", "products", "candidates", "events", "rate_rps")
    shown = [f"{k}={config[k]}" for k in keys if k in config]
    short = [f"{k}={v}" for k, v in config.items() if isinstance(v, (int, float, str)) and len(str(v)) < 24]
    return ", ".join(shown or short[:3])


def latest(entries: list[dict]) -> list[dict]:
    """Keep the newest entry per (benchmark, metric, config, device)."""
    newest: dict[tuple, dict] = {}
    for e in sorted(entries, key=lambda e: str(e.get("date", ""))):
        key = (e.get("benchmark"), e.get("metric"), json.dumps(e.get("config"), sort_keys=True), e.get("device"))
        newest[key] = e
    return list(newest.values())


def main() -> int:
    rows = []
    for path in sorted(RESULTS.glob("*.json")):
        rows += latest(json.loads(path.read_text()))
    print("| benchmark | metric | config | device | value | baseline | ratio |")
    print("|---|---|---|---|---|---|---|")
    for e in rows:
        value, base = e.get("value"), e.get("baseline")
        unit = e.get("unit", "")
        print(f"| {e.get('benchmark')} | {e.get('metric')} | {_config(e.get('config'))} | {e.get('device')} "
              f"| {value:,.6g} {unit} | {base:,.6g} | {e.get('ratio')} |" if isinstance(value, (int, float))
              and isinstance(base, (int, float)) else
              f"| {e.get('benchmark')} | {e.get('metric')} | {_config(e.get('config'))} | {e.get('device')} "
              f"| {value} {unit} | {base} | {e.get('ratio')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
