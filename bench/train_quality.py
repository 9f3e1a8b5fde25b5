"""Accuracy of the trained DLRM against the synthetic generator's oracle AUC (its planted truth).

Two steps, so the GPU machine (no dask, so no `etl`) can run the second one:

    # here, with the project venv: oracle AUC on valid/test from the truth, and a compact copy of
    # the ETL output (needed columns only, rows sorted by user/product, zstd) that travels cheaply
    python -m bench.train_quality prepare --raw RAW_DIR --etl ETL_DIR --out DATA_DIR
    # anywhere with torch: train with training.train() and compare AUCs with the oracle
    python -m bench.train_quality run --data DATA_DIR --events 1000000 --device cpu --epochs 4

Sorting the rows changes nothing a model sees: the trainer shuffles every epoch and AUC ignores
row order. `run` appends one object per split to `bench/results/train_quality.json` with
`value` = model AUC, `baseline` = oracle AUC, `ratio` = value / baseline and `gap` = oracle - model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from bench.report import RESULTS, add_common_options, append_results, command, git_sha, now

log = logging.getLogger("bench.train_quality")
SPLITS = ("train", "valid", "test")


def prepare(raw_dir: Path, etl_dir: Path, out: Path) -> dict[str, float]:
    """Write `out/{oracle.json,schema.json,<split>/part-00000.parquet}`; return the oracle AUCs."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from etl.synthetic import GroundTruth, oracle_auc
    from training.data import load_schema, part_files

    schema = load_schema(etl_dir / "schema.json")
    columns = [*schema.categorical, *schema.continuous, schema.target]
    truth = GroundTruth.from_manifest(raw_dir)
    oracle: dict[str, float] = {}
    for split in SPLITS:
        frame = pd.concat([pq.read_table(f).to_pandas() for f in part_files(etl_dir / split)], ignore_index=True)
        if split != "train":
            impressions = pd.DataFrame({"user_id": frame["user_id_raw"], "product_id": frame["product_id_raw"],
                                        "label": frame[schema.target]})
            oracle[split] = oracle_auc(truth, impressions)
        compact = frame[columns].sort_values([schema.categorical[0], schema.categorical[1]], kind="stable")
        (out / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(compact, preserve_index=False), out / split / "part-00000.parquet",
                       compression="zstd", compression_level=19)
    (out / "schema.json").write_text((etl_dir / "schema.json").read_text())
    generator = json.loads((raw_dir / "manifest.json").read_text()).get("config", {})
    (out / "oracle.json").write_text(json.dumps({"oracle_auc": oracle, "raw_dir": str(raw_dir),
                                                 "etl_dir": str(etl_dir), "generator": generator}, indent=2))
    log.info("oracle AUC %s; compact data in %s", oracle, out)
    return oracle


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from training.data import load_schema, load_split
    from training.metrics import auc, logloss
    from training.trainer import TrainConfig, TrainInputs, predict, resolve_device, train
    from models.saved import load_model

    prepared = json.loads((args.data / "oracle.json").read_text())
    oracle = prepared["oracle_auc"]
    generator = {k: v for k, v in prepared.get("generator", {}).items() if k in ("n_events", "n_users", "n_products", "seed")}
    config = TrainConfig(
        embedding_dim=args.embedding_dim, bottom_mlp=args.bottom_mlp, top_mlp=args.top_mlp, lr=args.lr,
        embedding_lr=args.embedding_lr, batch_size=args.batch_size, epochs=args.epochs, patience=args.epochs,
        precision=args.precision, device=args.device, lr_decay=args.lr_decay, warmup_steps=args.warmup_steps,
        seed=args.seed,
    )
    device = resolve_device(config.device)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = train(TrainInputs.from_etl_dir(args.data), config, Path(tmp))
        seconds = time.perf_counter() - started
        model = load_model(result.model_path).to(device)
    schema = load_schema(args.data / "schema.json")
    rows = []
    for split in ("valid", "test"):
        data = load_split(args.data / split, schema).to(device)
        labels = data.label.cpu().numpy()
        probabilities = predict(model, data)
        model_auc = auc(labels, probabilities)
        row = {
            "benchmark": "train_quality", "metric": f"{split}_auc", "value": model_auc, "unit": "AUC",
            "baseline": oracle[split], "ratio": model_auc / oracle[split], "gap": oracle[split] - model_auc,
            "target_gap": args.target_gap, "meets_target": oracle[split] - model_auc <= args.target_gap,
            f"{split}_logloss": logloss(labels, probabilities), f"{split}_rows": len(labels),
            "config": {"events": args.events, "generator": generator, "train_config": config.to_dict(), "best_epoch": result.best_epoch,
                       "history": result.history, "train_seconds": seconds, "torch": torch.__version__},
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{torch.get_num_threads()}core",
            "command": command("bench.train_quality"), "date": now(), "git_sha": args.git_sha or git_sha(),
        }
        rows.append(row)
        log.info("%s AUC %.4f vs oracle %.4f (gap %.4f)", split, model_auc, oracle[split], row["gap"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="oracle AUC + compact data (needs etl, i.e. dask)")
    prep.add_argument("--raw", type=Path, required=True, help="raw directory with manifest.json")
    prep.add_argument("--etl", type=Path, required=True, help="ETL output directory")
    prep.add_argument("--out", type=Path, required=True)
    go = sub.add_parser("run", help="train and compare with the oracle")
    go.add_argument("--data", type=Path, required=True, help="a `prepare` output directory")
    go.add_argument("--events", type=int, required=True, help="events the data was generated from (recorded)")
    go.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    go.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    go.add_argument("--epochs", type=int, default=4)
    go.add_argument("--batch-size", type=int, default=4096)
    go.add_argument("--embedding-dim", type=int, default=16)
    go.add_argument("--bottom-mlp", type=lambda s: [int(x) for x in s.split(",")], default=[64, 32])
    go.add_argument("--top-mlp", type=lambda s: [int(x) for x in s.split(",")], default=[64, 32])
    go.add_argument("--lr", type=float, default=1e-3)
    go.add_argument("--embedding-lr", type=float, default=0.05)
    go.add_argument("--lr-decay", default="none", choices=["none", "linear", "cosine"])
    go.add_argument("--warmup-steps", type=int, default=0)
    go.add_argument("--seed", type=int, default=0)
    go.add_argument("--target-gap", type=float, default=0.005)
    add_common_options(go, RESULTS / "train_quality.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "prepare":
        print(json.dumps(prepare(args.raw, args.etl, args.out), indent=2))
        return 0
    rows = run(args)
    append_results(args.out, rows)
    for row in rows:
        print(f"{row['metric']:<10} model {row['value']:.4f}  oracle {row['baseline']:.4f}  gap {row['gap']:+.4f}"
              f"  (target <= {row['target_gap']}: {'met' if row['meets_target'] else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
