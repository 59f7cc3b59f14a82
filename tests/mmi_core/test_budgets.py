"""Budget helper: measured density within 2x of the target (targets above each pattern's floor)."""

from __future__ import annotations

import pytest
import torch

from mmi_core import (
    AShape,
    BlockSparse,
    Grid,
    ModalityLayout,
    VerticalSlash,
    VisualGrid,
    ashape_selection,
    block_sparse_selection,
    density,
    grid_selection,
    pattern_for_density,
    vertical_slash_selection,
)

LAYOUT = ModalityLayout.from_parts([("text", 64), ("video", VisualGrid(frames=16, rows=8, cols=8)), ("text", 32)])


def spread(count: int, hi: int) -> torch.Tensor:
    """``count`` ids spread evenly over [0, hi): the cost model assumes uniformly spread columns/offsets/blocks."""
    return torch.linspace(0, hi - 1, count).round().long() if count else torch.zeros(0, dtype=torch.long)


def measured_density(cfg, layout: ModalityLayout) -> float:
    n = layout.num_tokens
    if isinstance(cfg, AShape):
        return density(ashape_selection(n, n, cfg))
    if isinstance(cfg, VerticalSlash):
        return density(vertical_slash_selection(n, n, cfg, spread(cfg.vertical, n), spread(cfg.slash, n)))
    if isinstance(cfg, BlockSparse):
        nb = -(-n // cfg.block)
        top = torch.full((nb, max(cfg.top_k, 1)), -1)
        for qb in range(nb):  # the most recent distinct causal blocks before the diagonal
            ids = list(range(1, qb))[-cfg.top_k :] if cfg.top_k else []
            top[qb, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return density(block_sparse_selection(n, n, cfg, top))
    assert isinstance(cfg, Grid)
    stride = layout.tokens_per_frame
    residues = spread(cfg.lines, stride) + layout.segments_of("video")[0].start
    return density(grid_selection(layout, n, cfg, stride, residues))


@pytest.mark.parametrize("block", [16, 64], ids=lambda b: f"block{b}")
@pytest.mark.parametrize("target", [0.2, 0.4, 0.7], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("kind", ["a_shape", "vertical_slash", "block_sparse", "grid"])
def test_measured_density_within_2x_of_target(kind, target, block):
    cfg = pattern_for_density(kind, target, LAYOUT.num_tokens, block=block, tokens_per_frame=LAYOUT.tokens_per_frame)
    assert cfg.block == block
    got = measured_density(cfg, LAYOUT)
    assert target / 2 <= got <= target * 2, f"{cfg}: measured {got:.3f} for target {target}"


def test_more_density_never_means_a_smaller_pattern():
    n = LAYOUT.num_tokens
    got = [measured_density(pattern_for_density("grid", d, n, tokens_per_frame=64), LAYOUT) for d in (0.3, 0.6, 0.9)]
    assert got == sorted(got)


def test_grid_without_frame_size_uses_a_fixed_stride():
    cfg = pattern_for_density("grid", 0.3, 4096)
    assert cfg.stride == 256


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("grid", 0.0, 100), "density must be in"),
        (("grid", 1.5, 100), "density must be in"),
        (("grid", 0.5, 0), "num_tokens must be >= 1"),
        (("stripes", 0.5, 100), "unknown pattern kind 'stripes'"),
    ],
    ids=["zero", "above_one", "no_tokens", "unknown_kind"],
)
def test_validation(args, match):
    with pytest.raises(ValueError, match=match):
        pattern_for_density(*args)
