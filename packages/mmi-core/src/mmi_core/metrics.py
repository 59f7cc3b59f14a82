"""Accuracy metrics of a sparse selection against dense attention: recall of softmax mass, output error, density.

All work on sampled query rows (``rows``) so they stay O(rows x n_k) for long sequences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mmi_core.reference import check_qkv
from mmi_core.selection import RowGroups, Selection, _query_rows, keep_mask

__all__ = ["attention_recall", "density", "output_error", "sample_rows"]


def sample_rows(n_q: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` distinct query rows (sorted; the last row always included), or all rows when ``count >= n_q``."""
    if count < 1:
        raise ValueError(f"sample_rows needs count >= 1, got {count}")
    if count >= n_q:
        return torch.arange(n_q)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n_q - 1, generator=g)[: count - 1]
    return torch.sort(torch.cat([pick, torch.tensor([n_q - 1])])).values


def attention_recall(
    q: torch.Tensor,
    k: torch.Tensor,
    selections: Sequence[Selection | RowGroups | None],
    *,
    scale: float | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 [Hq]: mean over query rows of the dense causal softmax mass that falls inside each head's keep set.

    q [n_q, Hq, D], k [n_k, Hkv, D]; one selection per query head (None = dense, recall 1). Scores in fp32.
    Raises ValueError for bad shapes, a wrong number of selections or a selection of other sizes.
    """
    n_q, n_k, hq, hkv, d = check_qkv(q, k, k)
    if len(selections) != hq:
        raise ValueError(f"{len(selections)} selections for {hq} query heads")
    for h, sel in enumerate(selections):
        if sel is not None and (sel.n_q, sel.n_k) != (n_q, n_k):
            raise ValueError(f"selection of head {h} is for (n_q, n_k)={(sel.n_q, sel.n_k)}, inputs are {(n_q, n_k)}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    r = _query_rows(n_q, rows)
    causal = torch.arange(n_k)[None, :] <= (r + n_k - n_q)[:, None]
    g = hq // hkv
    out = torch.empty(hq, dtype=torch.float32)
    for h, sel in enumerate(selections):
        if sel is None:
            out[h] = 1.0
            continue
        s = (q[r.to(q.device), h].float() @ k[:, h // g].float().T) * scale
        p = torch.softmax(s.masked_fill(~causal.to(s.device), float("-inf")), dim=-1)
        out[h] = (p * keep_mask(sel, r).to(p.device)).sum(-1).mean().cpu()
    return out


def output_error(o: torch.Tensor, o_ref: torch.Tensor, per_head: bool = False) -> torch.Tensor:
    """Relative error ``||o - o_ref|| / ||o_ref||`` (fp32 scalar, or [H] for token-major [N, H, D] with per_head)."""
    if o.shape != o_ref.shape:
        raise ValueError(f"output shapes differ: {tuple(o.shape)} vs {tuple(o_ref.shape)}")
    diff, ref = (o.float() - o_ref.float()), o_ref.float()
    if per_head:
        dims = [i for i in range(o.dim()) if i != 1]
        return (diff.pow(2).sum(dims).sqrt() / ref.pow(2).sum(dims).sqrt().clamp_min(1e-30)).cpu()
    return (diff.norm() / ref.norm().clamp_min(1e-30)).cpu()


def density(selection: Selection | RowGroups | None, rows: torch.Tensor | None = None) -> float:
    """Kept pairs / causal pairs (on sampled rows when given). Dense (None) is 1.0."""
    if selection is None:
        return 1.0
    r = _query_rows(selection.n_q, rows)
    causal = (r + selection.prefix + 1).sum().item()
    return keep_mask(selection, r).sum().item() / max(causal, 1)
