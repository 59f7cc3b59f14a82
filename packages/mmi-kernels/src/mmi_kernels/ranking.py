"""Vertical-slash ranking on the device: `mmi_core.estimation.stable_top`'s kept sets as ascending id lists, for
many rows of different problems and budgets in one sort.

The planner needs ids, not masks: a head's kept key columns as one ascending list (the index's column list) and its
kept diagonal offsets as a prefix count (`mmi_kernels.keep_planner.slash_blocks`). `stable_top` returns a mask;
turning it back into ids took a scatter and a cumulative sum over every ``[heads, n_k]`` row (~0.2 ms each at 131K
keys on an H100, two per vertical-slash config and estimation problem). The sort that ranks a row already holds its
kept ids — the first ``count`` entries of its order — so they are taken there and put in ascending order by a sort
of a few thousand entries per row.

Rows of different problems (a boundary head's sub-problems end at different keys: ``length``) and of different
budgets (a config's columns and its diagonals) share the one long sort: every per-row quantity is a tensor.
"""

from __future__ import annotations

import math

import torch

from mmi_core import Coverage

__all__ = ["top_ids", "top_ids_reference"]


def top_ids(
    scores: torch.Tensor,
    budget: torch.Tensor,
    forced: torch.Tensor,
    length: torch.Tensor,
    *,
    width: int,
    max_forced: int,
    coverage: Coverage | None = None,
) -> torch.Tensor:
    """int64 ``[R, width]``: per row of ``scores`` (fp32 ``[R, n]``), the ids kept by ``stable_top(scores[r,
    :length[r]], budget[r], forced=ids < forced[r], coverage=coverage)`` together with the forced ids themselves
    (``[0, min(forced[r], length[r]))``), ascending, ``-1`` padded. ``budget``, ``forced``, ``length``: int64 ``[R]``
    on the scores' device; ``max_forced`` >= every ``forced[r]`` and ``width`` >= every row's ``forced + budget``
    (host ints the caller knows from the configs, so nothing is read back). Entries at or past ``length[r]`` are
    never kept. With a coverage, its mass sums run over the row's ``length`` (as `stable_top` on the short row, to
    fp32 rounding of the sums).
    """
    n = scores.shape[1]
    dev = scores.device
    idx = torch.arange(n, device=dev)
    length = length.clamp(max=n)
    valid = idx < length[:, None]
    is_forced = idx < forced[:, None]
    s = scores.float().masked_fill(~valid | is_forced, float("-inf"))
    # descending and stable: ties keep index order, as stable_top's ascending sort of -s does
    ranked_scores, order = torch.sort(s, dim=1, descending=True, stable=True)
    rankable = (length - forced).clamp(min=0)
    if coverage is None:
        count = torch.minimum(rankable, budget)
    else:
        # the adaptive count never exceeds the largest budget's max_fraction: the running mass is only needed there
        hi_all = min(math.floor(coverage.max_fraction * int(width)), n)
        total = scores.float().masked_fill(~valid, 0.0).sum(1)
        have = scores.float().masked_fill(~(valid & is_forced), 0.0).sum(1)
        need = coverage.threshold * total - have
        csum = torch.cumsum(ranked_scores[:, :hi_all].clamp_min(0.0).nan_to_num(0.0), dim=1)
        adaptive = torch.where(need > 0, (csum < need[:, None]).sum(1) + 1, 0)
        b64 = budget.double()  # mmi_core rounds the fractions of a Python int in float64
        lo, hi = torch.ceil(coverage.min_fraction * b64).long(), torch.floor(coverage.max_fraction * b64).long()
        count = torch.minimum(torch.minimum(torch.maximum(adaptive, lo), hi).clamp(max=n), rankable)
    top = min(width, n)
    j = torch.arange(top, device=dev)
    ranked = torch.where(j < count[:, None], order[:, :top], n)  # n: past every id, sorts last
    f = torch.arange(max_forced, device=dev)
    pinned = torch.where(f < torch.minimum(forced, length)[:, None], f, n)
    ids = torch.sort(torch.cat([pinned, ranked], dim=1), dim=1).values[:, :width]
    ids = torch.where(ids == n, -1, ids)
    if ids.shape[1] < width:
        ids = torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=-1)
    return ids


def top_ids_reference(
    scores: torch.Tensor,
    budget: list[int],
    forced: list[int],
    length: list[int],
    *,
    width: int,
    coverage: Coverage | None = None,
) -> torch.Tensor:
    """`top_ids` row by row through `mmi_core.estimation.stable_top` (the specification)."""
    from mmi_core.estimation import stable_top

    out = torch.full((scores.shape[0], width), -1, dtype=torch.int64)
    for r in range(scores.shape[0]):
        row = scores[r : r + 1, : length[r]].float().cpu()
        pinned = torch.arange(row.shape[1])[None, :] < forced[r]
        keep = (stable_top(row, budget[r], forced=pinned, coverage=coverage) | pinned)[0]
        ids = torch.nonzero(keep).flatten()
        out[r, : ids.numel()] = ids
    return out
