"""The sequential model on CUDA (the nightly trains it there when a GPU is present): it learns, and its
CUDA forward matches the CPU's for the same weights. Imports torch and models.sequential only, so it
runs on the GPU machine, which has no implicit/Airflow."""

from __future__ import annotations

import pytest
import torch

from models.sequential import SASRec, SASRecConfig, sampled_softmax_loss

pytestmark = pytest.mark.gpu


def _cyclic_batch(n_items: int, batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Sequences that walk the catalogue in a fixed cycle (item i is followed by i + 1): tokens and targets."""
    start = torch.randint(0, n_items, (batch, 1), generator=generator)
    columns = (start + torch.arange(length + 1)) % n_items  # (batch, length + 1) catalogue columns
    return columns[:, :-1] + 1, columns[:, 1:]  # tokens (0 = padding), next columns


def test_the_model_learns_the_next_item_on_cuda_with_sampled_negatives() -> None:
    torch.manual_seed(0)
    device = torch.device("cuda")
    n_items, length = 500, 12
    model = SASRec(SASRecConfig(n_items=n_items, max_len=length, dim=32, heads=2, layers=2, dropout=0.0)).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    log_q = torch.full((n_items,), -torch.log(torch.tensor(float(n_items))), device=device)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        tokens, targets = (t.to(device) for t in _cyclic_batch(n_items, 256, length, generator))
        kinds = torch.ones_like(tokens)
        hidden = model(tokens, kinds).reshape(-1, 32)
        negatives = torch.randint(0, n_items, (128,), device=device)
        loss = sampled_softmax_loss(hidden, targets.reshape(-1), model.item_table(), negatives, log_q)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    model.eval()
    tokens, targets = (t.to(device) for t in _cyclic_batch(n_items, 512, length, generator))
    with torch.no_grad():
        predicted = model.next_item_logits(tokens, torch.ones_like(tokens)).argmax(dim=1)
    assert (predicted == targets[:, -1]).float().mean().item() > 0.9


def test_cuda_and_cpu_forwards_agree_for_the_same_weights() -> None:
    torch.manual_seed(1)
    model = SASRec(SASRecConfig(n_items=200, max_len=10, dim=32, heads=4, layers=2)).eval()
    tokens = torch.randint(0, 201, (64, 10))
    tokens[:8, :4] = 0  # left padding, as sequences are built
    kinds = torch.where(tokens > 0, 1, 0)
    with torch.no_grad():
        on_cpu = model.next_item_logits(tokens, kinds)
        on_cuda = model.cuda().next_item_logits(tokens.cuda(), kinds.cuda()).cpu()
    torch.testing.assert_close(on_cuda, on_cpu, rtol=1e-3, atol=1e-3)
