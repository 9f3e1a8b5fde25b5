"""CPU time per recommendation in the API process, in-process, for this checkout against another one.

    python -m bench.api_cpu --baseline-repo /work/main   # after `python -m bench.api_latency` built a world

Why this and not only `make bench-api`: on a shared 2-core machine the wall-clock figures of a load test
move with whatever else runs, while the CPU seconds a request costs the API process do not (much). This
loop serves GET /customers/<id>/recommendations?k=10 through the Flask test client of the app that
gunicorn would load (`api.create_app()` from the same RECSYS_* settings as `bench.api_latency`: auth on,
rate limits on, one impression row per response), with the ranker on a real local Triton, one request
at a time, over customers drawn with a fixed seed. Per request it records the API process's CPU time
(`time.process_time`, all its threads) and Triton's (its process group's utime + stime from /proc).

Each side (this checkout; `--baseline-repo`, e.g. the main branch) runs in a fresh child process with
that checkout first on the import path, against the same world, the same Triton and the same customers,
in alternating rounds (A B A B ...) so that the machine's load hits both alike; each round gets its own
copy of the store. The children write every response body; the parent checks that both sides served
the same lists, scores and explanations, and writes one row per figure to bench/results/api_cpu.json.

The world (synthetic shop, fitted recommender, serving bundle, store) is `bench.api_latency.build_world`'s,
built into `--workdir` once and reused by later runs (`--rebuild` to build it again).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report

API_KEY = "bench-" + "c" * 32
WORLD_FILE = "world.json"
log = logging.getLogger("bench.api_cpu")


# ---------------------------------------------------------------- the world (built once per workdir)
def load_world(workdir: Path, rebuild: bool, sequential: str) -> dict[str, Any]:
    """`bench.api_latency.build_world`'s world in `workdir`, built when missing (or `rebuild`)."""
    meta = workdir / WORLD_FILE
    if meta.exists() and not rebuild:
        world = json.loads(meta.read_text())
        if world.get("sequential_source") == sequential:
            return world
    from bench.api_latency import build_world

    built = build_world(workdir, 200_000, 2_000, 10_000, sequential)
    world = {"bundle": str(built["bundle"]), "db": str(built["db"]), "home": str(built["home"]),
             "customers": built["customers"], "n_products": built["n_products"], "sources": built["sources"],
             "pool_size": built["pool_size"], "sequential_source": sequential, "interactions": built["interactions"],
             "fitted_mode": built["fitted_mode"], "ranker_valid_ndcg_at_10": built["ranker_valid_ndcg_at_10"]}
    meta.write_text(json.dumps(world))
    return world


def _group_cpu_s(pgid: int) -> float:
    """utime + stime (seconds) of every live process in the process group `pgid`."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...; utime, stime at 11, 12
            total += int(fields[11]) + int(fields[12])
    return total / tick


# ---------------------------------------------------------------- one side, in a child process
def child(args: argparse.Namespace) -> None:
    """Serve `--requests` recommendations in this process (the checkout on sys.path) and write the figures."""
    home = Path(args.home)
    os.environ.update({"RECSYS_HOME": str(home), "RECSYS_DATABASE_URL": f"sqlite:///{args.db}",
                       "RECSYS_API_KEYS": f"{API_KEY}:ingest", "RECSYS_API_KEY_PEPPER": "bench-pepper",
                       "RECSYS_RATELIMIT_DEFAULT": "10000000 per minute", "RECSYS_RATELIMIT_STORAGE": "memory://",
                       "RECSYS_TRITON_HOST": args.triton_host, "RECSYS_TRITON_HTTP_PORT": args.triton_port})
    logging.disable(logging.WARNING)
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from api import create_app, warm_up
    from settings import Settings

    threads = Settings.from_env().api_compute_threads  # what api/gunicorn_conf.py's post_worker_init sets
    torch.set_num_threads(threads)
    threadpool_limits(threads)
    app = create_app()
    warm_up(app)
    client = app.test_client()
    headers = {"X-API-Key": API_KEY}
    customers = json.loads(Path(args.customers).read_text())
    for c in customers[:args.warmup]:  # caches, first-call allocations, Triton's first batches
        assert client.get(f"/customers/{c}/recommendations?k=10", headers=headers).status_code == 200
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)  # CPU seconds: what a loaded machine cannot inflate
    cpu, wall, triton = [], [], []
    bodies = []
    for c in customers:
        t_triton = _group_cpu_s(args.triton_pgid)  # read outside the timed span: scanning /proc costs CPU too
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        resp = client.get(f"/customers/{c}/recommendations?k=10", headers=headers)
        if profiler is not None:
            profiler.disable()
        cpu.append(time.process_time() - t_cpu)
        wall.append(time.perf_counter() - t_wall)
        triton.append(_group_cpu_s(args.triton_pgid) - t_triton)
        if resp.status_code != 200 or resp.json["ranker"] != "triton" or resp.json["fallback"]:
            raise SystemExit(f"customer {c}: status {resp.status_code}, {resp.get_data()[:300]!r}")
        body = resp.json
        bodies.append({"customer_id": c, "items": body["items"]})
    if profiler is not None:
        profiler.dump_stats(args.profile)
    out = {"cpu_ms": (np.array(cpu) * 1e3).tolist(), "wall_ms": (np.array(wall) * 1e3).tolist(),
           "triton_cpu_ms": (np.array(triton) * 1e3).tolist(), "bodies": bodies}
    Path(args.result).write_text(json.dumps(out))


# ---------------------------------------------------------------- the parent: rounds, comparison, rows
def _run_side(repo: Path, world: dict[str, Any], triton: Any, pgid: int, customers: Path, warmup: int,
              scratch: Path, tag: str, profile: Path | None) -> dict[str, Any]:
    db = scratch / f"{tag}.db"
    shutil.copyfile(world["db"], db)  # each round its own store: impression rows do not pile up
    result = scratch / f"{tag}.json"
    host, port = triton.http_url.split("://", 1)[-1].rsplit(":", 1)
    code = (f"import runpy, sys; sys.argv = {['api_cpu', '--child'] !r} + sys.argv[1:]; "
            f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')")
    command = [sys.executable, "-c", code, "--home", world["home"], "--db", str(db), "--triton-host", host,
               "--triton-port", port, "--triton-pgid", str(pgid), "--customers", str(customers),
               "--warmup", str(warmup), "--result", str(result)] + (["--profile", str(profile)] if profile else [])
    # The checkout under test comes first on the import path, and is the working directory.
    env = {**os.environ, "PYTHONPATH": str(repo)}
    subprocess.run(command, cwd=repo, env=env, check=True, timeout=1800)
    return json.loads(result.read_text())


def _same(a: list[dict], b: list[dict], tolerance: float) -> tuple[int, int, int, float, list[str]]:
    """(lists that differ, lists with a score that differs by more than `tolerance`, explanations that
    differ, the largest |score difference| of equal lists, examples)."""
    lists = scores = why = 0
    largest = 0.0
    examples: list[str] = []
    for x, y in zip(a, b, strict=True):
        ids_x, ids_y = [i["product_id"] for i in x["items"]], [i["product_id"] for i in y["items"]]
        if ids_x != ids_y:
            lists += 1
            examples.append(f"customer {x['customer_id']}: {ids_x} vs {ids_y}")
            continue
        gap = max((abs(i["score"] - j["score"]) for i, j in zip(x["items"], y["items"])), default=0.0)
        largest = max(largest, gap)
        if gap > tolerance:
            scores += 1
        if [i["explanation"] for i in x["items"]] != [i["explanation"] for i in y["items"]]:
            why += 1
            examples.append(f"customer {x['customer_id']}: explanations differ")
    return lists, scores, why, largest, examples[:5]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--home", "--db", "--triton-host", "--triton-port", "--customers", "--result", "--profile"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--triton-pgid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/api_cpu"), help="the world, built once")
    parser.add_argument("--rebuild", action="store_true", help="build the world again")
    parser.add_argument("--sequential", default="always", choices=("always", "held_out"),
                        help="the real-time sequential source served always (default, as bench.api_latency)")
    parser.add_argument("--baseline-repo", type=Path, default=None,
                        help="another checkout (e.g. /work/main) measured in the same run; omit to measure this one alone")
    parser.add_argument("--requests", type=int, default=300, help="recommendations per round and side")
    parser.add_argument("--warmup", type=int, default=30, help="requests per round before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    parser.add_argument("--score-tolerance", type=float, default=0.0, help="largest |score difference| called equal (0: bitwise)")
    parser.add_argument("--profile-dir", type=Path, default=None, help="write a cProfile of each side's last round here")
    report.add_common_options(parser, report.RESULTS / "api_cpu.json")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import numpy as np

    from serving.local_triton import read_handle, start_server, stop_server
    from tests.conftest import free_port

    args.workdir.mkdir(parents=True, exist_ok=True)
    world = load_world(args.workdir, args.rebuild, args.sequential)
    scratch = Path(tempfile.mkdtemp(prefix="api-cpu-"))
    rng = np.random.default_rng(0)
    customers = scratch / "customers.json"
    customers.write_text(json.dumps([int(c) for c in rng.choice(world["customers"], args.requests)]))
    sides = {"this": report.REPO} | ({"baseline": args.baseline_repo.resolve()} if args.baseline_repo else {})
    state = args.workdir / "triton"
    handle = start_server(Path(world["bundle"]), free_port(), free_port(), state)
    load_at_start = round(os.getloadavg()[0], 2)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    loads = []
    try:
        pgid = os.getpgid((read_handle(state) or handle).pid)
        for r in range(args.rounds):
            for side, repo in (sides.items() if r % 2 == 0 else reversed(sides.items())):
                profile = (args.profile_dir / f"{side}.prof") if args.profile_dir and r == args.rounds - 1 else None
                if profile:
                    args.profile_dir.mkdir(parents=True, exist_ok=True)
                loads.append(os.getloadavg()[0])
                runs[side].append(_run_side(repo, world, handle, pgid, customers, args.warmup, scratch,
                                            f"{side}-{r}", profile))
                log.info("round %d %s: API CPU %.2f ms/request, Triton %.2f, wall p50 %.2f ms (load %.1f)", r, side,
                         np.mean(runs[side][-1]["cpu_ms"]), np.mean(runs[side][-1]["triton_cpu_ms"]),
                         np.median(runs[side][-1]["wall_ms"]), loads[-1])
    finally:
        stop_server(state)
        shutil.rmtree(scratch, ignore_errors=True)

    def figures(side: str) -> dict[str, float]:
        per_round = [np.mean(run["cpu_ms"]) for run in runs[side]]
        wall = np.concatenate([run["wall_ms"] for run in runs[side]])
        return {"api_cpu_ms_per_request": float(np.median(per_round)),
                "triton_cpu_ms_per_request": float(np.median([np.mean(run["triton_cpu_ms"]) for run in runs[side]])),
                "wall_p50_ms": float(np.percentile(wall, 50)), "wall_p99_ms": float(np.percentile(wall, 99))}

    mine = figures("this")
    base = figures("baseline") if "baseline" in sides else None
    same = None
    if base is not None:
        lists, scores, why, largest, examples = _same(runs["this"][0]["bodies"], runs["baseline"][0]["bodies"],
                                                      args.score_tolerance)
        same = {"customers": args.requests, "lists_differ": lists, "score_tolerance": args.score_tolerance,
                "scores_differ": scores, "largest_score_difference": largest, "explanations_differ": why,
                "examples": examples}
        log.info("same answers: %s", same)
    common = {"device": f"cpu-{len(os.sched_getaffinity(0))}core",
              **report.stamp("bench.api_cpu", args.git_sha, ("numpy", "flask", "torch", "onnxruntime"))}
    config = {"endpoint": "GET /customers/<id>/recommendations?k=10", "transport": "in-process Flask test client, "
              "one request at a time", "world": f"bench.api_latency.build_world (10k products, 2,000 customers, "
              f"200k events), sources {world['sources']}, pool {world['pool_size']}, ranker on local Triton (HTTP)",
              "sequential_source": args.sequential, "requests_per_round": args.requests, "rounds": args.rounds,
              "load_average_1m_at_start": load_at_start, "load_average_1m_mean": round(float(np.mean(loads)), 2),
              "baseline": f"checkout {args.baseline_repo} in the same run" if base else "none",
              "same_answers_as_baseline": same}
    rows = []
    for metric, value in mine.items():
        b = base[metric] if base else value
        rows.append({"benchmark": "api_cpu", "metric": metric, "value": round(value, 3), "unit": "ms",
                     "baseline": round(b, 3), "ratio": round(b / value, 3) if value else None, "config": config,
                     **common})
    report.append_results(args.out, rows)
    for row in rows:
        print(f"{row['metric']:>28}: {row['value']:>8} ms  baseline {row['baseline']:>8} ms  ratio {row['ratio']}")
    if same and (same["lists_differ"] or same["scores_differ"] or same["explanations_differ"]):
        print(f"ANSWERS DIFFER from the baseline: {same}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
