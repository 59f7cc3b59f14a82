"""GPU evidence for issue #5's "a text-only or short request through the wrapper is <= 2% slower than the dense
kernel alone": `SparsePrefillWrapper.run` on requests the plan sends dense (text-only, shorter than ``min_tokens``)
against `dense_causal_attention` (the PyTorch SDPA call the wrapper makes), both timed the same way (CUDA events,
median of reps after a warm-up), Qwen2.5-VL-7B attention geometry (28 q / 4 kv heads, d 128, bf16), with the
mmi default policy for the model (sparse heads in every layer but the first, so `run` has a sparse plan to skip).

Usage (GPU machine): python3 tools/dense_path_bench.py --out DIR [--lengths 2048,131072]
Writes DIR/dense_path_bench.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_bench import cuda_ms
from mmi_core import Grid, HeadConfigs, ModalityLayout
from mmi_kernels import SparsePrefillWrapper
from mmi_kernels.wrapper import dense_causal_attention

HQ, HKV, D = 28, 4, 128
SCALE = 1.0 / math.sqrt(D)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="2048,16384,131072")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = args.device
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    hc = HeadConfigs.uniform(1, HQ, HKV, Grid(stride="frame", block=128))
    import triton

    rec = {
        "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (dry run)",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "rows": [],
    }
    out = Path(args.out) / "dense_path_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in (int(x) for x in args.lengths.split(",")):
        g = torch.Generator(device=dev).manual_seed(n)
        q = torch.randn(n, HQ, D, device=dev, dtype=dtype, generator=g)
        k = torch.randn(n, HKV, D, device=dev, dtype=dtype, generator=g)
        v = torch.randn(n, HKV, D, device=dev, dtype=dtype, generator=g)
        row: dict = {"n_tokens": n, "reps": args.reps}
        row["dense_ms"] = cuda_ms(lambda q=q, k=k, v=v: dense_causal_attention(q, k, v, SCALE), args.reps)
        for case, min_tokens in (("text_only", 0), ("short", n + 1)):
            w = SparsePrefillWrapper(hc, min_tokens=min_tokens)
            plan = w.plan([ModalityLayout.text(n)], device=dev)
            row[f"{case}_reason"] = plan.reasons[0]
            row[f"{case}_ms"] = cuda_ms(lambda w=w, q=q, k=k, v=v: w.run(q, k, v, 0, scale=SCALE), args.reps)
            row[f"{case}_overhead"] = row[f"{case}_ms"] / row["dense_ms"] - 1
        print(json.dumps(row), flush=True)
        rec["rows"].append(row)
        out.write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
