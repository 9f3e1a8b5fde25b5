"""Training throughput (samples/s) of our DLRM step against a facebookresearch/dlrm-style baseline.

Each measurement is forward + backward + optimizer step on batches already on the device. Ours is
`training.fastpath.TrainStep`, the step `training.train()` runs: one fused table, a detached lookup
whose gradient feeds the row-wise Adagrad (on CUDA the fused Triton kernels of
`training.fastpath.rowwise_triton`; on the CPU a sort + `embedding_bag` segment sum), the one-bmm interaction
backward, fused Adam for the MLPs, bf16 autocast where the trainer picks it (GPU; CPUs with
AVX512-BF16/AMX), torch.compile of the lookup and dense part (as `train()` does on CUDA and for long
CPU runs, `training.fastpath.compile_pays_off`) and one CUDA graph per step on CUDA. `--variants` times
the same step with one technique switched off (a named `FastPath` value each) in the same run; on the CPU all variants and the baseline
take turns repeat by repeat. The baseline is built like the reference DLRM: one
`nn.EmbeddingBag(mode="sum", sparse=True)` per table looked up in a Python loop, fp32,
`torch.optim.SGD`, the same MLPs and data.

Only torch (and triton on CUDA) and the standard library are imported besides `training`, so it
runs on the bare GPU machine. Usage:
    python -m bench.train_throughput                # full Criteo-Kaggle sizes on CUDA, CPU sizes otherwise
    python -m bench.train_throughput --quick        # small tables and batches, minutes on a laptop CPU
    python -m bench.train_throughput --check --variants fast,no_pad,torch_sparse --git-sha SHA
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.report import RESULTS, add_common_options, append_results, command, git_sha, now

from models.dlrm import DLRM, DLRMConfig, mlp  # noqa: E402
from training.fastpath import (  # noqa: E402
    CPU_COMPILE_MIN_STEPS, FastPath, StepOptions, TrainStep, compile_pays_off, native_bf16, retain_freed_memory)
from training.fastpath.launch import ROWWISE_WIDE_ROWS  # noqa: E402
from training.optim import id_rows  # noqa: E402

log = logging.getLogger("bench.train_throughput")

# Criteo Kaggle (Display Advertising Challenge) categorical cardinalities, as counted by the
# facebookresearch/dlrm preprocessing (day_fea_count); the largest table has ~10.1M rows.
CRITEO_KAGGLE_CARDINALITIES = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]
N_DENSE = 13


@dataclass(frozen=True)
class BenchConfig:
    """One model shape: dim, bottom MLP (13-...-dim) and top MLP (...-1)."""

    name: str
    embedding_dim: int
    bottom_mlp: list[int]  # hidden widths between 13 and embedding_dim
    top_mlp: list[int]  # hidden widths before the final 1
    cardinalities: list[int]


def configs(max_rows: int | None) -> dict[str, BenchConfig]:
    cards = [min(c, max_rows) if max_rows else c for c in CRITEO_KAGGLE_CARDINALITIES]
    return {
        "a": BenchConfig("a_dim16", 16, [512, 256, 64], [512, 256], cards),
        "b": BenchConfig("b_dim128", 128, [512, 256], [512, 256], cards),
    }


class ReferenceDLRM(nn.Module):
    """The reference implementation's structure: EmbeddingBag per table, looked up in a loop."""

    def __init__(self, cfg: BenchConfig) -> None:
        super().__init__()
        self.bot_l = mlp([N_DENSE, *cfg.bottom_mlp, cfg.embedding_dim])
        self.emb_l = nn.ModuleList(nn.EmbeddingBag(n, cfg.embedding_dim, mode="sum", sparse=True) for n in cfg.cardinalities)
        for table in self.emb_l:
            nn.init.uniform_(table.weight, -(1 / table.num_embeddings) ** 0.5, (1 / table.num_embeddings) ** 0.5)
        n_features = len(cfg.cardinalities) + 1
        self.top_l = mlp([cfg.embedding_dim + n_features * (n_features - 1) // 2, *cfg.top_mlp, 1], last_activation=False)
        li, lj = torch.tril_indices(n_features, n_features, offset=-1)
        self.register_buffer("li", li, persistent=False)
        self.register_buffer("lj", lj, persistent=False)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor, bag_offsets: torch.Tensor) -> torch.Tensor:
        x = self.bot_l(dense)
        ly = [table(sparse[:, k], bag_offsets) for k, table in enumerate(self.emb_l)]
        t = torch.cat([x, *ly], dim=1).view(x.shape[0], -1, x.shape[1])
        z = torch.bmm(t, t.transpose(1, 2))
        return self.top_l(torch.cat([x, z[:, self.li, self.lj]], dim=1)).squeeze(-1)


def reference_step(cfg: BenchConfig, device: torch.device, batch: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]:
    with device:
        model = ReferenceDLRM(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    bag_offsets = torch.arange(batch, device=device)

    def step(dense: torch.Tensor, sparse: torch.Tensor, label: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(dense, sparse, bag_offsets), label)
        loss.backward()
        opt.step()

    return step


# The step with one technique switched off (or changed), each a named `FastPath`; `fast` is what
# training.train() runs. Off CUDA the CUDA-only switches change nothing.
VARIANTS: dict[str, FastPath] = {
    "fast": FastPath(),
    "bmm_interaction": FastPath(triton_interaction=False),  # batched matmuls (pads F when dim > 32)
    "pad": FastPath(triton_interaction=False, pad=True),
    "no_pad": FastPath(triton_interaction=False, pad=False),
    "no_lead": FastPath(triton_interaction=False, lead_slot=False),  # two bmms for the input gradients
    "autograd_interaction": FastPath(fused_interaction=False, pad=False),
    "torch_sparse": FastPath(fused_interaction=False, pad=False, fused_rowwise=False),  # the first step
    "unaligned_dense": FastPath(align_dense=False),  # K = 13 for the first dense layer
    "lookup_rows": FastPath(rows_from_table=False),  # a looked-up (B, F, dim) copy for the interaction
    "autotune_mlp": FastPath(),  # with StepOptions.autotune (TrainConfig.autotune): see AUTOTUNED
    # the row update's launch at dim >= 64 with one setting changed; the second and third fastest
    # of bench/rowwise_sweep.py at dim 128 (`c16_cols16`, `c32_cols32_w2`)
    "warps8": FastPath(rowwise_launch=ROWWISE_WIDE_ROWS._replace(warps=8)),
    "per1": FastPath(rowwise_launch=ROWWISE_WIDE_ROWS._replace(per_program=1)),
    "per4_s2": FastPath(rowwise_launch=ROWWISE_WIDE_ROWS._replace(per_program=4, stages=2)),
    "c16_cols16": FastPath(rowwise_launch=ROWWISE_WIDE_ROWS._replace(columns=16)),
    "c32_cols32_w2": FastPath(rowwise_launch=ROWWISE_WIDE_ROWS._replace(chunk=32, warps=2)),
}
# the dense part compiled by inductor's max-autotune (Triton GEMM templates with bias and ReLU fused in)
AUTOTUNED = frozenset({"autotune_mlp"})


def fast_step(cfg: BenchConfig, device: torch.device, bf16: bool, compile_: bool, graph: bool,
              variant: str = "fast") -> TrainStep:
    """The trainer's own step (training.fastpath.TrainStep) on a freshly initialised DLRM."""
    torch.manual_seed(0)
    with device:  # build the tables in place: a 10M-row table is slow to init on the host
        model = DLRM(DLRMConfig(N_DENSE, cfg.cardinalities, cfg.embedding_dim, cfg.bottom_mlp, cfg.top_mlp))
    autotune = variant in AUTOTUNED and device.type == "cuda"
    options = StepOptions(lr=1e-3, embedding_lr=0.05, bf16=bf16, compile=compile_, cuda_graph=graph, autotune=autotune)
    return TrainStep(model, options, device, VARIANTS[variant])


def make_batches(cfg: BenchConfig, batch: int, n: int, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator(device="cpu").manual_seed(1)
    out = []
    for _ in range(n):
        dense = torch.randn(batch, N_DENSE, generator=g)
        sparse = torch.stack([torch.randint(0, c, (batch,), generator=g) for c in cfg.cardinalities], dim=1)
        label = (torch.rand(batch, generator=g) < 0.25).float()
        out.append(tuple(t.to(device) for t in (dense, sparse, label)))
    return out


def _timed(step: Callable[..., None], batches: list[tuple[torch.Tensor, ...]], steps: int, cuda: bool) -> float:
    """samples/s of `steps` consecutive steps."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
    began = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    if cuda:
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1000
    else:
        seconds = time.perf_counter() - began
    return steps * batches[0][0].shape[0] / seconds


def measure(
    steps_by_name: dict[str, Callable[..., None]],
    batches: list[tuple[torch.Tensor, ...]],
    warmup: int,
    steps: int,
    repeats: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """samples/s of each repeat per step function; repeats alternate between them so that load
    from other processes (a shared CPU) hits both sides alike. Warm-up steps are not timed."""
    cuda = device.type == "cuda"
    for step in steps_by_name.values():
        for i in range(warmup):
            step(*batches[i % len(batches)])
    rates: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(repeats):
        for name, step in steps_by_name.items():
            rates[name].append(_timed(step, batches, steps, cuda))
    return rates


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{torch.get_num_threads()}core"


def cpu_identity() -> dict[str, object]:
    """The CPU's model and its measured GEMM rates: the ratio to the fp32 baseline follows the
    bf16/fp32 GEMM speed, which differs between hosts that report the same flags (two AVX512-BF16
    EPYCs of these 2-core machines ran bf16 GEMMs at ~900 and ~360 GFLOP/s, fp32 at ~195 both)."""
    info: dict[str, object] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        pairs = (line.split(":", 1) for line in cpuinfo.read_text().splitlines()[:30] if ":" in line)
        fields = {key.strip(): value.strip() for key, value in pairs}
        info = {"model_name": fields.get("model name"), "family": fields.get("cpu family"), "model": fields.get("model")}
    for dtype in (torch.bfloat16, torch.float32):
        a, b = torch.randn(2048, 512).to(dtype), torch.randn(512, 512).to(dtype)
        for _ in range(5):
            a @ b
        began, n = time.perf_counter(), 40
        for _ in range(n):
            a @ b
        info[f"gemm_2048x512x512_{str(dtype).split('.')[1]}_gflops"] = 2 * 2048 * 512 * 512 * n / (time.perf_counter() - began) / 1e9
    return info


def release() -> None:
    """Free a finished step's model: compiled code and captured graphs keep references to it."""
    import gc

    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_fused_adagrad(device: torch.device) -> list[dict]:
    """The Triton row-wise Adagrad against an fp64 reference on the touched rows, incl. a table of
    more than 2^31 elements (64-bit offsets) and hot ids; untouched rows must stay bit-identical."""
    from training.fastpath.rowwise_triton import FusedRowWiseAdagradKernel

    out = []
    g = torch.Generator(device="cpu").manual_seed(3)
    # lead > 0: gradients as the step passes them, the ids' rows behind `lead` slots of (B, W, dim);
    # launch: the table's settings (None) or those of a variant.
    launches = {v.rowwise_launch for v in VARIANTS.values() if v.rowwise_launch is not None}
    cases = [(1000, 16, 50_000, torch.bfloat16, 0, None), (3, 128, 70_001, torch.bfloat16, 0, None),
             (20_000_000, 128, 1_703_936, torch.bfloat16, 1, None), (5000, 12, 40_000, torch.float32, 2, None),
             *[(30_000, 128, 1_703_936, torch.bfloat16, 1, launch) for launch in sorted(launches)]]
    for rows, dim, n, dtype, lead, launch in cases:
        weight = torch.empty(rows, dim, device=device).uniform_(-0.05, 0.05)
        state = torch.rand(rows, device=device)
        ids = torch.randint(0, rows, (n,), generator=g).to(device)
        ids[: n // 4] = rows - 1  # a hot id at the far end of the table
        n_ids = 26 if n % 26 == 0 else 8
        passed = torch.randn(n // n_ids, lead + n_ids, dim, generator=g).to(device, dtype) if lead else None
        grads = id_rows(ids, passed) if lead else torch.randn(n, dim, generator=g).to(device, dtype)
        uniq = torch.unique(ids)
        probe = torch.randint(0, rows, (4096,), generator=g).to(device)
        probe = probe[~torch.isin(probe, uniq)]
        before_probe = weight[probe].clone()
        w0, s0 = weight[uniq].double(), state[uniq].double()
        inverse = torch.searchsorted(uniq, ids)
        summed = torch.zeros(uniq.numel(), dim, dtype=torch.float64, device=device).index_add_(0, inverse, grads.double())
        s_ref = s0 + summed.pow(2).mean(1)
        w_ref = w0 - 0.05 * summed / (s_ref.sqrt() + 1e-8).unsqueeze(1)
        kernel = FusedRowWiseAdagradKernel(launch)
        kernel(weight, state, ids, grads if passed is None else passed, 0.05, 1e-8)
        err_w = float((weight[uniq].double() - w_ref).norm() / (w_ref - w0).norm())
        err_s = float((state[uniq].double() - s_ref).norm() / s_ref.norm())
        untouched_same = bool(torch.equal(weight[probe], before_probe))
        scratch_zero = bool(kernel.summed.abs().max() == 0)
        row = {"rows": rows, "dim": dim, "n": n, "dtype": str(dtype), "lead_slots": lead,
               "launch": launch._asdict() if launch else "table", "rel_err_update": err_w,
               "rel_err_state": err_s, "untouched_rows_same": untouched_same, "scratch_zeroed": scratch_zero}
        log.info("check fused adagrad %s", row)
        assert err_w < 1e-4 and err_s < 1e-5 and untouched_same and scratch_zero, row
        out.append(row)
        del weight, state, summed, grads, passed
        torch.cuda.empty_cache()
    return out


def check_step_equivalence(device: torch.device) -> list[dict]:
    """TrainStep with compile + CUDA graph + fused kernels against the plain eager step (fp32)."""
    cfg = BenchConfig("check", 16, [64, 32], [64, 32], [1000, 50, 3, 20000, 7])
    batches = make_batches(cfg, 4096, 4, device)
    out = []
    for bf16 in (False, True):
        results = []
        for fast in (True, False):
            step = fast_step(cfg, device, bf16=bf16, compile_=fast, graph=fast, variant="fast" if fast else "torch_sparse")
            losses = [float(step(*batches[i % 4])) for i in range(12)]
            results.append((losses, [p.detach().double().clone() for p in step.model.parameters()]))
            del step
            release()
        (l_fast, p_fast), (l_ref, p_ref) = results
        err = max(float((a - b).norm() / b.norm()) for a, b in zip(p_fast, p_ref))
        loss_gap = max(abs(a - b) for a, b in zip(l_fast, l_ref))
        row = {"bf16": bf16, "max_rel_param_err_after_12_steps": err, "max_loss_gap": loss_gap}
        log.info("check step %s", row)
        # In bf16 the two paths round differently and Adam turns tiny gradient differences into
        # full-size steps on near-zero weights, so only fp32 must match parameter by parameter.
        assert (bf16 or err < 1e-3) and loss_gap < (2e-3 if bf16 else 1e-4), row
        out.append(row)
    return out


def profile_step(cfg: BenchConfig, batch: int, device: torch.device, bf16: bool, path: Path) -> str:
    """Top kernels of the compiled step run eagerly (kernels inside a graph replay are not listed)."""
    from torch.profiler import ProfilerActivity, profile


    batches = make_batches(cfg, batch, 2, device)
    step = fast_step(cfg, device, bf16=bf16, compile_=True, graph=False)
    for i in range(3):
        step(*batches[i % 2])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for i in range(5):
            step(*batches[i % 2])
        torch.cuda.synchronize()
    kernels = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70)
    ops = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=40, max_shapes_column_width=90)
    path.write_text(kernels + "\n\n" + ops)
    del step, batches
    release()
    return kernels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quick", action="store_true", help="CPU-sized tables (<=100k rows) and batches (2048, 16384)")
    parser.add_argument("--configs", default="a,b", help="comma list of a (dim 16) and b (dim 128)")
    parser.add_argument("--batch-sizes", default=None, help="comma list; default 2048,16384,65536 on GPU")
    parser.add_argument("--variants", default="fast", help=f"comma list of {sorted(VARIANTS)}; the first is `value`")
    parser.add_argument("--max-rows", type=int, default=None, help="cap every table at this many rows")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                        help="torch.compile of ours; auto = what training.train() runs for a long job "
                             f"(CUDA; CPU runs of >= {CPU_COMPILE_MIN_STEPS} steps): on")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="fast path autocast; auto = what training.train() picks: bf16 on GPU and on CPUs "
                             "with native bf16 dot products (avx512_bf16/AMX), else fp32")
    parser.add_argument("--no-graph", action="store_true", help="CUDA: do not capture the step in a CUDA graph")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--check", action="store_true", help="CUDA: check the fused kernels and step against references first")
    parser.add_argument("--profile", default=None, type=Path, help="CUDA: write the top kernels of config b's step here")
    add_common_options(parser, RESULTS / "train_throughput.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    quick = args.quick or not cuda
    max_rows = args.max_rows or (100_000 if quick else None)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else (
        [2048, 16384] if quick else [2048, 16384, 65536])
    # CPU: ~32k samples per timed repeat, so that a repeat outlasts scheduler noise at small batches
    steps_for = (lambda batch: args.steps or (20 if cuda else max(5, 32768 // batch)))
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)  # the compile happens here
    compile_ = compile_pays_off(device, CPU_COMPILE_MIN_STEPS) if args.compile == "auto" else args.compile == "on"
    use_graph = cuda and not args.no_graph
    bf16 = args.precision == "bf16" or (args.precision == "auto" and native_bf16(device))
    # The trainer's CPU step keeps freed memory in the heap (training.fastpath.retain_freed_memory);
    # it is process-wide, so the baseline below runs with the same allocator.
    heap_retained = retain_freed_memory() if not cuda else False
    cpu = cpu_identity() if not cuda else {}
    variants = args.variants.split(",")
    sha = args.git_sha or git_sha(dirty_paths=("models", "training", "bench/train_throughput.py"))
    checks: dict[str, list[dict]] = {}
    if args.check and cuda:
        checks = {"fused_adagrad": check_fused_adagrad(device), "step_equivalence": check_step_equivalence(device)}
    rows = []
    for key in args.configs.split(","):
        cfg = configs(max_rows)[key]
        if args.profile is not None and cuda and key == "b":
            print(profile_step(cfg, max(batch_sizes), device, bf16, args.profile))
        for batch in batch_sizes:
            batches = make_batches(cfg, batch, 4, device)
            steps = steps_for(batch)
            per_repeat: dict[str, list[float]] = {}
            peaks: dict[str, int] = {}
            if cuda:  # one model at a time: the full tables of several do not fit together
                for variant in variants:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    step = fast_step(cfg, device, bf16=bf16, compile_=compile_, graph=use_graph, variant=variant)
                    per_repeat |= measure({variant: step}, batches, warmup, steps, args.repeats, device)
                    peaks[variant] = torch.cuda.max_memory_allocated()
                    del step
                    release()
                if not args.no_baseline:
                    torch.cuda.empty_cache()
                    per_repeat |= measure({"baseline": reference_step(cfg, device, batch)}, batches, warmup, steps,
                                          args.repeats, device)
            else:  # CPU: every variant and the baseline in one interleaved loop (shared, noisy cores)
                contenders: dict[str, Callable[..., None]] = {
                    v: fast_step(cfg, device, bf16=bf16, compile_=compile_, graph=False, variant=v) for v in variants}
                if not args.no_baseline:
                    contenders["baseline"] = reference_step(cfg, device, batch)
                per_repeat = measure(contenders, batches, warmup, steps, args.repeats, device)
                del contenders
                release()
            rates = {name: statistics.median(r) for name, r in per_repeat.items()}
            baseline = rates.get("baseline")
            value = rates[variants[0]]
            config = asdict(cfg) | {
                "batch_size": batch, "tables": "criteo-kaggle" + (f" capped at {max_rows} rows" if max_rows else ""),
                "variant": variants[0], "precision": "bf16-autocast" if bf16 else "fp32",
                "compile": compile_, "cuda_graph": use_graph,
                "embedding_optimizer": "rowwise_adagrad (fused Triton kernel)" if cuda else
                                       "rowwise_adagrad (sort + embedding_bag sums, distinct rows updated once)",
                "dense_optimizer": "adam (fused)", "baseline": "EmbeddingBag(sum, sparse=True) per table + SGD, fp32",
                "steps": steps, "repeats": args.repeats, "torch": torch.__version__,
                "other_variants_samples_per_s": {v: rates[v] for v in variants[1:]},
                "repeats_samples_per_s": per_repeat,
            }
            if not cuda:
                config["threads"] = torch.get_num_threads()
                config["heap_retained_for_both"] = heap_retained
                config["cpu"] = cpu
            config.pop("cardinalities")
            row = {
                "benchmark": "train_throughput", "metric": "samples_per_s", "value": value, "unit": "samples/s",
                "baseline": baseline, "ratio": value / baseline if baseline else None, "config": config,
                "device": device_name(device), "command": command("bench.train_throughput", argv), "date": now(),
                "git_sha": sha,
            }
            if cuda:
                row["peak_gpu_mem_bytes"] = peaks[variants[0]]
                config["other_variants_peak_gpu_mem_bytes"] = {v: peaks[v] for v in variants[1:]}
            if checks:
                row["correctness_checks"] = checks
            log.info("%s batch %d: %s (baseline %s)", cfg.name, batch,
                     ", ".join(f"{v} {rates[v] / 1e6:.2f}M" for v in variants), f"{baseline / 1e6:.2f}M" if baseline else "-")
            rows.append(row)
            del batches
    append_results(args.out, rows)
    print(f"{'config':<10}{'batch':>7}  " + "".join(f"{v:>22}" for v in variants) + f"{'baseline':>12}{'ratio':>8}{'peak GiB':>10}")
    for row in rows:
        c = row["config"]
        others = [row["value"], *c["other_variants_samples_per_s"].values()]
        print(f"{c['name']:<10}{c['batch_size']:>7}  " + "".join(f"{r / 1e6:>21.2f}M" for r in others)
              + (f"{row['baseline'] / 1e6:>11.2f}M{row['ratio']:>8.2f}" if row["baseline"] else f"{'-':>12}{'-':>8}")
              + (f"{row['peak_gpu_mem_bytes'] / 2**30:>10.1f}" if "peak_gpu_mem_bytes" in row else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
