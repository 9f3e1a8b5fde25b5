"""Print the latest figure of every (benchmark, metric, config, device) in bench/results/ as a
Markdown table, for the README: `python bench/report.py`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


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
