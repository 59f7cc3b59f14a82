"""Host work of one layer's planning, counted on a CPU: the non-view aten ops of `estimate_layer_keeps` (and of
`index_from_keeps`) on `layer_bench`'s mixed workload, per calling mmi function.

Planning at 131K tokens is host-bound on the GPU machine (each op is a launch and ~10-40 us of host time), so the
op count is the CPU-side proxy for what a change saves; it says nothing about device time. Triton kernels run
under the interpreter and count as one launch each (their interpreter's own tensor ops are skipped).

Usage: TRITON_INTERPRET=1 python tools/planning_ops.py [--configs none,q_same,q,2d] [--tokens 6000] [--heads 8]
[--by-function]. Prints one line per config: estimation ops, index ops.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import layer_bench as lb
from mmi_kernels import LayoutTensors, estimate_layer_keeps, index_from_keeps, layer_slots

VIEWS = {"aten::view", "aten::_unsafe_view", "aten::slice", "aten::select", "aten::expand", "aten::transpose",
         "aten::t", "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::as_strided", "aten::alias",
         "aten::detach", "aten::reshape", "aten::lift_fresh"}  # fmt: skip


class OpCounter(TorchDispatchMode):
    """Non-view aten ops, keyed by the innermost mmi function on the Python stack (Triton's interpreter skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_function: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name not in VIEWS:
            f, where = sys._getframe(1), None
            while f is not None:
                name = f.f_code.co_filename
                if "triton" in name and "site-packages" in name:
                    break  # an op of the interpreter running a kernel: the launch is what counts
                if where is None and "/mmi_" in name and "site-packages" not in name:
                    where = f"{Path(name).name}:{f.f_code.co_name}"
                f = f.f_back
            else:
                self.by_function[where or "?"] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="none,q_same,q,2d")
    ap.add_argument("--tokens", type=int, default=6000)
    ap.add_argument("--heads", type=int, default=8, help="query heads (KV heads: a quarter)")
    ap.add_argument("--by-function", action="store_true")
    args = ap.parse_args()
    lb.HQ, lb.HKV, lb.D = args.heads, max(1, args.heads // 4), 64
    kinds = tuple(lb.MIXED_KINDS[h % 3] for h in range(lb.HQ))
    _, q, k, _, layout = lb.workload("mixed", args.tokens, kinds, lb.real_frame_spec(16), "cpu")
    q, k = q.float(), k.float()
    lt = LayoutTensors(layout, "cpu")
    print(f"{layout.num_tokens} tokens, {lb.HQ} query heads, block 64")
    for config in args.configs.split(","):
        hc = lb.mixed_head_configs(config, 64, kinds)
        keeps = estimate_layer_keeps(q, k, lt, hc, 0, scale=0.125)  # warm: the batch's layout caches
        est, idx = OpCounter(), OpCounter()
        with est:
            keeps = estimate_layer_keeps(q, k, lt, hc, 0, scale=0.125)
        with idx:
            index_from_keeps([keeps], block=64, num_q_heads=lb.HQ, num_kv_heads=lb.HKV, slot_heads=layer_slots(hc, 0))
        print(f"{config}: estimation {sum(est.by_function.values())} ops, index {sum(idx.by_function.values())} ops")
        if args.by_function:
            for where, c in est.by_function.most_common():
                print(f"  {c:6d} {where}")


if __name__ == "__main__":
    main()
