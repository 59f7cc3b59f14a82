"""Shared cases of the mmi-kernels planner/wrapper tests: small layouts and a layer config mixing every pattern."""

from __future__ import annotations

from mmi_core import (
    AShape,
    BlockSparse,
    Grid,
    HeadConfigs,
    HeadSpec,
    LayerConfig,
    ModalityLayout,
    VerticalSlash,
    VisualGrid,
)

LAYOUTS = {
    "video_only": ModalityLayout.from_parts([("video", VisualGrid(frames=6, rows=3, cols=5))]),
    "text_video_text": ModalityLayout.from_parts(
        [("text", 37), ("video", VisualGrid(frames=5, rows=4, cols=4, frame_suffix=1)), ("text", 21)]
    ),
    "two_videos": ModalityLayout.from_parts(
        [("text", 9), ("video", VisualGrid(frames=3, rows=4, cols=6)), ("text", 5), ("video", VisualGrid(4, 2, 7))]
    ),
    "text_only": ModalityLayout.text(150),
}


def mixed_head_configs(hq: int, hkv: int) -> HeadConfigs:
    """One layer: Grid (frame/search strides), VS, A-shape and block-sparse heads; KV heads alternate group/head."""
    block = 16
    pats = [
        Grid(stride="frame", block=block, lines=2),
        Grid(stride="search", max_stride=64, block=block),
        VerticalSlash(vertical=6, slash=5, last_q=16, block=block),
        AShape(sink=8, local=24, block=block),
        BlockSparse(top_k=2, block=block),
        Grid(stride="frame", block=block, hline=False),
        VerticalSlash(vertical=3, slash=2, last_q=8, block=block),
        AShape(sink=8, local=24, block=block),
    ]
    heads = [HeadSpec(pattern=pats[h % len(pats)]) for h in range(hq)]
    g = hq // hkv
    gqa = ["group" if j % 2 == 0 else "head" for j in range(hkv)]
    # a group of all-Grid heads, so group execution with a shared permutation is exercised
    heads[:g] = [HeadSpec(pattern=Grid(stride="frame", block=block, lines=2))] * g
    layer = LayerConfig(heads=heads, gqa=gqa)
    return HeadConfigs(num_layers=1, num_q_heads=hq, num_kv_heads=hkv, layers=[layer])
