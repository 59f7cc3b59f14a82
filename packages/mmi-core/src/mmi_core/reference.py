"""Reference attention in readable PyTorch: the semantics every kernel is tested against.

Tensors are token-major, as in SGLang and flash-attn varlen: ``q [n_q, Hq, D]``, ``k, v [n_k, Hkv, D]``, queries are
the last ``n_q`` of the ``n_k`` positions. Query head ``h`` reads KV head ``h // (Hq // Hkv)``. Scores, softmax and
the weighted sum run in ``compute_dtype`` (fp32 by default); the output has q's dtype. O(rows x n_k) memory: pass
``rows`` (sampled query-row indices) for long sequences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mmi_core.selection import RowGroups, Selection, _query_rows, keep_mask

__all__ = ["check_qkv", "dense_attention_reference", "sparse_attention_reference"]


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Validate token-major ``q [n_q, Hq, D]``, ``k, v [n_k, Hkv, D]`` (same floating dtype and device,
    ``Hq % Hkv == 0``, ``n_q <= n_k``); return (n_q, n_k, Hq, Hkv, D). Raises ValueError naming the problem."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"q, k, v must be 3-D token-major [tokens, heads, head_dim], got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    n_q, hq, d = q.shape
    n_k, hkv, dk = k.shape
    if v.shape != k.shape:
        raise ValueError(f"v shape {tuple(v.shape)} differs from k shape {tuple(k.shape)}")
    if dk != d:
        raise ValueError(f"q head_dim {d} differs from k head_dim {dk}")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} kv heads")
    if n_q > n_k:
        raise ValueError(f"{n_q} queries but {n_k} keys: queries must be the last n_q of the keys")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.is_floating_point():
        raise ValueError(f"q, k, v must be floating point (fp16/bf16/fp32), got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    return n_q, n_k, hq, hkv, d


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, dtype: torch.dtype
) -> torch.Tensor:
    """q [r, D], k/v [n_k, D], mask bool [r, n_k] -> [r, D] in ``dtype``."""
    s = (q.to(dtype) @ k.to(dtype).T) * scale
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return p @ v.to(dtype)


def sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    selections: Sequence[Selection | RowGroups | None],
    *,
    scale: float | None = None,
    rows: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Attention of every query head restricted to its selection (``keep_mask``; None = dense causal).

    q [n_q, Hq, D], k/v [n_k, Hkv, D]; ``selections``: one per query head (heads of a GQA group executing together
    pass the same `union_selections`); ``rows``: int query-row ids (sampled rows) or None for all.
    Returns ``[n_q or len(rows), Hq, D]`` in q's dtype. A row whose keep set is empty would be NaN; the builders in
    `mmi_core.selection` never produce one. Raises ValueError for bad shapes (`check_qkv`), a wrong number of
    selections, a selection of other sizes, or rows out of range.
    """
    n_q, n_k, hq, hkv, d = check_qkv(q, k, v)
    if len(selections) != hq:
        raise ValueError(f"{len(selections)} selections for {hq} query heads")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    r = _query_rows(n_q, rows)
    causal = torch.arange(n_k)[None, :] <= (r + n_k - n_q)[:, None]
    out = torch.empty(r.numel(), hq, d, dtype=compute_dtype, device=q.device)
    g = hq // hkv
    for h, sel in enumerate(selections):
        if sel is not None and (sel.n_q, sel.n_k) != (n_q, n_k):
            raise ValueError(f"selection of head {h} is for (n_q, n_k)={(sel.n_q, sel.n_k)}, inputs are {(n_q, n_k)}")
        mask = causal if sel is None else keep_mask(sel, r)
        out[:, h] = _attend(q[r.to(q.device), h], k[:, h // g], v[:, h // g], mask.to(q.device), scale, compute_dtype)
    return out.to(q.dtype)


def dense_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    rows: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Causal attention (queries are the last n_q keys). Returns ``[n_q or len(rows), Hq, D]`` in q's dtype."""
    return sparse_attention_reference(q, k, v, [None] * q.shape[1], scale=scale, rows=rows, compute_dtype=compute_dtype)
