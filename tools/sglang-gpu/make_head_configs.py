#!/usr/bin/env python3
"""Write HeadConfigs JSON for the Qwen2.5-VL-7B-shaped dummy checkpoint (28 layers, 28 q heads, 4 kv heads), for
the mmi backend runs of server_test.py until mmi-models ships tuned defaults. Patterns are uniform per GQA group so
that each KV head's group executes together. Needs mmi-core on PYTHONPATH (device_run.sh sets it).

Usage: make_head_configs.py OUT_DIR   -> OUT_DIR/dense.json, OUT_DIR/grid.json, OUT_DIR/mixed.json
  dense: every head Dense (the mmi backend must then match the stock backend exactly)
  grid:  every head Grid(stride="frame")
  mixed: per KV-head group: Grid, Grid, VerticalSlash(1000, 2048), AShape(128, 4096); layers 0-1 Dense
"""

import os
import sys

from mmi_core import AShape, Dense, Grid, HeadConfigs, HeadSpec, LayerConfig, VerticalSlash

L, HQ, HKV = 28, 28, 4
G = HQ // HKV
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
meta = {"model": "Qwen2.5-VL-7B-shaped dummy (tools/sglang-gpu)", "made_by": "make_head_configs.py"}


def build(group_patterns, dense_layers=()):
    layers = []
    for i in range(L):
        pats = [Dense()] * HKV if i in dense_layers else group_patterns
        heads = [HeadSpec(pattern=pats[h // G]) for h in range(HQ)]
        layers.append(LayerConfig(heads=heads, gqa=["group"] * HKV))
    return HeadConfigs(num_layers=L, num_q_heads=HQ, num_kv_heads=HKV, layers=layers, metadata=meta)


build([Dense()] * HKV).save(os.path.join(out, "dense.json"))
build([Grid(stride="frame")] * HKV).save(os.path.join(out, "grid.json"))
build(
    [
        Grid(stride="frame"),
        Grid(stride="frame"),
        VerticalSlash(vertical=1000, slash=2048),
        AShape(sink=128, local=4096),
    ],
    dense_layers=(0, 1),
).save(os.path.join(out, "mixed.json"))
print("wrote", sorted(os.listdir(out)))
