"""DLRM variants, saving/loading, the row-wise sparse optimizer and the LR schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.dlrm import DLRM, DLRMConfig
from models.logreg import LogisticRegression, LogisticRegressionConfig, save_logreg
from models.saved import load_model, save_model
from training.optim import LRSchedule, RowWiseAdagrad, SparseSGD, merge_duplicate_rows, sum_by_id


def batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.stack(
        [torch.randint(0, c, (n,), generator=g) for c in (5, 7, 11)], dim=1
    )


@pytest.mark.parametrize("interaction", ["dot", "dcn"])
def test_saved_model_reloads_with_identical_scores(tmp_path: Path, interaction: str) -> None:
    torch.manual_seed(0)
    model = DLRM(DLRMConfig(3, [5, 7, 11], embedding_dim=4, bottom_mlp=[8], top_mlp=[8], interaction=interaction))
    dense, sparse = batch()
    expected = model.eval()(dense, sparse)
    assert expected.shape == (32,)
    reloaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert reloaded.config.interaction == interaction
    torch.testing.assert_close(reloaded(dense, sparse), expected)


def test_models_saved_before_dcn_existed_still_load(tmp_path: Path) -> None:
    model = DLRM(DLRMConfig(3, [5, 7, 11]))
    blob = {"config": {"n_dense": 3, "cardinalities": [5, 7, 11], "embedding_dim": 16,
                       "bottom_mlp": [64, 32], "top_mlp": [64, 32]}, "state_dict": model.state_dict()}
    torch.save(blob, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").config.interaction == "dot"


def test_forward_embedded_equals_forward_for_both_models(tmp_path: Path) -> None:
    dense, sparse = batch()
    dlrm = DLRM(DLRMConfig(3, [5, 7, 11], embedding_dim=4))
    torch.testing.assert_close(dlrm.forward_embedded(dense, dlrm.sparse_arch(sparse)), dlrm(dense, sparse))
    logreg = LogisticRegression(LogisticRegressionConfig(3, [5, 7, 11]))
    torch.nn.init.normal_(logreg.sparse_arch.embedding.weight)
    reloaded = load_model(save_logreg(logreg, tmp_path / "lr.pt"))
    torch.testing.assert_close(reloaded(dense, sparse), logreg(dense, sparse))


def test_duplicate_ids_are_merged_into_one_slot_each() -> None:
    ids = torch.tensor([4, 1, 4, 9, 1, 4])
    grads = torch.arange(12.0).reshape(6, 2)
    rows, summed = merge_duplicate_rows(ids, grads, n_rows=20)
    merged = {int(r): summed[i].tolist() for i, r in enumerate(rows[:3])}
    assert merged == {1: [10.0, 12.0], 4: [14.0, 17.0], 9: [6.0, 7.0]}
    assert summed[3:].abs().sum() == 0  # padding slots carry no update


def _dense_reference(weight: torch.Tensor, state: torch.Tensor, ids: torch.Tensor, grads: torch.Tensor, lr: float) -> None:
    """Row-wise Adagrad on a dense (rows, dim) gradient, applied to the touched rows only."""
    dense_grad = torch.zeros_like(weight).index_add_(0, ids, grads)
    touched = torch.zeros(weight.shape[0], dtype=torch.bool)
    touched[ids] = True
    state += torch.where(touched, dense_grad.pow(2).mean(1), 0.0)
    weight -= torch.where(touched.unsqueeze(1), lr * dense_grad / (state.sqrt() + 1e-8).unsqueeze(1), 0.0)


def _merged_reference(weight: torch.Tensor, state: torch.Tensor, ids: torch.Tensor, grads: torch.Tensor, lr: float) -> None:
    """The GPU path written out by hand: sort + fixed-size slots (`merge_duplicate_rows`), then the update."""
    rows, summed = merge_duplicate_rows(ids, grads, n_rows=weight.shape[0])
    state.index_add_(0, rows, summed.pow(2).mean(1))
    weight.index_add_(0, rows, summed * (-lr / (state[rows].sqrt() + 1e-8)).unsqueeze(1))


@pytest.mark.parametrize("reference", [_dense_reference, _merged_reference])
def test_rowwise_adagrad_matches_a_hand_written_update_and_leaves_untouched_rows(reference) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    weight = torch.randn(50, 8)
    initial = weight.clone()
    expected, state = weight.clone(), torch.zeros(50)
    opt = RowWiseAdagrad(weight, lr=0.1)
    for _ in range(3):
        ids = torch.randint(0, 25, (200,))  # rows 25..49 never touched
        grads = torch.randn(200, 8)
        opt.step(ids, grads)
        reference(expected, state, ids, grads, 0.1)
    torch.testing.assert_close(weight, expected)
    torch.testing.assert_close(opt.state_sum, state)
    assert torch.equal(weight[25:], initial[25:]) and not torch.equal(weight[:25], initial[:25])


def test_sparse_sgd_adds_every_occurrence() -> None:
    weight = torch.zeros(3, 2)
    SparseSGD(weight, lr=0.5).step(torch.tensor([1, 1, 2]), torch.ones(3, 2))
    assert weight.tolist() == [[0.0, 0.0], [-1.0, -1.0], [-0.5, -0.5]]


def test_schedule_warms_up_linearly_then_decays_to_the_floor() -> None:
    schedule = LRSchedule(warmup_steps=4, total_steps=14, decay="cosine", min_ratio=0.1)
    assert [schedule.factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule.factor(4) == pytest.approx(1.0)
    assert schedule.factor(14) == pytest.approx(0.1)
    assert schedule.factor(9) == pytest.approx(0.55)
    assert LRSchedule(0, 10, "linear", 0.0).factor(5) == pytest.approx(0.5)
    assert LRSchedule(2, 10, "none").factor(8) == 1.0


def test_ids_are_grouped_and_their_gradients_summed_where_they_lie() -> None:
    ids = torch.tensor([4, 1, 4, 9, 1, 4])
    grads = torch.arange(12.0).reshape(6, 2)
    rows, summed = sum_by_id(ids, grads)
    assert rows.tolist() == [1, 4, 9]
    assert summed.tolist() == [[10.0, 12.0], [14.0, 17.0], [6.0, 7.0]]
    # The same gradients behind a leading slot per batch row (the interaction's layout), in bf16.
    slotted = torch.cat([torch.full((3, 1, 2), 100.0), grads.view(3, 2, 2)], 1).bfloat16()
    rows3, summed3 = sum_by_id(ids, slotted)
    assert torch.equal(rows3, rows) and torch.equal(summed3.float(), summed) and summed3.dtype == torch.bfloat16
    # bf16 gradients: fp32 accumulation, each sum rounded to bf16 once
    many = torch.full((300, 1), 1 / 3).bfloat16()
    assert abs(float(sum_by_id(torch.zeros(300, dtype=torch.long), many)[1]) - 300 * float(many[0])) < 0.25
    with pytest.raises(ValueError, match="do not fit"):
        sum_by_id(torch.arange(5), slotted)


# compile: the inductor update of long CPU runs (rows of 12 floats are narrow enough for it)
@pytest.mark.parametrize("lead,dtype,compile", [(0, torch.float32, False), (1, torch.bfloat16, False),
                                                (0, torch.float32, True), (1, torch.bfloat16, True)])
def test_cpu_row_update_matches_an_fp64_reference_with_hot_ids(lead: int, dtype: torch.dtype, compile: bool) -> None:
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(5000, 12, generator=g)
    reference, state = weight.double(), torch.rand(5000, generator=g).double()
    initial = reference.clone()
    opt = RowWiseAdagrad(weight, lr=0.05, compile=compile)
    opt.state_sum.copy_(state)
    for _ in range(3):
        ids = torch.randint(0, 4000, (2400,), generator=g)  # rows 4000.. never touched
        ids[:600] = 3999  # a hot row
        grads = torch.randn(300, lead + 8, 12, generator=g).to(dtype)
        opt.step(ids, grads if lead else grads.reshape(2400, 12))
        summed = torch.zeros(5000, 12, dtype=torch.float64).index_add_(0, ids, grads[:, lead:].reshape(2400, 12).double())
        touched = torch.zeros(5000, dtype=torch.bool)
        touched[ids] = True
        state = state + torch.where(touched, summed.pow(2).mean(1), 0.0)
        reference = reference - torch.where(touched.unsqueeze(1), 0.05 * summed / (state.sqrt() + 1e-8).unsqueeze(1), 0.0)
    # fp32 sums match to rounding; bf16 sums are rounded once (<= 2^-8 relative, twice that squared)
    tol = 1e-5 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(opt.state_sum.double(), state, rtol=2 * tol, atol=1e-6)
    moved, moved_ref = weight.double() - initial, reference - initial
    assert float((moved - moved_ref).norm() / moved_ref.norm()) < tol
    assert torch.equal(weight[4000:], reference[4000:].float())  # untouched rows: bit-identical
