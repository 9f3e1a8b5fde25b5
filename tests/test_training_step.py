"""The training step's fast parts: fused interaction backward, tensor learning rates, fused kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.dlrm import DLRM, DenseArch, DLRMConfig, InteractionArch
from training.fastpath import FastPath, StepOptions, TrainStep, native_bf16, retain_freed_memory
from training.fastpath.forward import FastInteraction, dense_forward
from training.optim import RowWiseAdagrad, SparseSGD

REPO = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _grads(arch: torch.nn.Module, dense: torch.Tensor, embedded: torch.Tensor, weight: torch.Tensor):
    d, e = dense.clone().requires_grad_(True), embedded.clone().requires_grad_(True)
    out = arch(d, e)
    (out * weight).sum().backward()
    return out.detach(), d.grad, e.grad


def _interaction(n_features: int, device: str = "cpu", **fast: object) -> FastInteraction:
    return FastInteraction(n_features, FastPath(**fast)).to(device)  # type: ignore[arg-type]


@pytest.mark.parametrize("n_sparse,dim,pad", [(4, 8, True), (4, 8, False), (26, 40, None), (7, 4, True)])
def test_fused_interaction_backward_gives_autograds_gradients(n_sparse: int, dim: int, pad: bool | None) -> None:
    torch.manual_seed(0)
    model_arch = InteractionArch(n_sparse + 1)
    dense = torch.randn(5, dim, dtype=torch.float64)
    embedded = torch.randn(5, n_sparse, dim, dtype=torch.float64)
    weight = torch.randn(5, dim + model_arch.n_pairs, dtype=torch.float64)
    fused = _grads(_interaction(n_sparse + 1, pad=pad), dense, embedded, weight)
    reference = _grads(model_arch, dense, embedded, weight)
    for got, want in zip(fused, reference):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert fused[2].is_contiguous()  # the sparse optimizer reads it as (n, dim) without a copy


@pytest.mark.parametrize("pad", [True, False])
def test_leading_slot_gives_the_dense_and_embedding_gradients_in_one_tensor(pad: bool) -> None:
    torch.manual_seed(0)
    fused, unfused = _interaction(27, pad=pad), _interaction(27, fused_interaction=False)
    dense = torch.randn(5, 40, dtype=torch.float64)
    embedded = torch.randn(5, 26, 40, dtype=torch.float64)
    weight = torch.randn(5, 40 + InteractionArch(27).n_pairs, dtype=torch.float64)
    # A zero slot (what TrainStep's lookup writes) leaves the output and the gradients unchanged.
    zero_slot = torch.cat([torch.zeros(5, 1, 40, dtype=torch.float64), embedded], 1)
    reference = _grads(InteractionArch(27), dense, embedded, weight)
    out, grad_dense, grad_slotted = _grads(fused, dense, zero_slot, weight)
    for got, want in zip((out, grad_dense, grad_slotted[:, 1:]), reference):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert grad_slotted.is_contiguous()
    # Any slot: the one-product backward gives autograd's gradients of the slotted forward.
    slotted = torch.cat([torch.randn(5, 1, 40, dtype=torch.float64), embedded], 1)
    for got, want in zip(_grads(fused, dense, slotted, weight), _grads(unfused, dense, slotted, weight)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_sparse_optimizers_read_the_id_slots_of_a_wider_gradient() -> None:
    ids = torch.tensor([[0, 3], [3, 1], [2, 3]])
    wide = torch.randn(3, 4, 5)  # two leading slots that are not ids' gradients
    for opt_cls in (RowWiseAdagrad, SparseSGD):
        a, b = torch.zeros(4, 5), torch.zeros(4, 5)
        opt_cls(a, lr=0.3).step(ids.reshape(-1), wide[:, 2:].reshape(6, 5))
        opt_cls(b, lr=0.3).step(ids.reshape(-1), wide)
        torch.testing.assert_close(a, b)
        assert a[3].abs().sum() > 0
    with pytest.raises(ValueError, match="do not fit"):
        RowWiseAdagrad(torch.zeros(4, 5), lr=0.3).step(torch.arange(4), wide[:, :1])


def test_the_model_runs_the_plain_interaction_that_onnx_exports_and_the_step_the_fused_one() -> None:
    dense, embedded = torch.randn(2, 4, requires_grad=True), torch.randn(2, 2, 4)
    assert "DotInteraction" not in InteractionArch(3).train()(dense, embedded).grad_fn.name()
    assert "DotInteraction" in _interaction(3)(dense, embedded).grad_fn.name()  # the default, on the CPU too
    assert "DotInteraction" not in _interaction(3, fused_interaction=False)(dense, embedded).grad_fn.name()
    with torch.no_grad():
        torch.testing.assert_close(_interaction(3)(dense, embedded), InteractionArch(3)(dense, embedded))


def _plain_step(model: DLRM, adam: torch.optim.Optimizer, sparse_opt: RowWiseAdagrad, batch, lr_factor: float):
    """The step written out with autograd only: the math TrainStep must reproduce."""
    dense, sparse, label = batch
    for group in adam.param_groups:
        group["lr"] = 1e-2 * lr_factor
    ids = model.sparse_arch.ids(sparse)
    embedded = F.embedding(ids, model.sparse_arch.embedding.weight.detach()).requires_grad_(True)
    loss = F.binary_cross_entropy_with_logits(model.forward_embedded(dense, embedded), label)
    adam.zero_grad()
    loss.backward()
    adam.step()
    sparse_opt.step(ids.reshape(-1), embedded.grad.reshape(ids.numel(), -1), 0.1 * lr_factor)
    return loss.detach()


@pytest.mark.parametrize("lead_slot", [False, True])
def test_train_step_follows_the_schedule_and_matches_the_plain_step_on_cpu(lead_slot: bool) -> None:
    torch.manual_seed(0)
    config = DLRMConfig(3, [30, 5, 200], embedding_dim=8, bottom_mlp=[16], top_mlp=[16])
    model, reference = DLRM(config), DLRM(config)
    reference.load_state_dict(model.state_dict())
    # lead_slot True is the default: one product for both gradients
    step = TrainStep(model, StepOptions(lr=1e-2, embedding_lr=0.1), torch.device("cpu"), FastPath(lead_slot=lead_slot))
    assert step.lead_slot is lead_slot
    table = reference.sparse_arch.embedding.weight
    adam = torch.optim.Adam([p for p in reference.parameters() if p is not table], lr=1e-2)
    sparse_opt = RowWiseAdagrad(table, 0.1)
    g = torch.Generator().manual_seed(1)
    for i, factor in enumerate([1.0, 0.5, 0.25, 0.1]):
        batch = (torch.randn(64, 3, generator=g),
                 torch.stack([torch.randint(0, c, (64,), generator=g) for c in (30, 5, 200)], 1),
                 (torch.rand(64, generator=g) < 0.3).float())
        step.set_lr_factor(factor)
        loss = step(*batch)
        want = _plain_step(reference, adam, sparse_opt, batch, factor)
        torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step.sparse_opt.state_sum, sparse_opt.state_sum)


def _batches(cards: tuple[int, ...], n: int, size: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, generator=g),
             torch.stack([torch.randint(0, c, (size,), generator=g) for c in cards], 1),
             (torch.rand(size, generator=g) < 0.3).float()) for _ in range(n)]


def test_bf16_cpu_step_tracks_the_fp32_step() -> None:
    # bf16 GEMMs, bf16 lookup and gradients, fp32 sums/state/table: the same training run, rounded.
    config = DLRMConfig(3, [40, 6, 300], embedding_dim=16, bottom_mlp=[32], top_mlp=[32])
    batches = _batches((40, 6, 300), 3, 256, seed=3)
    runs = []
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = DLRM(config)
        initial = model.sparse_arch.embedding.weight.detach().clone()
        step = TrainStep(model, StepOptions(lr=3e-3, embedding_lr=0.1, bf16=bf16), torch.device("cpu"))
        losses = [float(step(*batches[i % 3])) for i in range(30)]
        runs.append((losses, model.sparse_arch.embedding.weight.detach() - initial, step))
    (fp32_losses, fp32_moved, _), (bf16_losses, bf16_moved, bf16_step) = runs
    assert bf16_step.lookup_dtype == torch.bfloat16 and bf16_step.lead_slot
    assert bf16_losses[-1] < bf16_losses[0] - 0.05  # it learns
    assert max(abs(a - b) for a, b in zip(fp32_losses, bf16_losses)) < 0.02
    # Adagrad's first steps have full size whatever the gradient's magnitude, so compare where
    # the table went: the same direction, nearly the same length.
    assert F.cosine_similarity(bf16_moved.flatten(), fp32_moved.flatten(), dim=0) > 0.97
    assert abs(float(bf16_moved.norm() / fp32_moved.norm()) - 1) < 0.03
    assert bf16_moved.dtype == torch.float32 and bf16_step.sparse_opt.state_sum.dtype == torch.float32


def test_auto_precision_is_bf16_exactly_where_the_device_has_native_bf16(tmp_path: Path) -> None:
    from training.trainer import TrainConfig, step_options

    cpu = torch.device("cpu")
    assert TrainConfig().precision == "auto"
    assert step_options(TrainConfig(), cpu, 10).bf16 is native_bf16(cpu)
    assert step_options(TrainConfig(precision="fp32"), cpu, 10).bf16 is False
    assert step_options(TrainConfig(precision="bf16"), cpu, 10).bf16 is True


def test_batches_of_another_size_than_the_first_skip_the_compiled_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ragged last batch must not trigger a second compile (many seconds on 2 CPU cores)."""
    torch.manual_seed(0)
    model = DLRM(DLRMConfig(3, [5, 7], embedding_dim=4, bottom_mlp=[8], top_mlp=[8]))
    sizes: list[int] = []

    def recording_compile(fn, **_options):  # noqa: ANN001, ANN202  # stands in for torch.compile
        if getattr(fn, "__name__", "") != "forward":
            return fn
        return lambda dense, *rest: (sizes.append(dense.shape[0]), fn(dense, *rest))[1]

    monkeypatch.setattr(torch, "compile", recording_compile)
    step = TrainStep(model, StepOptions(compile=True), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    for batch in (16, 16, 5, 16):
        sparse = torch.stack([torch.randint(0, 5, (batch,), generator=g), torch.randint(0, 7, (batch,), generator=g)], 1)
        loss = step(torch.randn(batch, 3, generator=g), sparse, (torch.rand(batch, generator=g) < 0.5).float())
        assert torch.isfinite(loss)
    assert sizes == [16, 16, 16]


def test_retaining_freed_memory_is_on_and_idempotent_on_glibc() -> None:
    # How many page faults a step saves is a property of the machine: bench/cpu_heap_faults.py.
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc heap knobs")
    assert retain_freed_memory() and retain_freed_memory()


def _anon_huge_kb(address: int) -> int:
    """AnonHugePages of the mapping that holds `address` (Linux /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux transparent huge pages")
def test_the_cpu_table_moves_to_huge_pages_with_its_data_unchanged() -> None:
    if not Path("/sys/kernel/mm/transparent_hugepage").exists():
        pytest.skip("this kernel has no transparent huge pages")
    model = DLRM(DLRMConfig(3, [40_000, 50], embedding_dim=64, bottom_mlp=[8], top_mlp=[8]))  # 10 MB table
    table = model.sparse_arch.embedding.weight
    before = table.detach().clone()
    step = TrainStep(model, StepOptions(), torch.device("cpu"))
    assert torch.equal(table, before)
    assert step(*_batches((40_000, 50), 1, 64, seed=5)[0]).isfinite()
    if not step.huge_pages:
        pytest.skip("MADV_COLLAPSE is missing (Linux < 6.1) or found no free huge page")
    assert _anon_huge_kb(table.data_ptr() + table.untyped_storage().nbytes() // 2) >= 2048


def test_sparse_optimizers_accept_a_tensor_learning_rate() -> None:
    ids, grads = torch.tensor([0, 2, 2]), torch.ones(3, 2)
    for opt_cls in (RowWiseAdagrad, SparseSGD):
        a, b = torch.zeros(4, 2), torch.zeros(4, 2)
        opt_cls(a, lr=0.3).step(ids, grads)
        opt_cls(b, lr=99.0).step(ids, grads, lr=torch.tensor([0.3]))
        torch.testing.assert_close(a, b)
        assert a[1].abs().sum() == 0 and a[2].abs().sum() > 0


_KERNEL_CHECK = textwrap.dedent(
    """
    import torch
    from training.fastpath.launch import rowwise_launch
    from training.fastpath.rowwise_triton import FusedRowWiseAdagradKernel
    from training.optim import RowWiseAdagrad
    torch.manual_seed(0)
    # (rows, dim, ids, lead slots, columns per block: None = the table's; 16 at dim 48 = 4 blocks, the last half masked)
    cases = [(50, 16, 300, 0, None), (7, 12, 500, 0, None), (3, 32, 200, 0, None), (40, 8, 300, 1, None),
             (500, 16, 1200, 2, None), (60, 48, 400, 1, 16), (500, 32, 1200, 2, 16)]
    for rows, dim, n, lead, columns in cases:
        weight = torch.randn(rows, dim)
        ref_weight = weight.clone()
        ref = RowWiseAdagrad(ref_weight, lr=0.1, fused=False)
        state = torch.zeros(rows)
        table = rowwise_launch(dim)
        # chunk 16: runs over many chunks
        kernel = FusedRowWiseAdagradKernel(table._replace(chunk=16 if lead == 2 else 64, columns=columns or table.columns))
        for _ in range(2):
            ids = torch.randint(0, rows, (n,))
            ids[: n // 3] = rows - 1  # a hot id across several chunks
            # lead > 0: the ids' gradients are the last slots of (B, lead + n / B, dim)
            grads = torch.randn(n // 4, lead + 4, dim) if lead else torch.randn(n, dim)
            ref.step(ids, grads)
            kernel(weight, state, ids, grads, 0.1, 1e-8)
            torch.testing.assert_close(weight, ref_weight, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(state, ref.state_sum, rtol=1e-5, atol=1e-6)
            assert kernel.summed.abs().max() == 0
    print("ok")
    """
)


def test_fused_kernel_matches_the_torch_update_in_the_triton_interpreter() -> None:
    pytest.importorskip("triton")
    # The interpreter runs the Triton kernels on the CPU; it must be chosen before triton loads.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    done = subprocess.run([sys.executable, "-c", _KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def _compile_for_hopper(kernel, pointers: dict[str, str], constexprs: dict[str, object], **options: int):  # noqa: ANN001, ANN202
    """Build a Triton kernel for sm90 without a GPU: int32 scalars, fp32 `eps`, typed pointers."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {
        p.name: "constexpr" if p.is_constexpr else pointers.get(p.name, "fp32" if p.name == "eps" else "i32")
        for p in kernel.params
    }
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton_compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def test_triton_kernels_compile_for_hopper_on_any_machine() -> None:
    """Every CUDA kernel, in the variants the step launches, builds for sm90 (H100/H200).

    Triton type-checks and lowers the kernels on the CPU too, so a kernel that would fail to
    compile on the GPU machine fails here first; the GPU tests check what the kernels compute.
    """
    pytest.importorskip("triton")
    from training.fastpath import interaction_triton as it
    from training.fastpath import rowwise_triton as rt
    from training.fastpath.launch import ROWWISE_NARROW_ROWS, ROWWISE_WIDE_ROWS, RowwiseLaunch, interaction_launch

    for dtype, dim_p, gather in [("bf16", 128, True), ("bf16", 16, False), ("fp32", 128, True), ("fp32", 32, False)]:
        rows = {"emb_ptr": "*fp32" if gather else f"*{dtype}", "ids_ptr": "*i64" if gather else f"*{dtype}"}
        pointers = {name: f"*{dtype}" for name in ("dense_ptr", "out_ptr", "grad_ptr", "grad_dense_ptr", "grad_emb_ptr")}
        setting = interaction_launch(dim_p)
        launch = {"num_warps": setting.warps, "num_stages": setting.stages}
        for kernel, columns in [(it._forward_kernel, setting.forward_columns), (it._backward_kernel, setting.backward_columns),
                                (it._backward_kernel, 32)]:
            constexprs = {"F_P": 32, "DIM_P": dim_p, "SAMPLES_": setting.samples, "LEAD": True, "IEEE": dtype == "fp32",
                          "GATHER": gather, "COLS": min(columns or dim_p, dim_p)}
            assert _compile_for_hopper(kernel, pointers | rows, constexprs, **launch).asm["cubin"]
    pointers = {"order_ptr": "*i64", "slot_ptr": "*i32", "unique_ptr": "*i32", "out_ptr": "*fp32", "summed_ptr": "*fp32",
                "weight_ptr": "*fp32", "state_ptr": "*fp32", "lr_ptr": "*fp32"}
    # the launch settings the step uses at dim 128 and 16, and whole rows in one block
    for grad, dim_p, launch in [("bf16", 128, ROWWISE_WIDE_ROWS), ("fp32", 16, ROWWISE_NARROW_ROWS),
                                ("bf16", 128, RowwiseLaunch(chunk=64, columns=128, warps=4, per_program=1))]:
        constexprs = {"DIM_P": dim_p, "CHUNK_": launch.chunk, "IEEE": grad == "fp32", "STRIDED": grad == "bf16",
                      "PER_PROGRAM": launch.per_program, "STAGES": launch.stages, "COLS": launch.columns}
        segment_sum = _compile_for_hopper(rt._segment_sum_kernel, pointers | {"grad_ptr": f"*{grad}"}, constexprs,
                                          num_warps=launch.warps)
        assert segment_sum.asm["cubin"]
    apply_split = {"DIM_P": 128, "ROWS": rt.APPLY_ROWS, "CHUNK_": 16}
    assert _compile_for_hopper(rt._apply_split_kernel, pointers, apply_split, num_warps=4).asm["cubin"]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("blocks", [False, True])
def test_triton_interaction_matches_the_bmm_path_on_gpu(dtype: torch.dtype, blocks: bool) -> None:
    """The Triton interaction (forward and both gradients) against the batched-matmul path, with
    the launch settings the step uses and (`blocks`) with both kernels in 16-column blocks."""
    from training.fastpath import interaction_triton
    from training.fastpath.launch import InteractionLaunch

    in_blocks = InteractionLaunch(samples=4, warps=2, stages=2, forward_columns=16, backward_columns=16)
    torch.manual_seed(0)
    # F = 27 with and without the leading slot, and shapes that are no powers of two (dim 96: the
    # last 64-column block of the backward half masked)
    for batch, n_features, dim, lead in [(37, 27, 128, True), (21, 27, 16, False), (9, 6, 12, True), (10, 3, 20, False),
                                         (13, 27, 96, True)]:
        arch = _interaction(n_features, "cuda")
        dense = torch.randn(batch, dim, device="cuda", dtype=dtype)
        embedded = torch.randn(batch, n_features - (not lead), dim, device="cuda", dtype=dtype)
        if lead:
            embedded[:, 0] = 0  # as TrainStep's lookup leaves it
        weight = torch.randn(batch, dim + InteractionArch(n_features).n_pairs, device="cuda", dtype=dtype)
        assert arch.uses_triton(embedded.device)  # what the step runs on a GPU
        if blocks:  # the output's gradient is `weight`
            got = (interaction_triton.forward_with(in_blocks, dense, embedded, n_features),
                   *interaction_triton.backward_with(in_blocks, weight, dense, embedded, n_features))
        else:
            got = _grads(arch, dense, embedded, weight)
        want = _grads(_interaction(n_features, "cuda", triton_interaction=False), dense, embedded, weight)
        tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 0.1}
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape and g.is_contiguous()
            torch.testing.assert_close(g.float(), w.float(), **tol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_interaction_reading_the_table_equals_reading_a_looked_up_copy_on_gpu(dtype: torch.dtype) -> None:
    """Rows read by the kernels from the (fp32) table give the copy's output and gradients exactly."""
    from training.fastpath import interaction_triton

    torch.manual_seed(0)
    for batch, n_features, dim in [(37, 27, 128), (9, 6, 12)]:
        table = torch.randn(1000, dim, device="cuda")
        ids = torch.randint(0, 1000, (batch, n_features - 1), device="cuda")
        dense = torch.randn(batch, dim, device="cuda", dtype=dtype)
        looked_up = torch.cat([torch.zeros(batch, 1, dim, device="cuda"), table[ids]], 1).to(dtype)
        grad_out = torch.randn(batch, dim + n_features * (n_features - 1) // 2, device="cuda", dtype=dtype)
        results = []
        for embedded, rows_from in ((looked_up, ()), (torch.full_like(looked_up, float("nan")), (table, ids))):
            d, e = dense.clone().requires_grad_(True), embedded.clone().requires_grad_(True)
            out = interaction_triton.dot_interaction(d, e, n_features, *rows_from)
            (out * grad_out).sum().backward()
            results.append((out, d.grad, e.grad))
        for got, want in zip(*results):  # the carrier's NaNs were never read
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got, want)
        with pytest.raises(ValueError, match="do not match"):
            interaction_triton.dot_interaction(dense, looked_up[:, 1:], n_features, table, ids)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("bf16", [False, True])
def test_step_reading_rows_from_the_table_matches_the_lookup_step_on_gpu(bf16: bool) -> None:
    config = DLRMConfig(3, [1000, 5, 20_000], embedding_dim=64, bottom_mlp=[32], top_mlp=[32])
    narrow = DLRM(DLRMConfig(3, [10, 5, 7], embedding_dim=32)).cuda()
    assert not TrainStep(narrow, StepOptions(), torch.device("cuda")).rows_from_table  # rows < 256 B: a copy
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(512, 3, generator=g).cuda(),
                torch.stack([torch.randint(0, c, (512,), generator=g) for c in (1000, 5, 20_000)], 1).cuda(),
                (torch.rand(512, generator=g) < 0.3).float().cuda()) for _ in range(3)]
    results = []
    for rows_from_table in (True, False):
        torch.manual_seed(0)
        model = DLRM(config).cuda()
        step = TrainStep(model, StepOptions(bf16=bf16), torch.device("cuda"), FastPath(rows_from_table=rows_from_table))
        assert step.rows_from_table is rows_from_table  # True: what a CUDA step does by default at dim >= 64
        losses = [float(step(*batches[i % 3])) for i in range(6)]
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    (losses, params), (want_losses, want_params) = results
    # Same math; atomics in the row update may add in another order, and in bf16 such a last-bit
    # difference in a row can flip its rounding in the next lookup.
    tol = {"rtol": 1e-2, "atol": 1e-3} if bf16 else {"rtol": 1e-4, "atol": 1e-5}
    assert losses == pytest.approx(want_losses, rel=tol["rtol"] / 10, abs=1e-6)
    for got, want in zip(params, want_params):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.gpu
@needs_cuda
def test_aligned_dense_input_gives_the_same_layer_on_gpu() -> None:
    torch.manual_seed(0)
    arch = DenseArch(13, [64], 16).cuda()
    dense = torch.randn(300, 13, device="cuda")
    results = []
    for align in (True, False):
        arch.zero_grad()
        out = dense_forward(arch, dense, align)
        out.square().sum().backward()
        results.append((out.detach(), *(p.grad.clone() for p in arch.parameters())))
    for got, want in zip(*results):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_fused_kernel_updates_only_touched_rows_like_the_reference_on_gpu() -> None:
    from training.fastpath.rowwise_triton import FusedRowWiseAdagradKernel

    torch.manual_seed(0)
    weight = torch.randn(100_000, 64, device="cuda")
    ref_weight = weight.clone()
    ref = RowWiseAdagrad(ref_weight, lr=0.05, fused=False)
    state = torch.zeros(100_000, device="cuda")
    kernel = FusedRowWiseAdagradKernel()
    for i in range(3):
        ids = torch.randint(0, 100_000, (200_000,), device="cuda")
        ids[:50_000] = 7
        grads = torch.randn(200_000, 64, device="cuda")
        if i == 2:  # the interaction's layout: the ids' gradients behind a leading slot
            grads = torch.cat([torch.randn(8_000, 1, 64, device="cuda"), grads.view(8_000, 25, 64)], 1)
        ref.step(ids, grads)
        kernel(weight, state, ids, grads, 0.05, 1e-8)
    torch.testing.assert_close(weight, ref_weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, ref.state_sum, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_graphed_compiled_step_matches_the_eager_step_on_gpu() -> None:
    config = DLRMConfig(3, [1000, 5, 20_000], embedding_dim=16, bottom_mlp=[32], top_mlp=[32])
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(512, 3, generator=g).cuda(),
                torch.stack([torch.randint(0, c, (512,), generator=g) for c in (1000, 5, 20_000)], 1).cuda(),
                (torch.rand(512, generator=g) < 0.3).float().cuda()) for _ in range(3)]
    params = []
    for fast, autotune in ((True, False), (True, True), (False, False)):
        torch.manual_seed(0)
        model = DLRM(config).cuda()
        options = StepOptions(compile=fast, cuda_graph=fast, autotune=autotune)
        step = TrainStep(model, options, torch.device("cuda"))
        for i in range(8):
            step(*batches[i % 3])
        params.append([p.detach().clone() for p in model.parameters()])
    for fast in params[:2]:  # compiled and graphed, with and without max-autotune
        for got, want in zip(fast, params[2]):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
