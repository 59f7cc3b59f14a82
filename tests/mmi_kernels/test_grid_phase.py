"""`mmi_kernels.grid_phase.grid_phases` (one Triton program per unit, interpreted on a CPU, compiled on a GPU) equals
mmi_core's `estimate_stride_phase` per unit: pooled units, several problems of different lengths, strides that are
not powers of two, more lines than the stride, a problem without folded keys, uniform scores (no positive excess)."""

from __future__ import annotations

import pytest
import torch

from mmi_kernels.grid_phase import MAX_STRIDE, grid_phases, grid_phases_reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # where the kernel runs (the conftest's rule)


def _problem_masks(width: int, ends: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per problem: folded keys (runs of "video", some neutral ones among them), False past its end."""
    g = torch.Generator().manual_seed(seed)
    fold = torch.zeros(len(ends), width, dtype=torch.bool)
    signal = torch.zeros_like(fold)
    for p, end in enumerate(ends):
        if p == len(ends) - 1:
            continue  # the last problem: no folded key at all
        a, b = end // 5, end - end // 7
        fold[p, a:b] = True
        signal[p, a:b] = torch.rand(b - a, generator=g) > 0.1  # ~10% neutral (off-grid) keys
    return fold, signal


@pytest.mark.parametrize("lines", [1, 3, 9])
@pytest.mark.parametrize("strides", [(7, 16, 5), (100, 3, 33)])
def test_kernel_equals_estimate_stride_phase(lines: int, strides: tuple[int, ...]) -> None:
    width, ends = 700, [700, 431, 260, 650]
    g = torch.Generator().manual_seed(lines * 10 + strides[0])
    scores = torch.randn(12, width, generator=g)  # tie-free log scores per (group, head) row
    scores[11] = 0.25  # a uniform row: no positive excess, the default residues
    fold, signal = _problem_masks(width, ends, seed=lines)
    units = [
        (0, strides[0], [0]),
        (0, strides[1], [1, 2, 3]),  # a pooled GQA group: the mean of its heads
        (1, strides[2], [4]),
        (2, strides[0], [5, 6]),
        (1, strides[1], [11]),  # uniform
        (3, strides[2], [7]),  # no folded key: 0 ... lines-1 mod the stride
        (2, 2, [8]),  # lines past the stride repeat the phase
    ]
    want = grid_phases_reference(scores, units, fold, signal, ends, lines)
    got = grid_phases(scores.to(DEV), units, fold.to(DEV), signal.to(DEV), ends, lines).cpu()
    assert got.dtype == torch.int64 and got.shape == (len(units), lines)
    assert torch.equal(got, want), (got, want)
    assert want[4].tolist() == [i % strides[1] for i in range(lines)]  # the uniform unit's default


def test_reference_is_mmi_core_on_a_real_layout() -> None:
    """On a layout's own masks (`grid_key_mask`), the reference equals `estimate_grid` of the layout."""
    from mmi_core import Grid, ModalityLayout, VisualGrid
    from mmi_core.estimation import estimate_grid, grid_key_mask

    layout = ModalityLayout.from_parts([("text", 9), ("video", VisualGrid(frames=6, rows=3, cols=4, row_extra=1))])
    n = layout.num_tokens
    cfg = Grid(stride="frame", block=16, lines=2)
    fold, neutral = grid_key_mask(layout, n - 8)
    scores = torch.randn(3, n, generator=torch.Generator().manual_seed(1))
    _, want = estimate_grid(scores, layout, cfg, n - 8)
    units = [(0, layout.tokens_per_frame, [u]) for u in range(3)]
    got = grid_phases(scores.to(DEV), units, fold[None].to(DEV), (fold & ~neutral)[None].to(DEV), [n], 2).cpu()
    assert torch.equal(got, want)


def test_bad_inputs() -> None:
    scores, fold = torch.zeros(2, 10), torch.zeros(1, 10, dtype=torch.bool)
    with pytest.raises(ValueError, match="stride"):
        grid_phases(scores, [(0, MAX_STRIDE + 1, [0])], fold, fold, [10], 1)
    with pytest.raises(ValueError, match="rows"):
        grid_phases(scores, [(0, 4, [])], fold, fold, [10], 1)
    with pytest.raises(ValueError, match="lines"):
        grid_phases(scores, [(0, 4, [0])], fold, fold, [10], 0)
    with pytest.raises(ValueError, match="masks"):
        grid_phases(scores, [(0, 4, [0])], fold[:, :5], fold[:, :5], [5], 1)
    assert grid_phases(scores, [], fold, fold, [10], 2).shape == (0, 2)
