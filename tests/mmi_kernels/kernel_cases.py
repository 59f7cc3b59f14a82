"""Small keep sets built with mmi_core's builders, shared by the index and kernel tests (awkward sizes on purpose)."""

from __future__ import annotations

import torch

from mmi_core import (
    AShape,
    BlockSparse,
    Grid,
    ModalityLayout,
    Selection,
    VerticalSlash,
    VisualGrid,
    ashape_selection,
    block_sparse_selection,
    grid_selection,
    union_selections,
    vertical_slash_selection,
)

BLOCK = 16


def video_layout(frames: int = 5, rows: int = 3, cols: int = 5, text_before: int = 21, text_after: int = 13):
    """Text, one video (``frames`` x rows x cols + one newline per row), text: tokens per frame = rows * (cols+1)."""
    vg = VisualGrid(frames=frames, rows=rows, cols=cols, row_extra=1)
    return ModalityLayout.from_parts([("text", text_before), ("video", vg), ("text", text_after)])


def selection(
    kind: str, n_q: int, n_k: int, seed: int, layout: ModalityLayout | None = None, phase: int | None = None
) -> Selection:
    """One head's selection of ``kind`` (grid needs ``layout`` with ``layout.num_tokens == n_k``; heads that execute
    together need one ``phase``, the first kept residue, since it fixes the permutation)."""
    g = torch.Generator().manual_seed(seed)
    nqb, nkb = -(-n_q // BLOCK), -(-n_k // BLOCK)
    if kind == "grid":
        assert layout is not None and layout.num_tokens == n_k
        stride = layout.tokens_per_frame or 7
        res = torch.randperm(stride, generator=g)[:2]
        if phase is not None:
            res = torch.tensor([phase % stride, int(res[1])])
        return grid_selection(layout, n_q, Grid(stride="frame", lines=2, block=BLOCK, sink=8), stride, res)
    if kind == "vs":
        cfg = VerticalSlash(vertical=6, slash=3, block=BLOCK, local=5, sink=3)
        cols = torch.randint(0, n_k, (6,), generator=g)
        offs = torch.randint(0, n_k, (3,), generator=g)
        return vertical_slash_selection(n_q, n_k, cfg, cols, offs)
    if kind == "blocks":
        top = torch.randint(-1, nkb, (nqb, 2), generator=g)
        return block_sparse_selection(n_q, n_k, BlockSparse(top_k=2, block=BLOCK), top)
    if kind == "ashape":
        return ashape_selection(n_q, n_k, AShape(sink=16, local=40, block=BLOCK))
    raise ValueError(kind)


def group_selections(kind: str, n_q: int, n_k: int, hkv: int, g: int, seed: int, layout=None) -> list[Selection]:
    """One union selection per KV head (its group of ``g`` query heads executing together)."""
    return [
        union_selections([selection(kind, n_q, n_k, seed + 100 * s + h, layout, phase=seed + s) for h in range(g)])
        for s in range(hkv)
    ]
