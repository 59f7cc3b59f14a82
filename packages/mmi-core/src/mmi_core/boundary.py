"""Q-boundary and 2D-boundary heads (MMInference's inter-modality patterns) as ONE `Selection` per head.

Semantics (the reference every kernel-side twin is tested against):

- Modalities TEXT, IMAGE and VIDEO are distinct. ``prefix = n_k - n_q`` cached tokens come first; query row ``i`` is
  original position ``prefix + i``. Causality is always on original positions (the `Selection` rule).
- **Sub-problem of a query modality m.** Let ``e`` be the end (exclusive, original position) of m's last segment that
  holds query rows. m's parameters are estimated on the truncated sequence ``[0, e)`` (queries ``[prefix, e)``), with
  the pattern's ``last_q`` clamped to the number of query rows of that last segment, so the last-query scores come
  only from rows **of modality m** (fewer than 64 rows work; one row works). Block-sparse patterns score the whole
  truncated chunk (their estimate is per query block anyway). The sub-selection ``S_m`` is built by the ordinary
  builders on ``(e - prefix, e)``; since every m row lies before ``e``, it covers all of them against all keys
  (keys at or after ``e`` are non-causal for them).
- **Transfer:** parameters are global positions (columns, diagonal offsets, grid stride/phase/lines, top blocks), so
  a selection estimated in the last video segment applies to every video row, earlier segments included (the
  paper's observation). Text parameters are applied only to text rows and never to vision rows (each modality has
  its own sub-problem).
- **Q-boundary** (``boundary == "q"``): rows of modality m keep the pairs of ``S_m`` with m's pattern
  ``spec.for_query(m)``, against all keys.
- **2D-boundary** (``boundary == "2d"``): rows of m keep, for each key modality n, the pairs of the sub-selection of
  pattern ``spec.for_pair(m, n)`` restricted to keys of modality n (pairs mapped to one pattern share one estimate).
  Limitation: the per-pair estimate scores m's last rows against **all** keys and then restricts to n's keys; it
  does not renormalise inside n.
- A Grid pattern for a modality whose last segment precedes every video segment has no grid to find: that
  sub-problem is dense (`sub_problem`), instead of an error.
- A modality with **no query rows** in the chunk has nothing to compute and no rule applies (its keys stay
  available to the other modalities' rows, as keys); its part computes no row (``rows = 0``), so every boundary head
  has three parts, in `Modality` order. Dense patterns give all causal pairs of their rows (and keys).
- **One part per query modality (`RowGroups`).** A head executes as one `Selection` per modality m, computing
  only m's rows (``rows`` = their number); each row therefore runs ONE online softmax across all key modalities
  and nothing is merged afterwards (the paper's "scatter outputs back" for Q-boundary). Orders of m's part: m's
  rows in the row order of m's own pattern (Q: ``for_query(m)``; 2D: ``for_pair(m, m)``), filtered to m's rows;
  every key in the key order of the pattern of its own pair (Q: m's pattern for every key). The builders' orders
  permute tokens only inside video segments, so these combine into one permutation; with a Grid for video rows,
  video rows and keys take that estimate's grid order. m's pairs are rounded onto the tiles of these orders: a
  pair from a sub-selection's *blocks* keeps the tile holding it, a pair from its *columns* stays a single column
  of its query block. For Q-boundary the part's orders are the sub-selection's own, so the rounding only re-blocks
  m's rows (a block of m rows keeps the union of the sub blocks its rows came from); for 2D, pairs of patterns
  with another row order are rounded onto the own one. The rounding only adds pairs: ``keep_mask`` of the result
  is a superset of every group's pairs and every kept tile holds one.
- **A modality whose rows are fewer than one block** is estimated from its rows like any other and gets a partly
  filled query block of its own.

Memory: ``O(n_q · n_k)`` bool pair masks (reference only; kernels use the index twins).
"""

from __future__ import annotations

import torch

from mmi_core.layout import Modality, ModalityLayout
from mmi_core.patterns import Dense, Grid, PatternConfig, VerticalSlash
from mmi_core.permutation import Permutation
from mmi_core.selection import RowGroups, Selection, dense_selection, keep_mask

__all__ = ["boundary_selection", "modality_last_rows", "sub_problem"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def modality_last_rows(layout: ModalityLayout, n_q: int) -> dict[Modality, tuple[int, int]]:
    """For each modality with query rows among the last ``n_q`` tokens: ``(e, rows)`` = end (exclusive original
    position) of its last segment holding query rows, and that segment's number of query rows (>= 1)."""
    prefix = layout.num_tokens - n_q
    out: dict[Modality, tuple[int, int]] = {}
    for s in layout.segments:
        if s.end > prefix and s.length > 0:
            out[s.modality] = (s.end, s.end - max(s.start, prefix))
    return out


def sub_problem(
    layout: ModalityLayout, cfg: PatternConfig, end: int, rows: int
) -> tuple[ModalityLayout, PatternConfig]:
    """What one query modality's sub-problem is estimated on (module docstring): the layout's first ``end`` tokens
    (``end`` is a segment end, so no segment is cut) and ``cfg`` with ``last_q`` clamped to the modality's ``rows``;
    a Grid whose truncated layout holds no video becomes `Dense` (counted nowhere: those rows come before any video).
    Shared by this reference and `mmi_kernels.boundary_planner`, whose results must match exactly."""
    sub = ModalityLayout(end, tuple(s for s in layout.segments if s.end <= end))
    if isinstance(cfg, Grid) and not sub.segments_of(Modality.VIDEO):
        return sub, Dense()  # no video before these rows: no grid to find (the rows are early, the prefix short)
    if isinstance(cfg, VerticalSlash | Grid):
        cfg = cfg.model_copy(update={"last_q": min(cfg.last_q, rows)})
    return sub, cfg


def _sub_selection(
    q: torch.Tensor,
    k: torch.Tensor,
    layout: ModalityLayout,
    cfg: PatternConfig,
    end: int,
    rows: int,
    block: int,
    scale: float | None,
) -> Selection:
    """Selection of one query modality's sub-problem (module docstring) on ``(end - prefix, end)``.
    q [n_q, 1, D], k [n_k, 1, D] of one head."""
    from mmi_core.head_configs import HeadConfigs  # local: layer -> boundary -> layer would cycle at import
    from mmi_core.layer import estimate_layer_selections

    prefix = layout.num_tokens - q.shape[0]
    n_q_sub = end - prefix
    sub_layout, cfg = sub_problem(layout, cfg, end, rows)
    if isinstance(cfg, Dense):
        return dense_selection(n_q_sub, end, block)
    hc = HeadConfigs.uniform(1, 1, 1, cfg)
    sel = estimate_layer_selections(q[:n_q_sub], k[:end], sub_layout, hc, 0, scale=scale)[0]
    return sel if sel is not None else dense_selection(n_q_sub, end, block)


def _parts(sel: Selection) -> tuple[torch.Tensor, torch.Tensor]:
    """(pairs from blocks, pairs from columns) of ``sel``, bool [n_q, n_k] original order, causal."""
    from_blocks = keep_mask(Selection(sel.block, sel.q_perm, sel.k_perm, sel.blocks, None))
    if sel.columns is None:
        return from_blocks, torch.zeros_like(from_blocks)
    empty = torch.zeros_like(sel.blocks)
    return from_blocks, keep_mask(Selection(sel.block, sel.q_perm, sel.k_perm, empty, sel.columns))


def _empty_part(n_q: int, n_k: int, block: int) -> Selection:
    """A part computing no row (a modality without query rows in the chunk)."""
    blocks = torch.zeros(_cdiv(n_q, block), _cdiv(n_k, block), dtype=torch.bool)
    return Selection(block, Permutation.identity(n_q, n_k - n_q), Permutation.identity(n_k), blocks, None, 0)


def _ext(order: torch.Tensor, n: int) -> torch.Tensor:
    """A sub-problem's order over ``[0, e)`` extended by the (non-causal) tokens ``[e, n)`` in original order."""
    return torch.cat([order.cpu(), torch.arange(order.numel(), n)])


def boundary_selection(
    q: torch.Tensor,
    k: torch.Tensor,
    layout: ModalityLayout,
    spec: object,
    *,
    scale: float | None = None,
) -> RowGroups | None:
    """The keep set of one boundary head (``spec.boundary`` in ``"q"``, ``"2d"``), per the module docstring: one
    part per modality in `Modality` order (TEXT, IMAGE, VIDEO; a part without rows for a modality with no query
    rows).

    ``q [n_q, 1, D]``, ``k [n_k, 1, D]`` (one query head and its KV head), token-major, any float dtype; ``layout``
    covers the ``n_k`` keys. ``spec`` is a `HeadSpec`. Returns ``None`` (dense) when every pattern is dense, or
    when ``n_q == 0``. Raises ValueError for another boundary kind or inconsistent shapes.
    """
    from mmi_core.head_configs import HeadSpec

    if not isinstance(spec, HeadSpec) or spec.boundary not in ("q", "2d"):
        raise ValueError(f"boundary_selection needs a HeadSpec with boundary 'q' or '2d', got {spec!r}")
    if q.dim() != 3 or k.dim() != 3 or q.shape[1] != 1 or k.shape[1] != 1:
        raise ValueError(f"q and k must be [tokens, 1, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    n_q, n_k = q.shape[0], k.shape[0]
    if layout.num_tokens != n_k or n_q > n_k:
        raise ValueError(f"layout has {layout.num_tokens} tokens, k {n_k}, q {n_q}: need layout == k >= q")
    if n_q == 0 or spec.is_dense:
        return None
    block = spec.block or 64
    prefix = n_k - n_q
    kmod = layout.token_modalities()
    qmod = kmod[prefix:]
    last = modality_last_rows(layout, n_q)
    parts: list[Selection] = []
    for m in Modality:
        if m not in last:
            parts.append(_empty_part(n_q, n_k, block))
            continue
        end, rows = last[m]
        # the pattern of each key modality; pairs mapped to one pattern share one sub-problem
        of_key = {n: spec.for_query(m) if spec.boundary == "q" else spec.for_pair(m, n) for n in layout.modalities()}
        subs = {c: _sub_selection(q, k, layout, c, end, rows, block, scale) for c in dict.fromkeys(of_key.values())}
        own = subs[of_key[m]]
        row_mask = qmod == int(m)  # every m row lies before `end`
        # orders: m's rows in its own pattern's row order first; every key in the order of its own pair's pattern
        # (orders of the builders permute only inside video segments, so they combine into one permutation)
        sub_rows = own.q_perm.order.cpu()
        mine = sub_rows[row_mask[sub_rows]]
        qo = torch.cat([mine, torch.nonzero(~row_mask).flatten()])
        rank = torch.empty(n_k, dtype=torch.int64)
        for n, cfg in of_key.items():
            sel_n = kmod == int(n)
            rank[sel_n] = Permutation(_ext(subs[cfg].k_perm.order, n_k), 0).inverse[sel_n]
        ko = torch.argsort(rank)
        if not torch.equal(rank[ko], torch.arange(n_k)):
            raise AssertionError("sub-problem key orders must permute tokens inside their segments only")
        pair_b = torch.zeros(n_q, n_k, dtype=torch.bool)
        pair_c = torch.zeros(n_q, n_k, dtype=torch.bool)
        for cfg, sub in subs.items():
            key_mask = torch.zeros(n_k, dtype=torch.bool)
            for n, c in of_key.items():
                if c == cfg:
                    key_mask |= kmod == int(n)
            fb, fc = _parts(sub)  # [end - prefix, end]
            keep = row_mask[: end - prefix, None] & key_mask[None, :end]
            pair_b[: end - prefix, :end] |= fb & keep
            pair_c[: end - prefix, :end] |= fc & keep
        i = torch.nonzero(row_mask).flatten()
        pair_b[i, i + prefix] = True  # every row keeps its own position
        nqb, nkb = _cdiv(n_q, block), _cdiv(n_k, block)
        pb = torch.nn.functional.pad(pair_b[qo][:, ko], (0, nkb * block - n_k, 0, nqb * block - n_q))
        blocks = pb.view(nqb, block, nkb, block).any(dim=3).any(dim=1)
        pc = torch.nn.functional.pad(pair_c[qo][:, ko], (0, 0, 0, nqb * block - n_q))
        columns = pc.view(nqb, block, n_k).any(dim=1)
        parts.append(Selection(block, Permutation(qo, prefix), Permutation(ko, 0), blocks, columns, mine.numel()))
    return RowGroups(tuple(parts))
