"""`top_ids` (one sort for rows of different problems and budgets) against `stable_top` row by row."""

from __future__ import annotations

import pytest
import torch

from mmi_core import Coverage
from mmi_kernels.ranking import top_ids, top_ids_reference


@pytest.mark.parametrize("coverage", [None, Coverage(threshold=0.6, min_fraction=0.25, max_fraction=0.75)])
@pytest.mark.parametrize("ties", [False, True])
def test_top_ids_equal_stable_top_row_by_row(coverage, ties) -> None:
    """Rows with their own budget, forced prefix and length (shorter than the budget, shorter than the forced
    prefix, empty budget), tie-free and with heavy ties (lowest index wins)."""
    g = torch.Generator().manual_seed(7 + int(ties))
    n = 300
    scores = torch.rand(8, n, generator=g)
    if ties:
        scores = (scores * 4).floor() / 4  # four distinct values
    budget = [10, 40, 0, 25, 300, 7, 60, 5]
    forced = [3, 0, 5, 64, 2, 0, 12, 1]
    length = [300, 120, 50, 40, 300, 3, 299, 1]
    width = max(f + b for f, b in zip(forced, budget, strict=True)) + 2  # a loose width pads with -1
    got = top_ids(
        scores,
        torch.tensor(budget),
        torch.tensor(forced),
        torch.tensor(length),
        width=width,
        max_forced=max(forced),
        coverage=coverage,
    )
    want = top_ids_reference(scores, budget, forced, length, width=width, coverage=coverage)
    assert torch.equal(got, want)


def test_top_ids_exact_width_and_short_rows() -> None:
    """``width`` = forced + budget exactly, and rows shorter than the width (the list stays -1 padded)."""
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(3, 20, generator=g)
    budget, forced, length = [4, 30, 4], [2, 2, 2], [20, 20, 5]
    got = top_ids(scores, torch.tensor(budget), torch.tensor(forced), torch.tensor(length), width=32, max_forced=2)
    assert torch.equal(got, top_ids_reference(scores, budget, forced, length, width=32))
    assert (got[0, :6] >= 0).all() and (got[0, 6:] == -1).all()
    assert torch.equal(got[1, :20], torch.arange(20)) and (got[1, 20:] == -1).all()
