"""The sequential source: ordered sequences, the causal model, next-item training, the scorer's files."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from contracts import EVENT_CODES
from models.sequential import SASRec, SASRecConfig, SequentialScorer
from serving.sequences import build_sequences, sequence_of, sequences_of_events
from training.sequential import SequentialConfig, fit_sequential, training_windows

V, C, P = EVENT_CODES["view"], EVENT_CODES["cart"], EVENT_CODES["purchase"]


def test_sequences_are_latest_last_left_padded_without_repeats() -> None:
    catalogue = np.array([10, 20, 30, 40])
    seq = sequence_of(catalogue, np.array([20, 20, 99, 30, 10, 40]),
                      np.array(["view", "cart", "view", "view", "bogus", "purchase"]), length=4)
    # 20 viewed then carted collapses to the cart; 99 is outside the catalogue; "bogus" is no event type
    np.testing.assert_array_equal(seq.items, [[0, 2, 3, 4]])
    np.testing.assert_array_equal(seq.kinds, [[0, C, V, P]])
    short = sequence_of(catalogue, np.array([10, 20, 30, 40, 10]), np.array(["view"] * 5), length=3)
    np.testing.assert_array_equal(short.items, [[3, 4, 1]])  # only the latest 3 steps


def test_sequences_of_events_follow_time_not_file_order() -> None:
    t = pd.Timestamp("2026-01-01", tz="UTC")
    events = pd.DataFrame({"user_id": [2, 1, 2, 1, 3], "product_id": [30, 10, 10, 20, 10],
                           "event_type": ["view"] * 5,
                           "event_time": [t + pd.Timedelta(s, "s") for s in (5, 3, 1, 2, 0)]})
    seq = sequences_of_events(events, np.array([1, 2]), np.array([10, 20, 30]), length=3)
    np.testing.assert_array_equal(seq.items, [[0, 2, 1], [0, 1, 3]])  # user 1: 20 then 10; user 2: 10 then 30
    np.testing.assert_array_equal(seq.reindexed(np.array([1, -1, 0])).items, [[0, 0, 2], [0, 2, 1]])


def test_training_windows_pair_each_step_with_the_one_before() -> None:
    t = pd.Timestamp("2026-01-01", tz="UTC")
    steps = [10, 20, 30, 40, 50]
    events = pd.DataFrame({"user_id": 7, "product_id": steps, "event_type": "view",
                           "event_time": [t + pd.Timedelta(i, "s") for i in range(5)]})
    w = training_windows(events, np.array(steps), max_len=3)
    # latest window: targets 30,40,50 from inputs 20,30,40; the earlier one: target 20 from 10
    np.testing.assert_array_equal(w.targets, [[3, 4, 5], [0, 0, 2]])
    np.testing.assert_array_equal(w.inputs, [[2, 3, 4], [0, 0, 1]])


def test_the_model_is_causal_and_ignores_padding() -> None:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=30, max_len=6, dim=16, heads=2, layers=2)).eval()
    items = torch.tensor([[0, 0, 3, 5, 7, 9]])
    kinds = torch.where(items > 0, V, 0)
    out = model(items, kinds)
    changed = items.clone()
    changed[0, 5] = 1
    torch.testing.assert_close(model(changed, kinds)[:, :5], out[:, :5])  # the future does not leak back
    assert not torch.allclose(model(changed, kinds)[:, 5], out[:, 5])
    assert torch.isfinite(model(torch.zeros(1, 6, dtype=torch.long), torch.zeros(1, 6, dtype=torch.long))).all()
    torch.testing.assert_close(model.next_item_logits(items[:, 2:], kinds[:, 2:]),  # shorter, same steps
                               model.next_item_logits(items, kinds), atol=1e-5, rtol=1e-5)


def _cyclic_events(n_users: int = 40, n_items: int = 20, length: int = 24) -> pd.DataFrame:
    """Every customer walks the catalogue in a fixed cycle from a random start: item i is followed by i+1."""
    rng = np.random.default_rng(0)
    t = pd.Timestamp("2026-01-01", tz="UTC")
    rows = []
    for user in range(n_users):
        start = int(rng.integers(n_items))
        rows += [(user, 100 + (start + s) % n_items, "view", t + pd.Timedelta(s, "min")) for s in range(length)]
    return pd.DataFrame(rows, columns=["user_id", "product_id", "event_type", "event_time"])


@pytest.mark.parametrize("negatives", [64, 8])  # exact softmax (20 items <= 64), then sampled
def test_training_learns_what_comes_next(negatives: int) -> None:
    events = _cyclic_events()
    catalogue = np.arange(100, 120)
    config = SequentialConfig(max_len=10, dim=16, layers=1, epochs=25, batch_size=32, learning_rate=1e-2,
                              dropout=0.0, negatives=negatives, device="cpu")
    scorer = fit_sequential(events, catalogue, config)
    seq = build_sequences(np.zeros(3, dtype=np.int64), np.array([4, 5, 6]), np.full(3, V), 1, 10)
    assert int(scorer.score_sequences(seq.items, seq.kinds)[0].argmax()) == 7  # column 6 -> column 7
    again = fit_sequential(events, catalogue, config)  # seeded: the same weights
    np.testing.assert_array_equal(again.score_sequences(seq.items, seq.kinds), scorer.score_sequences(seq.items, seq.kinds))


def test_a_pickled_scorer_scores_the_same() -> None:
    torch.manual_seed(0)
    scorer = SequentialScorer(SASRec(SASRecConfig(n_items=12, max_len=5, dim=8, heads=2, layers=1)))
    seq = build_sequences(np.zeros(4, dtype=np.int64), np.array([1, 3, 2, 0]), np.array([V, C, V, P]), 1, 5)
    loaded = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_array_equal(loaded.score_sequences(seq.items, seq.kinds), scorer.score_sequences(seq.items, seq.kinds))
    assert loaded.score(__import__("scipy.sparse", fromlist=["csr_matrix"]).csr_matrix(np.eye(1, 12))).shape == (1, 12)


def test_the_onnx_export_scores_as_torch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from serving.sequential_export import OnnxSequentialScorer, export_sequential, random_sequences

    torch.manual_seed(0)
    scorer = SequentialScorer(SASRec(SASRecConfig(n_items=40, max_len=8, dim=16, heads=2, layers=2)))
    report = export_sequential(scorer, tmp_path / "sequential.onnx")
    assert report.max_abs_diff < 1e-4
    onnx = OnnxSequentialScorer.replacing(scorer, tmp_path / "sequential.onnx")
    items, kinds = random_sequences(scorer, 5, seed=3)
    np.testing.assert_allclose(onnx.score_sequences(items, kinds), scorer.score_sequences(items, kinds), atol=1e-4)
    short = onnx.score_sequences(items[:, -3:], kinds[:, -3:])  # a shorter batch: the length axis is dynamic
    np.testing.assert_allclose(short, scorer.score_sequences(items[:, -3:], kinds[:, -3:]), atol=1e-4)
