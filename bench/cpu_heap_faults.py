"""Minor page faults per CPU training step, with the heap kept (`retain_freed_memory`) or not.

A count of page faults measures the machine (glibc's thresholds, the kernel, other processes) as
much as the code, so it lives here and not in the unit suite. The lookup rows of one step at
batch 8192 (8 features, dim 128, fp32: 38 MB) lie above glibc's largest mmap threshold (32 MB):
without the retained heap every step maps and faults them in afresh (~31k faults measured on the
2-core EPYC), with it nearly none. The allocator setting is process-wide, so each side runs in
its own process.

    python -m bench.cpu_heap_faults            # prints one line per side
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from bench.report import REPO

_ONE_SIDE = """
import json, resource, torch
from models.dlrm import DLRM, DLRMConfig
from training.fastpath import FastPath, StepOptions, TrainStep
cards = (50_000, 20_000, 30_000, 7, 1000, 5000, 300, 80_000)
g = torch.Generator().manual_seed(4)
batches = [(torch.randn(8192, 3, generator=g), torch.stack([torch.randint(0, c, (8192,), generator=g) for c in cards], 1),
            (torch.rand(8192, generator=g) < 0.3).float()) for _ in range(2)]
model = DLRM(DLRMConfig(3, list(cards), embedding_dim=128, bottom_mlp=[64], top_mlp=[64]))
step = TrainStep(model, StepOptions(bf16=True), torch.device("cpu"), FastPath(retain_heap={retain}))
for i in range(3):
    step(*batches[i % 2])
faults = []
for i in range({steps}):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(*batches[i % 2])
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    for retain in (True, False):
        code = _ONE_SIDE.format(retain=retain, steps=args.steps)  # `-c` from the repository root imports it
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        faults = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"retain_heap={retain}: median {statistics.median(faults):.0f} minor faults per step ({faults})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
