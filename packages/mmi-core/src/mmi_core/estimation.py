"""Online estimation in readable, batched PyTorch: which columns, diagonals, blocks and grid lines each head keeps.

This is the specification the fused GPU estimation kernels match. Everything is computed from scores, batched over
heads (no per-head Python loop), with no host synchronisation until a Python int is needed to build a `Selection`.

Rules that a reimplementation must follow to match exactly:

- **Last-query scores** (`last_query_scores`): the last ``L = min(last_q, n_q)`` query rows, ``softmax(q·kᵀ·scale)``
  in fp32 over all ``n_k`` keys, causal on original positions (row ``i`` of the last ``L`` sits at position
  ``n_k - L + i``).
- **Deterministic ties** (`stable_top`): entries are ranked by ``(-score, index)`` (a stable sort of ``-score``), so
  equal scores keep the lowest index first. ``torch.topk`` is not stable and is not used.
- **Budgets**: ``vertical``/``slash``/``top_k`` count entries chosen *in addition to* the always-kept ones (sinks,
  local diagonals, diagonal and first blocks); the always-kept entries are excluded from ranking. With a `Coverage`
  the count is the smallest ``c`` such that the always-kept mass plus the ``c`` best entries reach ``threshold`` of
  the total estimated mass, clamped to ``[ceil(min_fraction·budget), floor(max_fraction·budget)]``.
- **Grid stride and phase** (`estimate_stride_phase`): see its docstring for the exact formula.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mmi_core.layout import Modality, ModalityLayout
from mmi_core.patterns import BlockSparse, Coverage, Grid, VerticalSlash
from mmi_core.transfer import to_device

__all__ = [
    "STRIDE_TOLERANCE",
    "GridFold",
    "block_scores",
    "estimate_block_sparse",
    "estimate_grid",
    "estimate_stride_phase",
    "estimate_vertical_slash",
    "grid_fold_excess",
    "grid_key_mask",
    "grid_key_scores",
    "grid_stride_candidates",
    "last_query_scores",
    "stable_top",
    "vertical_slash_scores",
]

STRIDE_TOLERANCE = 0.8
"""A stride is chosen as the *smallest* candidate whose score is at least this fraction of the best score.

A signal periodic in ``T`` is also periodic in ``2T, 3T, …`` with the same normalised concentration (up to noise,
which only favours the larger multiples), while ``T/2`` roughly halves it; preferring the smallest near-best stride
therefore picks ``T`` and not its multiples."""


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# -- scores ---------------------------------------------------------------------------------------------------------
def last_query_scores(
    q: torch.Tensor, k: torch.Tensor, last_q: int = 64, *, scale: float | None = None
) -> torch.Tensor:
    """Softmax scores of the last query rows: fp32 ``[Hq, L, n_k]`` with ``L = min(last_q, n_q)``.

    ``q [n_q, Hq, D]`` and ``k [n_k, Hkv, D]`` are token-major; queries are the last ``n_q`` of the ``n_k`` keys;
    query head ``h`` reads KV head ``h // (Hq // Hkv)``. Memory is ``O(Hq · L · n_k)``.
    Raises ValueError for ``last_q < 1``, zero queries, or inconsistent shapes.
    """
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"q and k must be 3-D token-major, got {tuple(q.shape)} and {tuple(k.shape)}")
    n_q, hq, d = q.shape
    n_k, hkv, dk = k.shape
    if dk != d or hkv == 0 or hq % hkv:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not fit (head_dim, GQA)")
    if n_q > n_k:
        raise ValueError(f"{n_q} queries but {n_k} keys: queries must be the last n_q of the keys")
    if last_q < 1:
        raise ValueError(f"last_q must be >= 1, got {last_q}")
    if n_q == 0:
        raise ValueError("cannot estimate from zero query rows")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    n_last, g = min(last_q, n_q), hq // hkv
    q_last = q[n_q - n_last :].float().reshape(n_last, hkv, g, d)
    s = torch.einsum("lhgd,nhd->hgln", q_last, k.float()) * scale
    rows = torch.arange(n_k - n_last, n_k, device=q.device)
    s = s.masked_fill(torch.arange(n_k, device=q.device)[None, :] > rows[:, None], float("-inf"))
    return torch.softmax(s, dim=-1).reshape(hq, n_last, n_k)


def vertical_slash_scores(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column sums and diagonal sums of last-query scores ``probs [H, L, n_k]`` (rows at positions
    ``n_k - L …  n_k - 1``).

    Returns fp32 ``(vertical [H, n_k], slash [H, n_k])``; ``slash[:, o]`` sums the scores of pairs with
    ``query position - key position = o``.
    """
    h, n_last, n_k = probs.shape
    dev = probs.device
    vertical = probs.sum(dim=1)
    offsets = (torch.arange(n_k - n_last, n_k, device=dev)[:, None] - torch.arange(n_k, device=dev)[None, :]).clamp(
        min=0
    )  # non-causal pairs have probability 0, so clamping them onto offset 0 adds nothing
    slash = torch.zeros(h, n_k, dtype=probs.dtype, device=dev)
    slash.scatter_add_(1, offsets.reshape(1, -1).expand(h, -1), probs.reshape(h, -1))
    return vertical, slash


def block_scores(q: torch.Tensor, k: torch.Tensor, block: int, *, scale: float | None = None) -> torch.Tensor:
    """Mean-pooled block scores: fp32 ``[Hq, nqb, nkb]``, softmax over causal key blocks of each query block.

    Query block ``qb`` pools rows ``[qb·block, (qb+1)·block)`` of the ``n_q`` queries (the last one may be short);
    key block ``kb`` pools keys ``[kb·block, …)``. Key block ``kb`` is causal for ``qb`` when its first key is at or
    before the query block's last position. Memory ``O(Hq · nqb · nkb)``.
    """
    return _pooled_scores(_mean_pool(q, block), _mean_pool(k, block), q.shape[0], k.shape[0], block, scale)


def _pooled_scores(
    qp: torch.Tensor, kp: torch.Tensor, n_q: int, n_k: int, block: int, scale: float | None
) -> torch.Tensor:
    """`block_scores` from pooled fp32 ``qp [nqb, Hq, D]`` and ``kp [nkb, Hkv, D]``."""
    nqb, hq, d = qp.shape
    nkb, hkv, _ = kp.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    g = hq // hkv
    s = torch.einsum("qhgd,khd->hgqk", qp.reshape(nqb, hkv, g, d), kp).reshape(hq, nqb, nkb) * scale
    last = torch.clamp((n_k - n_q) + (torch.arange(nqb, device=qp.device) + 1) * block - 1, max=n_k - 1)
    causal = torch.arange(nkb, device=qp.device)[None, :] * block <= last[:, None]
    return torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)


def _mean_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """[n, H, D] (any float dtype) -> fp32 [ceil(n / block), H, D], the mean of each block's real rows. Sums in fp32
    without an fp32 copy of ``x`` (at 1M tokens and 28 heads that copy alone is 14 GiB)."""
    n, h, d = x.shape
    full = n // block
    parts = [x[: full * block].reshape(full, block, h, d).sum(1, dtype=torch.float32) / block]
    if n > full * block:
        parts.append(x[full * block :].sum(0, keepdim=True, dtype=torch.float32) / (n - full * block))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


# -- ranking --------------------------------------------------------------------------------------------------------
def stable_top(
    scores: torch.Tensor,
    budget: int,
    *,
    valid: torch.Tensor | None = None,
    forced: torch.Tensor | None = None,
    coverage: Coverage | None = None,
) -> torch.Tensor:
    """Keep mask bool ``[..., n]``: the ``budget`` best entries of ``scores [..., n]`` per row, lowest index on ties.

    ``valid`` (bool, same shape): entries that may be chosen at all; ``forced``: entries kept anyway by the caller
    (excluded from ranking, not returned, their mass counts towards coverage). With ``coverage`` the per-row count is
    adaptive (see the module docstring). The count never exceeds the number of rankable entries.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    # the masks are built only from what was given: a vertical-slash layer ranks two [heads, n_k] rows per head
    # every layer, and each avoided op is a launch
    if valid is None:
        rankable = ~forced if forced is not None else torch.ones_like(scores, dtype=torch.bool)
        s = scores.float().masked_fill(forced, float("-inf")) if forced is not None else scores.float()
    else:
        rankable = valid & ~forced if forced is not None else valid
        s = scores.float().masked_fill(~rankable, float("-inf"))
    n = scores.shape[-1]
    if coverage is None and budget <= TOPK_MAX:
        return _top_fixed(s, rankable, min(budget, n))
    sorted_neg, order = torch.sort(-s, dim=-1, stable=True)
    if coverage is None:
        count = rankable.sum(-1).clamp(max=min(budget, n))
    else:
        valid_f = valid if valid is not None else torch.ones_like(rankable)
        total = scores.float().masked_fill(~valid_f, 0.0).sum(-1)
        have = scores.float().masked_fill(~(forced & valid_f), 0.0).sum(-1) if forced is not None else 0.0 * total
        need = coverage.threshold * total - have
        csum = torch.cumsum((-sorted_neg).clamp_min(0.0).nan_to_num(0.0), dim=-1)
        adaptive = (csum < need[..., None]).sum(-1) + 1
        adaptive = torch.where(need > 0, adaptive, torch.zeros_like(adaptive))
        lo, hi = math.ceil(coverage.min_fraction * budget), math.floor(coverage.max_fraction * budget)
        count = torch.minimum(adaptive.clamp(min=lo, max=hi).clamp(max=n), rankable.sum(-1))
    keep_sorted = torch.arange(n, device=scores.device) < count[..., None]
    return torch.zeros_like(rankable).scatter(-1, order, keep_sorted)


TOPK_MAX = 128
"""Budgets up to this rank by `_top_fixed` (one topk per row: block-sparse's 16 of 8,192 key blocks for each of
thousands of rows); larger ones (vertical-slash's thousands of columns over a few long rows) by the stable sort. Why
the cut: with topk for every budget a 131K-token q_same layer's estimation measured 56 ms against 43 ms before
(H100, 2026-12-06, one A/B run that also held another estimation change; topk over few long rows with large k is
the suspect, not isolated)."""


def _top_fixed(s: torch.Tensor, rankable: torch.Tensor, k: int) -> torch.Tensor:
    """`stable_top` without a coverage: the ``k`` best rankable entries of ``s`` (-inf where not rankable) per row,
    lowest index on ties, without sorting whole rows. The k-th largest value ``t`` (one ``topk``) splits a row into
    entries above it (all kept) and entries equal to it, kept in index order while the count lasts: the same set as
    the stable sort of ``-s`` cut at ``k``, for a fraction of the work on long rows (block-sparse ranking of 8,192
    key blocks per query block at 1M tokens)."""
    if k == 0:
        return torch.zeros_like(rankable)
    t = torch.topk(s, k, dim=-1, sorted=True).values[..., -1:]  # the k-th largest value of each row
    above = (s > t) & rankable
    at = (s == t) & rankable
    room = k - above.sum(-1, keepdim=True)  # ties at t still to keep, lowest index first
    return above | (at & (torch.cumsum(at, dim=-1) <= room))


# -- patterns -------------------------------------------------------------------------------------------------------
def estimate_vertical_slash(probs: torch.Tensor, cfg: VerticalSlash) -> tuple[torch.Tensor, torch.Tensor]:
    """Top columns and diagonals of heads sharing one `VerticalSlash` config from ``probs [H, L, n_k]``.

    Returns bool ``(columns [H, n_k], offsets [H, n_k])``: key positions kept as columns and diagonal offsets kept
    as slashes, *besides* the first ``sink`` columns and ``local`` offsets (always kept by
    `vertical_slash_selection`). With ``cfg.coverage`` the column count and the diagonal count are adapted
    separately, each against its own scores (column sums, diagonal sums; both total the rows' mass).
    """
    h, _n_last, n_k = probs.shape
    vertical, slash = vertical_slash_scores(probs)
    idx = torch.arange(n_k, device=probs.device)
    cov = cfg.coverage
    columns = stable_top(vertical, cfg.vertical, forced=(idx < cfg.sink).expand(h, n_k), coverage=cov)
    offsets = stable_top(slash, cfg.slash, forced=(idx < cfg.local).expand(h, n_k), coverage=cov)
    return columns, offsets


def estimate_block_sparse(
    q: torch.Tensor, k: torch.Tensor, cfg: BlockSparse, *, scale: float | None = None
) -> torch.Tensor:
    """Top key blocks per query block for heads sharing one `BlockSparse` config.

    ``q [n_q, Hq, D]``, ``k [n_k, Hkv, D]``. Returns int64 ``[Hq, nqb, width]`` key-block ids, ascending, padded
    with -1 (the input of `block_sparse_selection`), chosen besides the diagonal block(s) and block 0. ``width`` is
    static, ``max(1, min(cap, nkb))`` with ``cap = top_k`` (or ``floor(max_fraction · top_k)`` with a coverage).
    """
    n_q, hq, _ = q.shape
    n_k, hkv, _ = k.shape
    b, g = cfg.block, hq // hkv
    qp, kp = _mean_pool(q, b), _mean_pool(k, b)
    nqb, nkb = qp.shape[0], kp.shape[0]
    kb = torch.arange(nkb, device=q.device)
    first = (n_k - n_q) + torch.arange(nqb, device=q.device) * b
    last = torch.clamp(first + b - 1, max=n_k - 1)
    valid = kb[None, :] * b <= last[:, None]
    forced = ((kb[None, :] >= (first // b)[:, None]) & (kb[None, :] <= (last // b)[:, None])) | (kb == 0)[None, :]
    # static width (no host sync): the most entries stable_top can keep per row
    cap = cfg.top_k if cfg.coverage is None else math.floor(cfg.coverage.max_fraction * cfg.top_k)
    width = max(min(cap, nkb), 1)
    out = []
    # heads in chunks of about _CHUNK_ELEMENTS scores: the ranking sorts whole rows (values + int64 order: ~20
    # bytes per score), which for 28 heads at 1M tokens / block 128 asked for 28 GiB at once (CUDA OOM on the H200)
    step = max(1, _CHUNK_ELEMENTS // max(nqb * nkb, 1))
    for h0 in range(0, hq, step):
        heads = torch.arange(h0, min(h0 + step, hq), device=q.device)
        p = _pooled_scores(qp[:, heads], kp[:, heads // g], n_q, n_k, b, scale)
        keep = stable_top(p, cfg.top_k, valid=valid.expand_as(p), forced=forced.expand_as(p), coverage=cfg.coverage)
        # kept ids in ascending order, -1 padding after: the j-th kept id is where the running count of kept
        # entries first reaches j (a binary search per output on the non-decreasing count). Was a topk over the
        # whole int64 row: at 1M tokens the largest kernel of a 2D layer's block-sparse estimation after the
        # scores' own topk (H100 profile, 2026-12-07)
        count = torch.cumsum(keep, dim=-1, dtype=torch.int32)
        want = torch.arange(1, width + 1, dtype=torch.int32, device=q.device).expand(*count.shape[:-1], width)
        ids = torch.searchsorted(count, want.contiguous())
        out.append(torch.where(ids < nkb, ids, -1))
    return torch.cat(out)


_CHUNK_ELEMENTS = 2**27


def grid_stride_candidates(layout: ModalityLayout, cfg: Grid) -> list[int]:
    """Candidate strides of a `Grid` config on ``layout`` (ascending).

    - int stride: ``[stride]``;
    - ``"frame"``: ``[tokens_per_frame]`` (of the video segment with the most tokens when frame sizes differ);
    - ``"search"``: divisors ``>= 2`` of each video segment's tokens per frame and its multiples ×2, ×3, ×4, all
      ``<= max_stride``; ``2 … max_stride`` when the layout has no video.
    Raises ValueError when the list would be empty (e.g. every frame size and multiple exceeds ``max_stride``, or
    ``"frame"`` on a layout without video, or a frame size of 1).
    """
    if isinstance(cfg.stride, int):
        return [cfg.stride]
    videos = [s for s in layout.segments_of(Modality.VIDEO) if s.grid is not None]
    if cfg.stride == "frame":
        if not videos:
            raise ValueError("Grid stride 'frame' needs a video segment in the layout")
        tpf = max(videos, key=lambda s: s.length).grid.tokens_per_frame  # type: ignore[union-attr]
        if not 2 <= tpf <= cfg.max_stride:
            raise ValueError(f"tokens per frame {tpf} is outside the stride range [2, max_stride={cfg.max_stride}]")
        return [tpf]
    if not videos:
        return list(range(2, cfg.max_stride + 1))
    cands: set[int] = set()
    for tpf in {s.grid.tokens_per_frame for s in videos}:  # type: ignore[union-attr]
        cands |= {d for d in range(2, tpf + 1) if tpf % d == 0}
        cands |= {tpf * m for m in (2, 3, 4)}
    out = sorted(c for c in cands if c <= cfg.max_stride)
    if not out:
        raise ValueError(f"no stride candidate <= max_stride={cfg.max_stride} for frame sizes of this layout")
    return out


def grid_key_scores(probs: torch.Tensor, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-key log score for the grid fold: fp32 ``[H, n_k]``, the (weighted) mean over rows of
    ``log(max(p, 1e-30))`` of last-query scores ``probs [H, L, n_k]``; ``row_weights [H, L]`` (0/1) picks each
    head's own rows. Pool a GQA group by averaging its heads' rows of this.

    Why geometric (log) rather than summed mass: last-query attention is heavy-tailed — a few content matches of one
    row carry most of its mass, and differ from row to row — so summed mass per residue is decided by single
    outliers, and the maximum over more residues (larger strides) wins by chance. A grid line is a residue whose keys
    are *consistently* heavier, across frames and across rows.
    """
    logp = torch.log(probs.float().clamp_min(1e-30))
    if row_weights is None:
        return logp.mean(dim=1)
    w = row_weights.float()
    return torch.einsum("hln,hl->hn", logp, w) / w.sum(-1, keepdim=True).clamp_min(1e-30)


def grid_key_mask(layout: ModalityLayout, first_row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bool ``(fold [n_k], neutral [n_k])``: the keys folded to estimate stride and phase, and those among them whose
    score is replaced by the fold's mean (counted, but carrying no signal).

    Folded: the tokens of video segments. Text keys are not folded: they are not periodic and would bias the phase.
    Neutral: off-grid video tokens (per-row newlines, per-frame timestamps/separators): they share one content, act
    like sinks and sit on fixed residues, so they would masquerade as grid lines; yet they must still count, or a
    residue class holding only a line and off-grid tokens at half the stride would look as concentrated as the line.
    Keys within one frame (the largest tokens per frame of the layout) before ``first_row`` (the position of the
    first estimation row) are not folded either: the local attention of the last rows lands there. When that leaves
    no key, the exclusion is dropped.
    """
    fold = torch.zeros(layout.num_tokens, dtype=torch.bool)
    on_grid = torch.zeros(layout.num_tokens, dtype=torch.bool)
    tpf = 0
    for seg in layout.segments_of(Modality.VIDEO):
        if seg.grid is not None:
            fold[seg.start : seg.end] = True
            on_grid[seg.start : seg.end] = seg.grid.on_grid_mask()
            tpf = max(tpf, seg.grid.tokens_per_frame)
    early = fold & (torch.arange(layout.num_tokens) < first_row - tpf)
    fold = early if bool((early & on_grid).any()) else fold
    return fold, fold & ~on_grid


@dataclass(frozen=True, eq=False)
class GridFold:
    """The layout's side of the Grid fold for one estimation start, on one device: `grid_key_mask`'s keys as the
    weights every `grid_fold_excess` call needs, and per stride the residue of each key with the folded keys per
    residue (`of_stride`, built on first use). Engines keep one per (layout, first row) across layers, so a fold
    costs only its data-dependent ops (`from_masks` builds it from the masks)."""

    fold: torch.Tensor  # bool [n_k]
    signal: torch.Tensor  # bool [n_k]: folded and not neutral
    fold_f: torch.Tensor  # fp32 [n_k]
    signal_f: torch.Tensor  # fp32 [n_k]
    n_signal: torch.Tensor  # fp32 []: signal keys, at least 1
    _strides: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def from_masks(cls, fold: torch.Tensor, neutral: torch.Tensor | None = None) -> GridFold:
        signal = fold if neutral is None else fold & ~neutral.to(fold.device)
        sf = signal.float()
        return cls(fold, signal, fold.float(), sf, sf.sum().clamp_min(1))

    def of_stride(self, stride: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """int64 ``[n_k]`` residue of each key, fp32 ``[stride]`` folded keys per residue (at least 1), bool
        ``[stride]`` residues without a folded key."""
        if stride not in self._strides:
            res = torch.remainder(torch.arange(self.fold.numel(), device=self.fold.device), stride)
            counts = torch.zeros(stride, device=self.fold.device).index_add_(0, res, self.fold_f)
            self._strides[stride] = (res, counts.clamp_min(1), counts == 0)
        return self._strides[stride]


def grid_fold_excess(
    key_scores: torch.Tensor, fold: torch.Tensor | GridFold, stride: int, neutral: torch.Tensor | None = None
) -> torch.Tensor:
    """Concentration of the per-key log scores ``key_scores [U, n_k]`` on residues ``pos mod stride``: fp32
    ``[U, stride]``.

    Keys where ``fold`` (bool ``[n_k]``, or a `GridFold` holding it and ``neutral``) is True are folded;
    ``neutral`` ones among them get the mean score ``μ`` of the other folded keys.
    ``excess[r] = mean(ℓ_j : folded j ≡ r mod stride) - μ``: the log of the geometric-mean
    mass the residue class (phase ``r``) captures, normalised against the uniform baseline. It is 0 everywhere for
    uniform attention whatever the stride; residues without folded keys get ``-inf``.
    """
    gf = fold if isinstance(fold, GridFold) else GridFold.from_masks(fold.to(key_scores.device), neutral)
    res, counts, empty = gf.of_stride(stride)
    ks = key_scores.float()
    mu = (ks * gf.signal_f).sum(-1, keepdim=True) / gf.n_signal
    ell = torch.where(gf.signal[None, :], ks, mu) * gf.fold_f[None, :]
    sums = torch.zeros(ks.shape[0], stride, device=ks.device).index_add_(1, res, ell)
    return (sums / counts - mu).masked_fill(empty, float("-inf"))


def estimate_stride_phase(
    key_scores: torch.Tensor,
    fold: torch.Tensor | GridFold,
    candidates: Sequence[int],
    lines: int,
    *,
    neutral: torch.Tensor | None = None,
    default: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stride and kept residues (``[:, 0]`` is the phase) for ``U`` units from ``key_scores [U, n_k]``
    (`grid_key_scores`, averaged over a unit's heads) and the key masks of `grid_key_mask` (or their `GridFold`).

    For each candidate ``s`` (ascending), ``score(s) = max_r excess[r]`` (`grid_fold_excess`): the mass its best
    phase captures, normalised against the uniform baseline (geometric means, in log units). The stride is the
    smallest candidate with ``score >= STRIDE_TOLERANCE · max score``. The residues are the ``lines`` best
    excesses of that stride, ties to the lowest residue (``lines`` is capped at the stride; missing entries repeat
    the phase). A unit whose best score is not positive (uniform attention, or no folded key) gets ``default`` (when
    a candidate) or the first candidate, and residues ``0 … lines-1``.

    Returns int64 ``(stride [U], residues [U, lines])``. Raises ValueError when ``candidates`` is empty or
    ``lines < 1``.
    """
    if not candidates:
        raise ValueError("estimate_stride_phase needs at least one stride candidate")
    if lines < 1:
        raise ValueError(f"lines must be >= 1, got {lines}")
    cands = sorted(candidates)
    u, dev = key_scores.shape[0], key_scores.device
    gf = fold if isinstance(fold, GridFold) else GridFold.from_masks(fold.to(dev), neutral)

    def best_residues(excess: torch.Tensor, s: int) -> torch.Tensor:  # [U, lines], the phase repeated past s
        top = torch.sort(-excess, dim=-1, stable=True).indices[:, : min(lines, s)]
        return top if top.shape[1] == lines else torch.cat([top, top[:, :1].expand(u, lines - top.shape[1])], dim=1)

    if len(cands) == 1:  # "frame" strides and fixed ones: the stride is known, only the phase is estimated
        s = cands[0]
        excess = grid_fold_excess(key_scores, gf, s)
        empty = ~(excess.amax(-1) > 0)
        stride = torch.full((u,), s, dtype=torch.int64, device=dev)
        residues = torch.where(empty[:, None], torch.arange(lines, device=dev) % s, best_residues(excess, s))
        return stride, residues
    scores, tops = [], []
    for s in cands:  # a host loop over candidate strides (data independent); batched over units
        excess = grid_fold_excess(key_scores, gf, s)
        scores.append(excess.max(-1).values)
        tops.append(best_residues(excess, s))
    score = torch.stack(scores, dim=1)  # [U, n_cand]
    best = score.max(-1, keepdim=True).values
    choice = torch.argmax((score >= STRIDE_TOLERANCE * best).to(torch.int8), dim=-1)  # first (smallest) near-best
    fallback = cands.index(default) if default in cands else 0
    empty = ~(best.squeeze(-1) > 0)
    choice = torch.where(empty, torch.full_like(choice, fallback), choice)
    stride = to_device(cands, dev)[choice]
    residues = torch.stack(tops, dim=1)[torch.arange(u, device=dev), choice]
    residues = torch.where(empty[:, None], torch.arange(lines, device=dev).remainder(stride[:, None]), residues)
    return stride, residues


def estimate_grid(
    key_scores: torch.Tensor,
    layout: ModalityLayout,
    cfg: Grid,
    first_row: int,
    *,
    masks: tuple[torch.Tensor, torch.Tensor] | GridFold | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid parameters for ``U`` units sharing ``cfg``: `grid_stride_candidates`, `grid_key_mask` (estimation rows
    start at position ``first_row``) and `estimate_stride_phase` with the layout's tokens per frame as the default.

    ``key_scores [U, n_k]``: `grid_key_scores` of each unit (a GQA group: the mean over its heads). ``masks``: the
    `grid_key_mask` pair for ``first_row``, or its `GridFold`, if the caller keeps it (on the scores' device;
    engines ask every layer).
    Returns int64 ``(stride [U], residues [U, cfg.lines])`` on the scores' device, without a host read. A layout
    without video keys skips the search: the default stride (or the first candidate) and residues ``0 … lines-1``.
    Raises ValueError when the candidates are empty.
    """
    cands = grid_stride_candidates(layout, cfg)
    # every video segment carries a grid, so "some key is folded" is a fact of the layout, not of a device mask
    if not any(s.length for s in layout.segments_of(Modality.VIDEO)):
        u, dev = key_scores.shape[0], key_scores.device
        fixed = layout.tokens_per_frame if layout.tokens_per_frame in cands else cands[0]
        stride = torch.full((u,), fixed, dtype=torch.int64, device=dev)
        return stride, torch.arange(cfg.lines, device=dev).remainder(stride[:, None])
    if isinstance(masks, GridFold):
        return estimate_stride_phase(key_scores, masks, cands, cfg.lines, default=layout.tokens_per_frame)
    fold, neutral = masks if masks is not None else grid_key_mask(layout, first_row)
    return estimate_stride_phase(key_scores, fold, cands, cfg.lines, neutral=neutral, default=layout.tokens_per_frame)
