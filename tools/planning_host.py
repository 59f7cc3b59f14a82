"""Host time of one layer's planning on a GPU machine, per mmi function: `estimate_layer_keeps` of `layer_bench`'s
mixed configs at ~131K tokens, each listed function wrapped in a host clock (inclusive milliseconds per call, no
profiler: its own overhead distorts host-bound code). Planning at 131K is host-bound (the host issue time is the
wall time), so these are the numbers a change to the planning's host side moves; `tools/planning_ops.py` is their
CPU-side proxy (op counts).

Usage (GPU machine): python tools/planning_host.py [--tokens 131072] [--configs none,q_same,q,2d]. Prints per
config the host issue time and the wall time to a synchronisation (medians), then the inclusive host time of each
wrapped function.
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import layer_bench as lb
import mmi_kernels.boundary_planner as bp
import mmi_kernels.estimate as est
import mmi_kernels.keep_planner as kp
from mmi_kernels import LayoutTensors, estimate_layer_keeps

WRAPPED = {
    est: ["_group_stats", "_vertical_slash", "_grids", "boundary_keeps", "estimate_block_sparse", "block_sparse_keeps",
          "estimate_problems", "vertical_slash_keeps", "grid_keeps", "grid_phases", "top_ids"],
    bp: ["_sub_keeps", "_incidences", "_round_tiles", "_round_columns", "_inverse", "_orders", "_slots", "slot_tiles"],
    kp: ["grid_block_bounds", "_grid_inverse", "grid_row_intervals", "grid_blocks"],
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--configs", default="none,q_same,q,2d")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the tool itself (CPU op costs)")
    args = ap.parse_args()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    kinds = tuple(lb.MIXED_KINDS[h % 3] for h in range(lb.HQ))
    _, q, k, _, layout = lb.workload("mixed", args.tokens, kinds, lb.real_frame_spec(256), args.device)
    lt = LayoutTensors(layout, args.device)
    scale = 1 / math.sqrt(lb.D)
    configs = {c: lb.mixed_head_configs(c, 128, kinds) for c in args.configs.split(",")}

    def timed(fn) -> tuple[float, float]:  # median host issue and wall (to a synchronisation), ms
        for _ in range(2):
            fn()
        sync()
        issue, wall = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            sync()
            issue.append((t1 - t0) * 1e3)
            wall.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(issue), statistics.median(wall)

    for c, hc in configs.items():
        issue, wall = timed(lambda hc=hc: estimate_layer_keeps(q, k, lt, hc, 0, scale=scale))
        print(f"{c}: host issue {issue:.2f} ms, wall {wall:.2f} ms")
    spent: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()

    def wrap(mod, name: str) -> None:
        f, key = getattr(mod, name), f"{mod.__name__.split('.')[-1]}.{name}"

        @functools.wraps(f)
        def g(*a, **kw):
            t0 = time.perf_counter()
            try:
                return f(*a, **kw)
            finally:
                spent[key] += time.perf_counter() - t0
                calls[key] += 1

        setattr(mod, name, g)

    for mod, names in WRAPPED.items():
        for name in names:
            if hasattr(mod, name):
                wrap(mod, name)
    for c, hc in configs.items():
        spent.clear()
        calls.clear()
        _, wall = timed(lambda hc=hc: estimate_layer_keeps(q, k, lt, hc, 0, scale=scale))
        n = args.reps + 2
        print(f"== {c}: wall {wall:.2f} ms with the clocks; inclusive host ms per call:")
        for key, s in spent.most_common():
            print(f"   {key:35s} {s * 1e3 / n:7.2f}  x{calls[key] // n}")


if __name__ == "__main__":
    main()
