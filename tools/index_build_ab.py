"""A/B of the index build between two checkouts, on the GPU, in one process: the same keep sets (estimated by this
checkout) built into a `SparseIndex` by this checkout's `index_from_keeps` and by an older checkout's; every field
must be equal; time (CUDA events, median of 3 after a warm-up) and peak extra memory of each.

Usage (GPU machine; OLD is another checkout's ``packages/mmi-kernels/src/mmi_kernels``, e.g. from ``git archive``):
python3 tools/index_build_ab.py --old OLD --out FILE.json [--lengths 131072,1048576] [--configs none,q_same,2d]
Workload and head configs: `tools/layer_bench.py --workload mixed`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import layer_bench as lb
from mmi_kernels import LayoutTensors, estimate_layer_keeps, index_from_keeps, layer_slots


def load_old(src: Path):
    """The old checkout's index module, importing the old block_lists (swapped in only while it loads)."""
    import mmi_kernels.block_lists as new_block_lists

    mods = {}
    for name in ("block_lists", "index"):
        spec = importlib.util.spec_from_file_location(f"old_{name}", src / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"old_{name}"] = mod  # dataclasses resolve their module by name
        if name == "index":
            sys.modules["mmi_kernels.block_lists"] = mods["block_lists"]
        spec.loader.exec_module(mod)
        sys.modules["mmi_kernels.block_lists"] = new_block_lists
        mods[name] = mod
    return mods["index"]


def peak_gib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def _full_rows(keep) -> torch.Tensor | None:
    """Column lists padded with -1 rows to every query block (checkouts before 2026-12-07 require them)."""
    cid, nqb = keep.column_ids, keep.blocks.shape[0]
    if cid is None or cid.shape[0] == nqb:
        return cid
    return torch.nn.functional.pad(cid, (0, 0, 0, nqb - cid.shape[0]), value=-1)


def ab_row(old, q, k, layout, lt, kinds, config: str) -> dict:
    """Both builds of one config's keep sets: fields that differ, time and peak memory of each."""
    hc = lb.mixed_head_configs(config, 128, kinds)
    slots = layer_slots(hc, 0)
    keeps = estimate_layer_keeps(q, k, lt, hc, 0, scale=1 / math.sqrt(lb.D))
    old_keeps = [[old.SlotKeep(x.q_order, x.k_order, x.blocks, _full_rows(x), x.rows) for x in keeps]]
    kw = dict(block=128, num_q_heads=lb.HQ, num_kv_heads=lb.HKV, slot_heads=slots, device="cuda")

    def new_fn():
        return index_from_keeps([keeps], **kw)

    def old_fn():
        return old.index_from_keeps(old_keeps, **kw)

    a, b = new_fn(), old_fn()
    differ = []
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if not (torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y):
            differ.append(f.name)
    del a, b
    return {
        "n_tokens": layout.num_tokens,
        "config": config,
        "slots": len(slots),
        "fields_differing": differ,
        "new_ms": lb.cuda_ms(new_fn, 3),
        "old_ms": lb.cuda_ms(old_fn, 3),
        "new_peak_gib": peak_gib(new_fn),
        "old_peak_gib": peak_gib(old_fn),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lengths", default="131072,1048576")
    ap.add_argument("--configs", default="none,q_same,2d")
    args = ap.parse_args()
    old = load_old(args.old)
    rec = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    spec = lb.real_frame_spec(256)
    kinds = tuple(lb.MIXED_KINDS[h % 3] for h in range(lb.HQ))
    for n in map(int, args.lengths.split(",")):
        _, q, k, _v, layout = lb.workload("mixed", n, kinds, spec, "cuda")
        lt = LayoutTensors(layout, "cuda")
        for config in args.configs.split(","):
            row = ab_row(old, q, k, layout, lt, kinds, config)
            print(row, flush=True)
            rec["rows"].append(row)
            args.out.write_text(json.dumps(rec, indent=1))
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
