"""Command line: `python -m training train|evaluate` runs the same functions the DAG calls."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.errors import TrainingError
from training.evaluate import EvalInputs, evaluate
from training.trainer import TrainConfig, TrainInputs, train
from settings import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a DLRM on an ETL output directory")
    p_train.add_argument("--data", type=Path, required=True, help="ETL output dir (train/, valid/, schema.json)")
    p_train.add_argument("--out", type=Path, required=True, help="where model.pt and checkpoints go")
    p_train.add_argument("--config", type=Path, help="YAML file of TrainConfig fields")
    p_train.add_argument("--resume", type=Path, help="checkpoint.pt to continue from")
    p_eval = sub.add_parser("evaluate", help="evaluate a saved model on the test split")
    p_eval.add_argument("--model", type=Path, required=True)
    p_eval.add_argument("--data", type=Path, required=True, help="ETL output dir (train/, test/, schema.json)")
    p_eval.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    return run_command(lambda: _run(args), TrainingError, exit_code=2)


def _run(args: argparse.Namespace) -> None:
    if args.command == "train":
        config = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
        if args.resume:
            config.resume_from = args.resume
        result = train(TrainInputs.from_etl_dir(args.data), config, args.out)
        print(json.dumps({"model_path": str(result.model_path), "best_valid_auc": result.best_valid_auc,
                          "best_epoch": result.best_epoch, "history": result.history}, indent=2))
    else:
        report = evaluate(args.model, EvalInputs.from_etl_dir(args.data), k=args.k)
        print(json.dumps(report.to_dict(), indent=2))


if __name__ == "__main__":
    sys.exit(main())
