"""Does the data loader keep up with training? Samples/s from the ETL Parquet output to batches.

Measures, in one run on the same data:
- `parquet_to_tensors`: `training.data.load_split` reading every part of the train split;
- `batches_cpu`: shuffled batches from `BatchIterator` on the CPU, against the CPU training rate of
  `training.train` on the same data (the loader must not be the bottleneck) and against a plain
  `torch.utils.data.DataLoader` over a `TensorDataset` (what a user would write first);
- on CUDA, `batches_gpu_resident` (tensors moved once, batches gathered on the GPU) and
  `batches_gpu_streamed` (pinned host tensors, each batch gathered on the host and copied
  asynchronously), against the same plain DataLoader feeding the GPU.

Writes one JSON object per figure to bench/results/loader_throughput.json. Needs only torch,
numpy, pandas and pyarrow when `--data` points at an existing ETL output (the GPU machine);
`--generate N` builds one here first with `etl` (which needs dask).

    python -m bench.loader_throughput --generate 1000000
    python -m bench.loader_throughput --data DIR --device cuda --git-sha abc123
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import report
from training.data import Batch, BatchIterator, InteractionTensors, load_schema, load_split

RESULTS = report.RESULTS / "loader_throughput.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def _median_epoch_rate(iterator: BatchIterator, device: torch.device, epochs: int, to_device=None) -> float:
    """Median samples/s over `epochs` shuffled passes; `to_device` moves each batch if given."""
    rates = []
    for epoch in range(epochs):
        _sync(device)
        start = time.perf_counter()
        seen = 0
        for batch in iterator.epoch(epoch):
            if to_device is not None:
                batch = to_device(batch)
            seen += batch.label.shape[0]
        _sync(device)
        rates.append(_rate(seen, time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def time_iterator(tensors: InteractionTensors, batch_size: int, device: torch.device, epochs: int = 3) -> float:
    """BatchIterator on `tensors`' own device (host RAM or GPU-resident)."""
    return _median_epoch_rate(BatchIterator(tensors, batch_size, shuffle=True, seed=1), device, epochs)


def time_streamed(tensors: InteractionTensors, batch_size: int, device: torch.device, epochs: int = 3) -> float:
    """Pinned host tensors; each batch gathered on the host into pinned memory and copied async."""
    pinned = InteractionTensors(tensors.dense.pin_memory(), tensors.sparse.pin_memory(), tensors.label.pin_memory())

    def to_device(batch: Batch) -> Batch:
        return Batch(*(t.pin_memory().to(device, non_blocking=True) for t in (batch.dense, batch.sparse, batch.label)))

    return _median_epoch_rate(BatchIterator(pinned, batch_size, shuffle=True, seed=1), device, epochs, to_device)


def time_plain_dataloader(tensors: InteractionTensors, batch_size: int, device: torch.device, max_batches: int) -> float:
    """The first thing a user writes: DataLoader(TensorDataset(...), shuffle=True), per-row collate."""
    dataset = torch.utils.data.TensorDataset(tensors.dense, tensors.sparse, tensors.label)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    _sync(device)
    start = time.perf_counter()
    seen = 0
    for i, (dense, sparse, label) in enumerate(loader):
        if device.type == "cuda":
            dense, sparse, label = dense.to(device), sparse.to(device), label.to(device)
        seen += label.shape[0]
        if i + 1 >= max_batches:
            break
    _sync(device)
    return _rate(seen, time.perf_counter() - start)


def cpu_training_rate(etl_dir: Path, batch_size: int) -> float:
    """samples/s of one epoch of `training.train` on the CPU, the rate the loader must sustain."""
    from training import TrainConfig, TrainInputs, train

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(epochs=1, batch_size=batch_size, device="cpu")
        result = train(TrainInputs.from_etl_dir(etl_dir), config, Path(out))
    return float(result.history[-1]["samples_per_s"])


def generate_etl(n_events: int, into: Path) -> Path:
    """Synthetic events -> validated-shape Parquet -> ETL output (uses etl, so needs dask)."""
    from etl.pipeline import EtlConfig, run_etl
    from etl.synthetic import SyntheticConfig, generate, write_events

    config = SyntheticConfig(n_events=n_events, days=7, seed=11)
    raw = into / "raw"
    write_events(generate(config).events, raw, config=config)
    return run_etl(raw, into / "features", EtlConfig()).train_dir.parent


def record(entries: list[dict], device_name: str, command: str, git_sha: str, config: dict) -> None:
    meta = {"device": device_name, "command": command, "date": report.now(), "git_sha": git_sha,
            "config": config, "versions": report.versions("torch")}
    report.append_results(RESULTS, [meta | e for e in entries])


def entry(metric: str, value: float, baseline: float) -> dict:
    return {"benchmark": "loader_throughput", "metric": metric, "value": round(value, 1),
            "unit": "samples/s", "baseline": round(baseline, 1), "ratio": round(value / baseline, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="an ETL output directory (train/, schema.json)")
    parser.add_argument("--generate", type=int, help="build an ETL output from N synthetic events first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.add_argument("--replicate", type=int, default=1, help="repeat the rows k times (fill a GPU)")
    parser.add_argument("--git-sha", default=None)
    parser.add_argument("--out", type=Path, default=None, help="also copy the results file here")
    args = parser.parse_args(argv)
    if (args.data is None) == (args.generate is None):
        parser.error("give exactly one of --data and --generate")
    git_sha = args.git_sha or report.git_sha(short=True)
    tmp = tempfile.TemporaryDirectory()
    etl_dir = args.data or generate_etl(args.generate, Path(tmp.name))
    device = torch.device(args.device)

    schema = load_schema(etl_dir / "schema.json")
    start = time.perf_counter()
    tensors = load_split(etl_dir / "train", schema)
    load_rate = _rate(len(tensors), time.perf_counter() - start)
    if args.replicate > 1:
        tensors = InteractionTensors(*(t.repeat(args.replicate, *([1] * (t.dim() - 1)))
                                       for t in (tensors.dense, tensors.sparse, tensors.label)))
    n, bs = len(tensors), args.batch_size
    config = {"rows": n, "batch_size": bs, "n_dense": schema.n_dense, "n_sparse": len(schema.categorical)}
    plain = time_plain_dataloader(tensors, bs, device, max_batches=max(2, min(20, n // bs)))
    entries = []
    if device.type == "cpu":
        cpu_rate = time_iterator(tensors, bs, device)
        train_rate = cpu_training_rate(etl_dir, min(bs, 4096))
        entries += [
            entry("parquet_to_tensors", load_rate, train_rate),
            entry("batches_cpu_vs_cpu_training", cpu_rate, train_rate),
            entry("batches_cpu_vs_plain_dataloader", cpu_rate, plain),
        ]
        name = f"cpu-{torch.get_num_threads()}thread"
    else:
        resident = time_iterator(tensors.to(device), bs, device)
        streamed = time_streamed(tensors, bs, device)
        entries += [
            entry("parquet_to_tensors", load_rate, plain),
            entry("batches_gpu_resident_vs_plain_dataloader", resident, plain),
            entry("batches_gpu_streamed_vs_plain_dataloader", streamed, plain),
        ]
        name = torch.cuda.get_device_name(device)
    record(entries, name, report.command("bench.loader_throughput", argv), git_sha, config)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / RESULTS.name).write_text(RESULTS.read_text())
    print(f"{'metric':45s} {'samples/s':>14s} {'baseline':>14s} {'ratio':>8s}")
    for e in entries:
        print(f"{e['metric']:45s} {e['value']:14,.0f} {e['baseline']:14,.0f} {e['ratio']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
